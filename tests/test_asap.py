"""The split rule for ASAP's performances (velocity/datasets/asap.py): a piece keeps its MAESTRO split, a piece
without MAESTRO performances goes to train, and no piece is ever in two splits."""

from __future__ import annotations

import pandas as pd

from velocity.datasets.asap import asap_only_splits, maestro_name


def metadata(rows: list[tuple[str, str, str]]) -> pd.DataFrame:
    """(title, midi_performance, maestro_midi_performance) -> a metadata table of one composer."""
    return pd.DataFrame([{"composer": "Chopin", "title": title, "folder": f"Chopin/{title}", "midi_performance": perf,
                          "maestro_midi_performance": maestro} for title, perf, maestro in rows])  # fmt: skip


MAESTRO_SPLIT = {
    "2011/a.midi": "test", "2011/b__Etude_5.midi": "test",  # two performances of Etude_5, one with a suffixed name
    "2012/c.midi": "validation",
    "2013/d.midi": "train", "2013/e.midi": "validation",  # Ballade_1's MAESTRO performances in two splits
}  # fmt: skip


def test_an_asap_only_performance_takes_its_pieces_maestro_split_and_a_piece_without_any_goes_to_train():
    table = metadata([
        ("Etude_5", "Chopin/Etude_5/A.mid", "{maestro}/2011/a.midi"),
        ("Etude_5", "Chopin/Etude_5/B.mid", "{maestro}/2011/b.midi"),  # found under its suffixed name
        ("Etude_5", "Chopin/Etude_5/X.mid", ""),
        ("Etude_5", "Chopin/Etude_5_no_repeat/Y.mid", ""),  # another score folder of the same piece
        ("Scherzo_2", "Chopin/Scherzo_2/Z.mid", "{maestro}/2012/c.midi"),
        ("Scherzo_2", "Chopin/Scherzo_2/W.mid", ""),
        ("Nocturne_1", "Chopin/Nocturne_1/V.mid", ""),  # no MAESTRO performance at all
        ("Nocturne_1", "Chopin/Nocturne_1/U.mid", ""),
    ])  # fmt: skip
    rows, left_out = asap_only_splits(table, MAESTRO_SPLIT)
    assert left_out == []
    assert dict(zip(rows["midi_performance"], rows["split"])) == {
        "Chopin/Etude_5/X.mid": "test", "Chopin/Etude_5_no_repeat/Y.mid": "test", "Chopin/Scherzo_2/W.mid": "validation",
        "Chopin/Nocturne_1/V.mid": "train", "Chopin/Nocturne_1/U.mid": "train",
    }  # fmt: skip
    # No piece in two splits, MAESTRO rows included.
    splits = [(title, MAESTRO_SPLIT[maestro_name(row, MAESTRO_SPLIT)]) for title, row in zip(table["title"], table.itertuples())
              if row.maestro_midi_performance]  # fmt: skip
    splits += list(zip(rows["title"], rows["split"]))
    assert pd.DataFrame(splits, columns=["piece", "split"]).groupby("piece")["split"].nunique().max() == 1


def test_a_piece_whose_split_is_not_well_defined_leaves_its_asap_only_rows_out_with_the_reason():
    table = metadata([
        ("Ballade_1", "Chopin/Ballade_1/D.mid", "{maestro}/2013/d.midi"),
        ("Ballade_1", "Chopin/Ballade_1/E.mid", "{maestro}/2013/e.midi"),
        ("Ballade_1", "Chopin/Ballade_1/F.mid", ""),
        ("Polonaise_6", "Chopin/Polonaise_6/G.mid", "{maestro}/2099/not_in_the_table.midi"),
        ("Polonaise_6", "Chopin/Polonaise_6/H.mid", ""),
    ])  # fmt: skip
    rows, left_out = asap_only_splits(table, MAESTRO_SPLIT)
    assert len(rows) == 0
    reasons = {row["performance"]: row["reason"] for row in left_out}
    assert "MAESTRO performances in 2 splits (train, validation)" in reasons["Chopin/Ballade_1/F.mid"]
    assert "none of them in the MAESTRO table" in reasons["Chopin/Polonaise_6/H.mid"]
