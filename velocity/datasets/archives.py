"""Fetching, verifying and extracting a corpus archive: what the download and scores stages share.

Downloads stream with a progress bar into a downloads folder outside DVC's outputs: `<name>.part`
grows, an interrupted download resumes with an HTTP Range request (or restarts when the server
ignores ranges), and the finished file is renamed into place. A verified archive there is reused
instead of downloaded again. Named archives are pinned in `downloads.lock.json` (URL and sha256);
an entry without a sha256 gets the first download's (trust on first use).

A checksum mismatch is an error and nothing is extracted. Every member is checked before anything
is written (absolute paths, `..` and symlinks are refused: zip-slip), and the folder is extracted
into a staging folder beside the output and renamed into place, so a failure leaves no
half-written corpus.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from velocity.io import write_json

log = logging.getLogger(__name__)

LOCK_FILE = Path("downloads.lock.json")
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0
SHA256_RE = re.compile(r"[0-9a-f]{64}")


class DownloadError(RuntimeError):
    """The source cannot be fetched, fails its checksum, or is not a safe MAESTRO-layout archive."""


@dataclass(frozen=True)
class DataParams:
    """params.yaml's `data:` section: where the download and scores stages take their corpora from."""

    source: str
    sha256: str | None
    scores: str  # the scores stage's source (velocity/stages/scores.py)
    scores_sha256: str | None
    demo_seed: int
    demo_pieces: int


# --- checksums and the lock file ---

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def normalize_sha256(value: str | None, what: str) -> str | None:
    if value is None:
        return None
    value = str(value).strip().lower()
    if not SHA256_RE.fullmatch(value):
        raise DownloadError(f"{what}: {value!r} is not a sha256 (64 hex digits)")
    return value


def verify_sha256(path: Path, expected: str, what: str) -> None:
    actual = sha256_of(path)
    if actual != expected:
        raise DownloadError(f"{path}: sha256 mismatch for {what}: expected {expected}, got {actual}; nothing extracted")
    log.info("%s: sha256 %s verified", path, actual)


def read_lock(lock_path: Path) -> dict:
    if not lock_path.exists():
        return {}
    try:
        lock = json.loads(lock_path.read_text())
    except json.JSONDecodeError as err:
        raise DownloadError(f"{lock_path}: not valid JSON ({err})") from None
    if not isinstance(lock, dict):
        raise DownloadError(f"{lock_path}: expected an object of named downloads")
    return lock


# --- fetching ---

def _url_filename(url: str) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "archive.zip"
    # Two URLs with the same file name must not share a partial download.
    return f"{hashlib.sha1(url.encode()).hexdigest()[:10]}-{name}"


def _content_range_start(header: str | None) -> int | None:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", (header or "").strip())
    return int(match[1]) if match else None


def _content_total(response: http.client.HTTPResponse) -> int | None:
    if response.status == 206:
        match = re.fullmatch(r"bytes \d+-\d+/(\d+)", (response.headers.get("Content-Range") or "").strip())
        return int(match[1]) if match else None
    length = response.headers.get("Content-Length")
    return int(length) if length and length.isdigit() else None


def fetch(url: str, dest: Path, timeout_s: float = TIMEOUT_S) -> Path:
    """Download `url` to `dest`, resuming `dest.part` from an earlier interrupted attempt.

    The partial file's validator (ETag or Last-Modified) goes in `dest.part.json`, and a resumed
    request sends it as If-Range, so a file that changed on the server is fetched whole again."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    meta_path = dest.with_name(dest.name + ".part.json")
    meta = {}
    if part.exists() and meta_path.exists():
        with contextlib.suppress(json.JSONDecodeError):
            meta = json.loads(meta_path.read_text())
    offset = part.stat().st_size if part.exists() and meta.get("url") == url else 0

    headers = {"User-Agent": "velocity-download/1"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if meta.get("validator"):
            headers["If-Range"] = meta["validator"]
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout_s)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the partial file is no prefix of what the server has now
            log.warning("%s: server refused to resume at byte %d; starting over", url, offset)
            part.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            return fetch(url, dest, timeout_s)
        raise DownloadError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise DownloadError(f"{url}: cannot connect ({reason})") from None

    resumed = offset > 0 and response.status == 206 and _content_range_start(response.headers.get("Content-Range")) == offset
    if response.status == 206 and not resumed:  # a range we did not ask for: its bytes cannot be appended
        response.close()
        if not offset:
            raise DownloadError(f"{url}: partial content {response.headers.get('Content-Range')!r} to a plain request")
        log.warning("%s: unexpected partial content %r; starting over", url, response.headers.get("Content-Range"))
        part.unlink(missing_ok=True)
        meta_path.unlink(missing_ok=True)
        return fetch(url, dest, timeout_s)
    with response:
        if offset and not resumed:
            log.info("%s: server sent the whole file (no range support or the file changed); restarting", url)
        if resumed:
            log.info("%s: resuming at byte %d", url, offset)
        else:
            offset = 0
            validator = response.headers.get("ETag") or response.headers.get("Last-Modified")
            if validator and validator.startswith("W/"):
                validator = response.headers.get("Last-Modified")  # weak ETags cannot be used in If-Range
            write_json(meta_path, {"url": url, "validator": validator})
        total = _content_total(response)
        received = offset
        try:
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name, mininterval=1.0
            ) as bar:
                while chunk := response.read(CHUNK_BYTES):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (http.client.HTTPException, OSError) as err:
            raise DownloadError(
                f"{url}: download interrupted after {received} bytes ({err}); {part} is kept, run again to resume"
            ) from None
    if total is not None and received != total:
        raise DownloadError(
            f"{url}: download interrupted after {received} of {total} bytes; {part} is kept, run again to resume"
        )
    os.replace(part, dest)
    meta_path.unlink(missing_ok=True)
    log.info("downloaded %s (%d bytes) to %s", url, received, dest)
    return dest


def _fetch_verified(url: str, dest: Path, expected: str | None) -> Path:
    """A verified copy of `url` at `dest`: reuse one that matches `expected`, else download it."""
    if dest.exists() and expected is not None and sha256_of(dest) == expected:
        log.info("using %s, downloaded earlier (sha256 verified)", dest)
        return dest
    dest.unlink(missing_ok=True)  # a stale or unverifiable copy: fetch it again
    fetch(url, dest)
    if expected is not None:
        try:
            verify_sha256(dest, expected, url)
        except DownloadError:
            dest.unlink()  # never reuse a file that failed its checksum
            raise
    return dest


def _mark_ignored(downloads_dir: Path) -> None:
    """data/downloads is a cache outside DVC's outputs: keep it out of git without touching .gitignore."""
    downloads_dir.mkdir(parents=True, exist_ok=True)
    ignore = downloads_dir / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# partial and finished downloads of the download stage\n*\n")


# --- safe extraction ---

def _unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or re.match(r"[A-Za-z]:", name):
        return "absolute path"
    if ".." in name.split("/"):
        return "'..' in path"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    if "\x00" in name:
        return "NUL in name"
    return None


def _table_root(names: list[str], archive: Path, table: str, layout: str) -> str:
    """The folder prefix in the archive that holds the dataset's `table` ('' when at the top): the
    shallowest one, whatever the folder is called (GitHub names it `<repo>-<commit>/`)."""
    table_names = [n for n in names if PurePosixPath(n).name == table]
    if not table_names:
        raise DownloadError(f"{archive}: no {table} in the archive; expected {layout}")
    best = min(table_names, key=lambda n: (n.count("/"), n))
    return best[: -len(table)]


def extract_dataset(archive: Path, target: Path, table: str, layout: str,
                    check_table: Callable[[bytes, set[str]], int]) -> int:
    """Extract the archive's folder that holds `table` (its csv) to `target`; return
    `check_table(the csv's bytes, the folder's file names)`, which raises on a wrong table.

    Every member is checked (zip-slip) and the table read before the first byte is written."""
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as err:
        raise DownloadError(f"{archive}: not a zip archive ({err})") from None
    with zf:
        infos = zf.infolist()
        for info in infos:
            reason = _unsafe_reason(info)
            if reason:
                raise DownloadError(f"{archive}: unsafe member {info.filename!r} ({reason}); nothing extracted")
        root = _table_root([i.filename for i in infos], archive, table, layout)
        members = {i.filename[len(root):]: i for i in infos if i.filename.startswith(root) and not i.is_dir()}
        n_rows = check_table(zf.read(root + table), set(members))
        for relative, info in tqdm(sorted(members.items()), desc="extract", unit="file", mininterval=1.0):
            path = target / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK_BYTES)
    return n_rows


@contextlib.contextmanager
def staging_folder(out_dir: Path, folder: str) -> Iterator[Path]:
    """A temporary folder inside `out_dir` whose `folder/` replaces `out_dir/folder` on success."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.glob(f".{folder}.*"):  # left by a killed earlier run
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder}.", dir=out_dir))
    try:
        yield staging
        final = out_dir / folder
        if final.exists():
            old = staging / "previous"
            os.replace(final, old)
        os.replace(staging / folder, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --- sources ---

def _local_archive(source: str, key: str = "data.source") -> Path | None:
    """The local file a path or file:// source names; None for other URLs. `key` names the param."""
    parsed = urllib.parse.urlparse(source)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise DownloadError(f"{key} {source!r}: a file:// URL needs an absolute path (file:///...); "
                                "give a relative path without file://")
        return Path(urllib.request.url2pathname(parsed.path))
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]+://", source):
        return None
    return Path(source)


def locked_archive(name: str, default: dict, sha256: str | None, *, downloads_dir: Path, lock_path: Path,
                   sha256_key: str = "data.sha256") -> Path:
    """The verified download of lock entry `name` (seeded from `default` when the lock lacks it).

    An entry without a sha256 records the first download's (trust on first use); later downloads
    must match it. `sha256` (the `sha256_key` param), when set, must agree with the lock."""
    lock = read_lock(lock_path)
    entry = lock.get(name)
    if entry is None:
        entry = dict(default)
        write_json(lock_path, {**lock, name: entry})
        log.info("pinned %s in %s", name, lock_path)
    url = entry.get("url")
    if not url:
        raise DownloadError(f"{lock_path}: entry '{name}' has no url")
    pinned = normalize_sha256(entry.get("sha256"), f"{lock_path} '{name}'.sha256")
    if sha256 and pinned and sha256 != pinned:
        raise DownloadError(f"{sha256_key} {sha256} disagrees with {lock_path} ({pinned}) for {name}")
    _mark_ignored(downloads_dir)
    archive = _fetch_verified(url, downloads_dir / PurePosixPath(urllib.parse.urlparse(url).path).name, pinned or sha256)
    if entry.get("size") is not None and archive.stat().st_size != entry["size"]:
        raise DownloadError(f"{archive}: {archive.stat().st_size} bytes, {lock_path} expects {entry['size']}")
    if pinned is None:  # trust on first use: later downloads must match this one
        entry = {**entry, "sha256": sha256_of(archive), "size": archive.stat().st_size}
        write_json(lock_path, {**read_lock(lock_path), name: entry})
        log.info("recorded sha256 %s of %s in %s", entry["sha256"], url, lock_path)
    return archive


def source_archive(source: str, sha256: str | None, *, downloads_dir: Path, key: str = "data.source",
                   sha256_key: str = "data.sha256", named: str = "demo, maestro-v3") -> Path:
    """The archive a path, file:// or http(s):// source names, verified against `sha256` when set,
    else (for a local file) against a `<file>.sha256` beside it when there is one. `key` and
    `sha256_key` name the params in errors; `named` lists the source's named choices."""
    local = _local_archive(source, key)
    if local is not None:
        if not local.is_file():
            raise DownloadError(
                f"{key} {source!r}: no such file {local.resolve()} "
                f"(expected {named}, a path or a file://, http:// or https:// URL)"
            )
        sidecar = local.with_name(local.name + ".sha256")
        if sha256 is None and sidecar.exists():
            sha256 = normalize_sha256((sidecar.read_text().split() or [""])[0], str(sidecar))  # "<hex>  <name>"
            log.info("verifying against %s", sidecar)
        if sha256 is not None:
            verify_sha256(local, sha256, source)
        else:
            log.warning("%s: no sha256 given (%s) and no %s; not verified", local, sha256_key, sidecar.name)
        return local
    if urllib.parse.urlparse(source).scheme in ("http", "https"):
        _mark_ignored(downloads_dir)
        archive = _fetch_verified(source, downloads_dir / _url_filename(source), sha256)
        if sha256 is None:
            log.warning("%s: no %s given; not verified (sha256 %s)", source, sha256_key, sha256_of(archive))
        return archive
    raise DownloadError(f"{key} {source!r}: unsupported URL scheme (use file://, http:// or https://)")
