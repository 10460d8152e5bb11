"""Stage `download`: put a corpus in MAESTRO's layout at `data/raw/maestro-v3.0.0/`, whatever the source.

`data.source` in params.yaml picks the corpus:

- `demo`: the corpus this project generates (`velocity/datasets/demo_corpus.py`), so `dvc repro` needs no network.
- `maestro-v3`: the official MAESTRO v3.0.0 MIDI archive. Its URL and sha256 are pinned in
  `downloads.lock.json` at the repo root. Google publishes no digest; the pinned one is the one MusPy
  and other projects publish for this file. A lock entry without a sha256 gets the first download's
  (trust on first use), and later downloads must match it.
- a local path (relative to the repo root, where dvc runs), a `file://` URL or an `http(s)://` URL of
  any zip archive in MAESTRO's layout: a `maestro-v3.0.0/` folder holding `maestro-v3.0.0.csv` and
  the MIDI files it names. `data.sha256`, when set, must match; for a local archive without it, a
  `<archive>.sha256` file beside it (as in ../shared/data) is used when present.

Downloads stream with a progress bar into `data/downloads/` (outside `data/raw`, which DVC deletes
before rerunning the stage): `<name>.part` grows, an interrupted download resumes with an HTTP Range
request (or restarts when the server ignores ranges), and the finished file is renamed into place.
A verified archive there is reused instead of downloaded again.

A checksum mismatch is an error and nothing is extracted. Every member is checked before anything is
written (absolute paths, `..` and symlinks are refused: zip-slip), the folder is extracted into a
temporary directory beside the output and renamed into place, so a failure leaves no half-written
corpus.

Fetching, checksums, zip-slip checks and the staging folder are velocity/datasets/archives.py's,
shared with the scores stage (`velocity/stages/scores.py`).
"""

from __future__ import annotations

import argparse
import csv
import io
import logging
from pathlib import Path

from velocity import params as params_lib
from velocity.datasets.archives import (
    LOCK_FILE, DataParams, DownloadError, extract_dataset, locked_archive, normalize_sha256, source_archive, staging_folder,
)  # fmt: skip
from velocity.datasets.demo_corpus import generate_corpus
from velocity.datasets.maestro import COLUMNS, CSV_NAME, MAESTRO_DIR

log = logging.getLogger(__name__)

MAESTRO_V3 = "maestro-v3"
# Used to seed the lock when it has no maestro-v3 entry (see the module docstring).
MAESTRO_V3_DEFAULT = {
    "url": "https://storage.googleapis.com/magentadata/datasets/maestro/v3.0.0/maestro-v3.0.0-midi.zip",
    "sha256": "70470ee253295c8d2c71e6d9d4a815189e35c89624b76d22fce5a019d5dde12c",
    "size": 58416533,
}


def _check_table(table_bytes: bytes, members: set[str], archive: Path) -> int:
    """Rows in the archive's csv; a csv without MAESTRO's columns is an error."""
    try:
        reader = csv.DictReader(io.StringIO(table_bytes.decode("utf-8-sig")))
        rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise DownloadError(f"{archive}: {CSV_NAME} is not a readable csv ({err})") from None
    missing_columns = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing_columns:
        raise DownloadError(f"{archive}: {CSV_NAME} lacks MAESTRO's column(s) {', '.join(missing_columns)}")
    absent = [r["midi_filename"] for r in rows if r["midi_filename"] not in members]
    if absent:  # the extract stage skips and counts them; here we only say so
        log.warning("%s: %d of %d MIDI files named in %s are not in the archive, e.g. %s",
                    archive, len(absent), len(rows), CSV_NAME, absent[0])
    return len(rows)


def extract_maestro(archive: Path, dest_root: Path) -> int:
    """Extract the archive's MAESTRO folder to `dest_root/maestro-v3.0.0/`; return its csv's rows."""
    layout = f"MAESTRO's layout, {MAESTRO_DIR}/{CSV_NAME} and the MIDI files it names"
    return extract_dataset(archive, dest_root / MAESTRO_DIR, CSV_NAME, layout,
                           lambda table, members: _check_table(table, members, archive))


def download(
    source: str,
    out_dir: Path | str,
    *,
    sha256: str | None = None,
    demo_seed: int = 0,
    demo_pieces: int = 200,
    downloads_dir: Path | str = Path("data/downloads"),
    lock_path: Path | str = LOCK_FILE,
) -> Path:
    """Put the corpus `source` names at `out_dir/maestro-v3.0.0/` and return that folder."""
    out_dir, downloads_dir, lock_path = Path(out_dir), Path(downloads_dir), Path(lock_path)
    sha256 = normalize_sha256(sha256, "data.sha256")
    final = out_dir / MAESTRO_DIR

    if source == "demo":
        if sha256:
            log.warning("data.sha256 is ignored for the demo corpus")
        with staging_folder(out_dir, MAESTRO_DIR) as staging:
            generate_corpus(staging, demo_pieces, demo_seed, progress=True)
        log.info("wrote the demo corpus (%d pieces, seed %d) to %s", demo_pieces, demo_seed, final)
        return final

    if source == MAESTRO_V3:
        archive = locked_archive(MAESTRO_V3, MAESTRO_V3_DEFAULT, sha256, downloads_dir=downloads_dir, lock_path=lock_path)
    else:
        archive = source_archive(source, sha256, downloads_dir=downloads_dir)

    with staging_folder(out_dir, MAESTRO_DIR) as staging:
        n_rows = extract_maestro(archive, staging)
    log.info("extracted %s (%d performances in %s) to %s", archive, n_rows, CSV_NAME, final)
    return final


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path, help="data/raw: receives maestro-v3.0.0/")
    parser.add_argument("--downloads", type=Path, default=None,
                        help="partial and finished downloads (default: data/downloads beside out_dir)")
    parser.add_argument("--lock", type=Path, default=LOCK_FILE, help="pinned checksums (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = params_lib.load(DataParams, "data")
    downloads = args.downloads or args.out_dir.parent / "downloads"
    try:
        download(params.source, args.out_dir, sha256=params.sha256, demo_seed=params.demo_seed,
                 demo_pieces=params.demo_pieces, downloads_dir=downloads, lock_path=args.lock)
    except DownloadError as err:
        raise SystemExit(f"download: {err}") from None


if __name__ == "__main__":
    main()
