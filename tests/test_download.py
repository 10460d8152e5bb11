"""The download stage: local, file:// and http:// sources, resume, checksums, zip-slip, the lock file."""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import re
import shutil
import stat
import threading
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from conftest import dvc, make_project, set_params
from velocity.datasets.archives import DownloadError, sha256_of
from velocity.stages.download import MAESTRO_V3, download

TINY_SHA256 = "c25f50d628c5b958a9be4b266021fed0eb78b44fa9e887f5375c813fb7ddf363"  # ../shared/data/README.md
CSV = "maestro-v3.0.0/maestro-v3.0.0.csv"


class ArchiveServer(http.server.ThreadingHTTPServer):
    """Serves files from `root`, honouring `Range: bytes=N-` unless `ranges` is False.

    `drop_after`: cut the next response's body after that many bytes, as a lost connection would."""

    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), RangeHandler)  # port 0: a free port
        self.root = root
        self.ranges = True
        self.drop_after: int | None = None
        self.requests: list[tuple[str, str | None, int]] = []  # (path, Range header, status)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class RangeHandler(http.server.BaseHTTPRequestHandler):
    server: ArchiveServer

    def do_GET(self) -> None:
        path = self.server.root / self.path.lstrip("/")
        range_header = self.headers.get("Range")
        if not path.is_file():
            self.server.requests.append((self.path, range_header, 404))
            self.send_error(404)
            return
        data = path.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", range_header or "")
        if self.server.ranges and match and self.headers.get("If-Range", etag) == etag:
            start = int(match[1])
            if start >= len(data):
                self.server.requests.append((self.path, range_header, 416))
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.server.requests.append((self.path, range_header, 206))
        else:
            self.send_response(200)
            self.server.requests.append((self.path, range_header, 200))
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.send_header("ETag", etag)
        self.end_headers()
        if self.server.drop_after is not None:
            body, self.server.drop_after = body[: self.server.drop_after], None
            self.close_connection = True
        self.wfile.write(body)

    def log_message(self, *args) -> None:  # keep pytest output quiet
        pass


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "served"
    root.mkdir()
    httpd = ArchiveServer(root)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def served_tiny(server, tiny_zip):
    shutil.copy(tiny_zip, server.root / "tiny.zip")
    return f"{server.url}/tiny.zip"


def assert_tiny_extracted(out: Path, tiny_zip: Path) -> None:
    root = out / "maestro-v3.0.0"
    table = pd.read_csv(root / "maestro-v3.0.0.csv")
    assert len(table) == 10
    with zipfile.ZipFile(tiny_zip) as zf:
        for name in table["midi_filename"]:
            assert (root / name).read_bytes() == zf.read(f"maestro-v3.0.0/{name}")
    assert [p.name for p in out.iterdir()] == ["maestro-v3.0.0"]  # no temporary folders left


def assert_nothing_extracted(out: Path) -> None:
    assert not out.exists() or list(out.iterdir()) == []


def make_archive(path: Path, extra: list[tuple[zipfile.ZipInfo | str, bytes]] = (), with_csv: bool = True) -> Path:
    """A small MAESTRO-layout zip (one row, one tiny file) plus `extra` members."""
    with zipfile.ZipFile(path, "w") as zf:
        if with_csv:
            zf.writestr(CSV, "canonical_composer,canonical_title,split,year,midi_filename,audio_filename,duration\n"
                             "A,B,train,2004,2004/a.midi,2004/a.wav,1.0\n")
        zf.writestr("maestro-v3.0.0/2004/a.midi", b"MThd")
        for info, data in extra:
            zf.writestr(info, data)
    return path


def symlink_member(name: str, target: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # unix, so the mode bits below are read as a symlink
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


# --- sources ---

def test_local_path_relative_to_the_working_directory(tiny_zip, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(tiny_zip, tmp_path)
    assert not Path(relative).is_absolute()
    caplog.set_level("INFO")
    final = download(relative, "data/raw")
    assert final == Path("data/raw/maestro-v3.0.0")
    assert_tiny_extracted(tmp_path / "data/raw", tiny_zip)
    assert f"sha256 {TINY_SHA256} verified" in caplog.text  # checked against the .sha256 beside it
    assert "to data/raw/maestro-v3.0.0" in caplog.text


def test_file_url(tiny_zip, tmp_path):
    download(tiny_zip.as_uri(), tmp_path / "raw", sha256=TINY_SHA256)
    assert_tiny_extracted(tmp_path / "raw", tiny_zip)


def test_http_url_streams_into_downloads_and_reuses_a_verified_copy(server, served_tiny, tiny_zip, tmp_path):
    downloads = tmp_path / "downloads"
    download(served_tiny, tmp_path / "raw", sha256=TINY_SHA256, downloads_dir=downloads)
    assert_tiny_extracted(tmp_path / "raw", tiny_zip)
    kept = [p for p in downloads.iterdir() if p.name != ".gitignore"]
    assert len(kept) == 1 and sha256_of(kept[0]) == TINY_SHA256
    assert (downloads / ".gitignore").read_text().strip().endswith("*")

    # A second run (dvc deletes data/raw first) extracts again from the verified download.
    shutil.rmtree(tmp_path / "raw")
    download(served_tiny, tmp_path / "raw", sha256=TINY_SHA256, downloads_dir=downloads)
    assert_tiny_extracted(tmp_path / "raw", tiny_zip)
    assert len(server.requests) == 1


def test_rerun_replaces_an_existing_corpus(tiny_zip, tmp_path):
    out = tmp_path / "raw"
    download("demo", out, demo_pieces=3)
    download(str(tiny_zip), out)
    assert_tiny_extracted(out, tiny_zip)


def test_demo_source_writes_the_generated_corpus(tmp_path):
    final = download("demo", tmp_path / "raw", demo_pieces=4, demo_seed=1)
    table = pd.read_csv(final / "maestro-v3.0.0.csv")
    assert len(table) == 4 and set(table["split"]) == {"train", "validation", "test"}
    assert all((final / name).is_file() for name in table["midi_filename"])
    assert [p.name for p in (tmp_path / "raw").iterdir()] == ["maestro-v3.0.0"]


def test_unknown_sources_are_clear_errors(tmp_path):
    with pytest.raises(DownloadError, match="no such file .*missing.zip"):
        download("missing.zip", tmp_path / "raw")
    with pytest.raises(DownloadError, match="unsupported URL scheme"):
        download("ftp://example.org/a.zip", tmp_path / "raw")
    with pytest.raises(DownloadError, match="not a sha256"):
        download("demo", tmp_path / "raw", sha256="abc")
    assert_nothing_extracted(tmp_path / "raw")


# --- interrupted downloads ---

def test_resume_after_an_interrupted_download(server, served_tiny, tiny_zip, tmp_path):
    downloads = tmp_path / "downloads"
    server.drop_after = 40_000
    with pytest.raises(DownloadError, match="interrupted after 40000 of 110820 bytes.*run again to resume"):
        download(served_tiny, tmp_path / "raw", sha256=TINY_SHA256, downloads_dir=downloads)
    assert_nothing_extracted(tmp_path / "raw")
    (part,) = downloads.glob("*.part")
    assert part.stat().st_size == 40_000

    download(served_tiny, tmp_path / "raw", sha256=TINY_SHA256, downloads_dir=downloads)
    assert_tiny_extracted(tmp_path / "raw", tiny_zip)
    assert [(r, s) for _, r, s in server.requests] == [(None, 200), ("bytes=40000-", 206)]
    assert not list(downloads.glob("*.part*"))


def test_restart_when_the_server_ignores_ranges(server, served_tiny, tiny_zip, tmp_path):
    downloads = tmp_path / "downloads"
    server.ranges = False
    server.drop_after = 30_000
    with pytest.raises(DownloadError, match="interrupted"):
        download(served_tiny, tmp_path / "raw", sha256=TINY_SHA256, downloads_dir=downloads)
    download(served_tiny, tmp_path / "raw", sha256=TINY_SHA256, downloads_dir=downloads)
    assert_tiny_extracted(tmp_path / "raw", tiny_zip)
    assert [(r, s) for _, r, s in server.requests] == [(None, 200), ("bytes=30000-", 200)]


def test_partial_of_a_changed_file_is_fetched_again(server, served_tiny, tiny_zip, tmp_path):
    downloads = tmp_path / "downloads"
    (server.root / "tiny.zip").write_bytes(b"an older, different file" * 5000)
    server.drop_after = 50_000
    with pytest.raises(DownloadError, match="interrupted"):
        download(served_tiny, tmp_path / "raw", sha256=TINY_SHA256, downloads_dir=downloads)
    shutil.copy(tiny_zip, server.root / "tiny.zip")  # the file changed on the server: its ETag too
    download(served_tiny, tmp_path / "raw", sha256=TINY_SHA256, downloads_dir=downloads)
    assert_tiny_extracted(tmp_path / "raw", tiny_zip)
    assert [s for _, _, s in server.requests] == [200, 200]  # If-Range failed: whole file again


# --- checksums ---

@pytest.mark.parametrize("kind", ["path", "http"])
def test_checksum_mismatch_is_refused_and_nothing_extracted(kind, server, served_tiny, tiny_zip, tmp_path):
    source = str(tiny_zip) if kind == "path" else served_tiny
    downloads = tmp_path / "downloads"
    with pytest.raises(DownloadError, match=f"sha256 mismatch.*expected {'0' * 64}, got {TINY_SHA256}"):
        download(source, tmp_path / "raw", sha256="0" * 64, downloads_dir=downloads)
    assert_nothing_extracted(tmp_path / "raw")
    if kind == "http":  # a file that failed its checksum is not kept for reuse
        assert [p.name for p in downloads.iterdir()] == [".gitignore"]
    assert tiny_zip.exists()


# --- unsafe or wrong archives ---

@pytest.mark.parametrize(
    "member, reason",
    [
        (("/tmp/evil.txt", b"x"), "absolute path"),
        (("maestro-v3.0.0/../../evil.txt", b"x"), r"'\.\.' in path"),
        ((symlink_member("maestro-v3.0.0/2004/link.midi", "/etc/passwd"), b"/etc/passwd"), "symbolic link"),
    ],
    ids=["absolute", "dotdot", "symlink"],
)
def test_zip_slip_members_are_refused_before_anything_is_written(member, reason, tmp_path):
    archive = make_archive(tmp_path / "evil.zip", extra=[member])
    out = tmp_path / "work" / "raw"
    with pytest.raises(DownloadError, match=f"unsafe member .*{reason}.*nothing extracted"):
        download(str(archive), out)
    assert_nothing_extracted(out)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "work" / "evil.txt").exists()


def test_archive_without_the_csv_is_a_clear_error(tmp_path):
    archive = make_archive(tmp_path / "nocsv.zip", with_csv=False)
    with pytest.raises(DownloadError, match=r"nocsv.zip: no maestro-v3.0.0.csv in the archive"):
        download(str(archive), tmp_path / "raw")
    assert_nothing_extracted(tmp_path / "raw")


def test_not_a_zip_is_a_clear_error(tmp_path):
    (tmp_path / "junk.zip").write_bytes(b"not a zip at all")
    with pytest.raises(DownloadError, match="junk.zip: not a zip archive"):
        download(str(tmp_path / "junk.zip"), tmp_path / "raw")
    assert_nothing_extracted(tmp_path / "raw")


def test_csv_without_maestro_columns_is_a_clear_error(tmp_path):
    archive = tmp_path / "badcsv.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(CSV, "title,file\nA,a.midi\n")
    with pytest.raises(DownloadError, match="lacks MAESTRO's column.*canonical_composer"):
        download(str(archive), tmp_path / "raw")
    assert_nothing_extracted(tmp_path / "raw")


# --- maestro-v3 and the lock file ---

def write_lock(path: Path, url: str, sha256: str | None) -> Path:
    path.write_text(json.dumps({MAESTRO_V3: {"url": url, "sha256": sha256}}))
    return path


def test_maestro_v3_is_verified_against_the_lock(server, served_tiny, tiny_zip, tmp_path):
    lock = write_lock(tmp_path / "downloads.lock.json", served_tiny, TINY_SHA256)
    download(MAESTRO_V3, tmp_path / "raw", downloads_dir=tmp_path / "downloads", lock_path=lock)
    assert_tiny_extracted(tmp_path / "raw", tiny_zip)

    shutil.rmtree(tmp_path / "raw")
    write_lock(lock, served_tiny, "f" * 64)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(MAESTRO_V3, tmp_path / "raw", downloads_dir=tmp_path / "downloads", lock_path=lock)
    assert_nothing_extracted(tmp_path / "raw")


def test_maestro_v3_records_the_first_download_when_the_lock_has_no_hash(server, served_tiny, tiny_zip, tmp_path):
    lock = write_lock(tmp_path / "downloads.lock.json", served_tiny, None)
    download(MAESTRO_V3, tmp_path / "raw", downloads_dir=tmp_path / "downloads", lock_path=lock)
    recorded = json.loads(lock.read_text())[MAESTRO_V3]
    assert recorded["sha256"] == TINY_SHA256 and recorded["size"] == tiny_zip.stat().st_size

    # Later downloads must match the recorded hash: a changed file on the server is refused.
    shutil.rmtree(tmp_path / "raw")
    shutil.rmtree(tmp_path / "downloads")
    (server.root / "tiny.zip").write_bytes(make_archive(tmp_path / "other.zip").read_bytes())
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download(MAESTRO_V3, tmp_path / "raw", downloads_dir=tmp_path / "downloads", lock_path=lock)
    assert_nothing_extracted(tmp_path / "raw")


def test_committed_lock_pins_the_official_archive():
    lock = json.loads((Path(__file__).resolve().parents[1] / "downloads.lock.json").read_text())
    entry = lock[MAESTRO_V3]
    assert entry["url"] == "https://storage.googleapis.com/magentadata/datasets/maestro/v3.0.0/maestro-v3.0.0-midi.zip"
    assert re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])


# --- the real stage ---

@pytest.mark.slow
def test_dvc_repro_download_from_a_relative_path(tiny_zip, tmp_path):
    project = make_project(tmp_path / "project")
    relative = os.path.relpath(tiny_zip, project)
    set_params(project, {"data": {"source": relative, "sha256": TINY_SHA256}})
    proc = dvc(project, "repro", "download")
    assert "Running stage 'download'" in proc.stdout
    assert_tiny_extracted(project / "data/raw", tiny_zip)
    assert not (project / "data/downloads").exists()  # a local archive is read in place
