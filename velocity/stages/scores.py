"""Stage `scores`: put scores in the ASAP dataset's layout at `data/raw_scores/asap-dataset/`.

    python -m velocity.stages.scores data/raw_scores

The layout (../shared/data/README.md): `metadata.csv`, one row per performance, names each
performance's score folder, `midi_score.mid`, the beat annotations of the score and of the
performance, and the MAESTRO recording the performance was cut from. The `align` stage pairs every
score note with the pianist's note through those beats.

`data.scores` in params.yaml picks the source:

- `demo`: the scores of the demo corpus (`velocity/datasets/demo_corpus.py`, same `data.demo_seed` and
  `data.demo_pieces` as the demo performances), paired with them exactly.
- `asap`: the official ASAP repository at a pinned commit, as GitHub archives it; the URL is pinned
  in `downloads.lock.json` under `asap`, and the first download's sha256 is recorded there (trust
  on first use) when the entry has none.
- a local path, `file://` or `http(s)://` URL of a zip in ASAP's layout (e.g.
  `../shared/data/asap-maestro-v3.0.0-scores.zip`): checked against `data.scores_sha256`, else a
  `<zip>.sha256` beside a local file.

`metadata.csv` may sit in any one folder of the archive (`asap-dataset/`, or GitHub's
`asap-dataset-<commit>/`): that folder becomes `asap-dataset/`. Fetching, checksums, zip-slip
checks and the staging folder that is renamed into place are velocity/datasets/archives.py's, as
for the download stage: an error is one line and leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from pathlib import Path

from velocity import params as params_lib
from velocity.datasets.archives import (
    LOCK_FILE,
    DataParams,
    DownloadError,
    extract_dataset,
    locked_archive,
    normalize_sha256,
    source_archive,
    staging_folder,
)
from velocity.datasets.demo_corpus import ASAP_COLUMNS, ASAP_CSV, ASAP_DIR, generate_scores

log = logging.getLogger(__name__)

ASAP = "asap"
# Used to seed the lock when it has no asap entry; no sha256 is known (see downloads.lock.json).
ASAP_DEFAULT = {
    "url": "https://github.com/fosfrancesco/asap-dataset/archive/afc815c75c42e83a79c03feb6da8a35e77d4c6b8.zip",
    "sha256": None,
}
FILE_COLUMNS = ("midi_score", "midi_performance", "performance_annotations", "midi_score_annotations")
LAYOUT = f"ASAP's layout, {ASAP_DIR}/{ASAP_CSV} and the scores, performances and annotations it names"


def _check_metadata(table: bytes, members: set[str], archive: Path) -> int:
    """Rows in the archive's metadata.csv; a table without ASAP's columns is an error."""
    try:
        reader = csv.DictReader(io.StringIO(table.decode("utf-8-sig")))
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DownloadError(f"{archive}: {ASAP_CSV} is not a readable csv ({err})") from None
    missing = [c for c in ASAP_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise DownloadError(f"{archive}: {ASAP_CSV} lacks ASAP's column(s) {', '.join(missing)}")
    absent = sorted({r[c] for r in rows for c in FILE_COLUMNS if r[c] and r[c] not in members})
    if absent:  # the align stage skips and reports such rows; here we only say so
        log.warning("%s: %d files named in %s are not in the archive, e.g. %s", archive, len(absent), ASAP_CSV, absent[0])
    return len(rows)


def scores(
    source: str,
    out_dir: Path | str,
    *,
    sha256: str | None = None,
    demo_seed: int = 0,
    demo_pieces: int = 200,
    downloads_dir: Path | str = Path("data/downloads"),
    lock_path: Path | str = LOCK_FILE,
) -> Path:
    """Put the scores `source` names at `out_dir/asap-dataset/` and return that folder."""
    out_dir, downloads_dir, lock_path = Path(out_dir), Path(downloads_dir), Path(lock_path)
    sha256 = normalize_sha256(sha256, "data.scores_sha256")
    final = out_dir / ASAP_DIR

    if source == "demo":
        if sha256:
            log.warning("data.scores_sha256 is ignored for the demo scores")
        with staging_folder(out_dir, ASAP_DIR) as staging:
            generate_scores(staging, demo_pieces, demo_seed, progress=True)
        log.info("wrote the demo scores (%d pieces, seed %d) to %s", demo_pieces, demo_seed, final)
        return final

    if source == ASAP:
        archive = locked_archive(ASAP, ASAP_DEFAULT, sha256, downloads_dir=downloads_dir, lock_path=lock_path,
                                 sha256_key="data.scores_sha256")
    else:
        archive = source_archive(source, sha256, downloads_dir=downloads_dir, key="data.scores",
                                 sha256_key="data.scores_sha256", named="demo, asap")
    with staging_folder(out_dir, ASAP_DIR) as staging:
        n_rows = extract_dataset(archive, staging / ASAP_DIR, ASAP_CSV, LAYOUT,
                                 lambda table, members: _check_metadata(table, members, archive))
    log.info("extracted %s (%d performances in %s) to %s", archive, n_rows, ASAP_CSV, final)
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="data/raw_scores: receives asap-dataset/")
    parser.add_argument("--downloads", type=Path, default=None,
                        help="partial and finished downloads (default: data/downloads beside out_dir)")
    parser.add_argument("--lock", type=Path, default=LOCK_FILE, help="pinned checksums (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    downloads = args.downloads or args.out_dir.parent / "downloads"
    try:
        params = params_lib.load(DataParams, "data")
        scores(params.scores, args.out_dir, sha256=params.scores_sha256, demo_seed=params.demo_seed,
               demo_pieces=params.demo_pieces, downloads_dir=downloads, lock_path=args.lock)
    except (params_lib.ParamsError, DownloadError) as err:  # one line, no traceback
        raise SystemExit(f"scores: {err}") from None


if __name__ == "__main__":
    main()
