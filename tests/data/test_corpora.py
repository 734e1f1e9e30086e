"""charlm.data.downloads: offline tests against a local HTTP server on 127.0.0.1 and file://
URLs."""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import socket
import threading
import zipfile
from pathlib import Path

import pytest

from charlm.cli.common import flag
from charlm.data import downloads as corpora
from charlm.data.downloads import (
    ChecksumError,
    CorpusDownload,
    CorpusError,
    DownloadError,
    get_corpus,
)

TEXT = b"First Citizen:\nBefore we proceed any further, hear me speak.\n" * 50


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch):
    """urllib sends even 127.0.0.1 through an http_proxy from the environment; these tests are
    local."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def served(tmp_path):
    """A folder served over HTTP on 127.0.0.1; yields (folder, base URL)."""
    root = tmp_path / "served"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def data_dir(tmp_path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def register(monkeypatch):
    """Add a test corpus to the registry for this test only."""

    def add(**fields) -> CorpusDownload:
        corpus = CorpusDownload(**{"name": "tiny", "description": "test corpus", **fields})
        monkeypatch.setitem(corpora.CORPORA, corpus.name, corpus)
        return corpus

    return add


def closed_port() -> int:
    """A local port nothing listens on (bound then released, so it is free now)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- registry -------------------------------------------------------------------------------------


def test_registry_holds_the_four_classic_corpora():
    assert list(corpora.CORPORA) == ["tinyshakespeare", "warpeace", "enwik8", "text8"]
    rows = corpora.list_corpora()
    assert [r[0] for r in rows] == list(corpora.CORPORA)
    assert {r[0]: r[2] for r in rows}["tinyshakespeare"] == 1_115_394
    assert corpora.CORPORA["enwik8"].member == "enwik8"
    assert corpora.CORPORA["text8"].member == "text8"


@pytest.mark.parametrize("corpus", list(corpora.CORPORA.values()), ids=list(corpora.CORPORA))
def test_registry_checksums_are_well_formed(corpus):
    assert corpus.url.startswith("https://")
    for checksum in (corpus.checksum, corpus.archive_checksum):
        if checksum is not None:
            algo, hexdigest = checksum.split(":")
            assert len(hexdigest) == 2 * hashlib.new(algo).digest_size
            int(hexdigest, 16)
    if corpus.member is not None:  # an archive is always checked before it is unzipped
        assert corpus.archive_checksum and corpus.archive_size


def test_tinyshakespeare_checksum_matches_the_shared_copy(shakespeare):
    shared = shakespeare  # ../shared/data/ beside the repository; skips with a reason if absent
    entry = corpora.CORPORA["tinyshakespeare"]
    assert shared.stat().st_size == entry.size
    assert sha256(shared.read_bytes()) == entry.checksum


@pytest.mark.parametrize("name", ["../x", "a/b", "", "..", "a\\b", "/etc/passwd", "nope"])
def test_bad_names_are_rejected_before_touching_disk(name, data_dir):
    with pytest.raises(CorpusError, match="choose one of tinyshakespeare, warpeace") as err:
        get_corpus(name, data_dir)
    assert isinstance(err.value, ValueError)
    assert not data_dir.exists()


# --- downloads ------------------------------------------------------------------------------------


def test_download_writes_the_file_atomically(served, data_dir, register, monkeypatch):
    root, base = served
    (root / "input.txt").write_bytes(TEXT)
    register(url=f"{base}/input.txt", size=len(TEXT), checksum=sha256(TEXT))
    renames = []
    real_replace = os.replace
    monkeypatch.setattr(
        corpora.os, "replace", lambda a, b: (renames.append((Path(a), Path(b))), real_replace(a, b))
    )

    path = get_corpus("tiny", data_dir, progress=False)

    assert path == data_dir / "tiny.txt"
    assert path.read_bytes() == TEXT
    assert files_in(data_dir) == ["tiny.txt"]  # no temporary file left behind
    [(src, dst)] = renames  # the final file appears in one rename from a sibling temp file
    assert src.parent == data_dir and src.name.startswith(".tiny.") and dst == path


def test_checksum_mismatch_raises_and_keeps_nothing(served, data_dir, register):
    root, base = served
    (root / "input.txt").write_bytes(TEXT)
    register(url=f"{base}/input.txt", size=len(TEXT), checksum=sha256(b"something else"))
    with pytest.raises(
        ChecksumError, match="tiny: the file downloaded from .* has sha256 .*deleted"
    ):
        get_corpus("tiny", data_dir, progress=False)
    assert files_in(data_dir) == []


def test_size_mismatch_raises_and_keeps_nothing(served, data_dir, register):
    root, base = served
    (root / "input.txt").write_bytes(TEXT[:-1])  # truncated
    register(url=f"{base}/input.txt", size=len(TEXT), checksum=sha256(TEXT))
    with pytest.raises(ChecksumError, match=f"{len(TEXT) - 1:,} bytes where {len(TEXT):,}"):
        get_corpus("tiny", data_dir, progress=False)
    assert files_in(data_dir) == []


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_member_is_extracted_to_name_txt(served, data_dir, register):
    root, base = served
    archive = _zip({"README": b"not this one", "tiny": TEXT})
    (root / "tiny.zip").write_bytes(archive)
    register(
        url=f"{base}/tiny.zip",
        size=len(TEXT),
        checksum=sha256(TEXT),
        member="tiny",
        archive_size=len(archive),
        archive_checksum=sha256(archive),
    )
    path = get_corpus("tiny", data_dir, progress=False)
    assert path == data_dir / "tiny.txt" and path.read_bytes() == TEXT
    assert files_in(data_dir) == ["tiny.txt"]  # the archive itself is not kept


def test_corrupt_archive_is_rejected_before_unzipping(served, data_dir, register):
    root, base = served
    archive = _zip({"tiny": TEXT})
    (root / "tiny.zip").write_bytes(archive)
    register(
        url=f"{base}/tiny.zip",
        size=len(TEXT),
        checksum=sha256(TEXT),
        member="tiny",
        archive_size=len(archive),
        archive_checksum=sha256(archive + b"x"),
    )
    with pytest.raises(ChecksumError):
        get_corpus("tiny", data_dir, progress=False)
    assert files_in(data_dir) == []


def test_zip_without_the_member_gives_a_clear_error(tmp_path, data_dir, register):
    archive = tmp_path / "other.zip"
    archive.write_bytes(_zip({"other": TEXT}))
    register(url=archive.as_uri(), size=len(TEXT), checksum=sha256(TEXT), member="tiny")
    with pytest.raises(ChecksumError, match="not a zip holding 'tiny'"):
        get_corpus("tiny", data_dir, progress=False)
    assert files_in(data_dir) == []


def test_file_url_works(tmp_path, data_dir, register):
    source = tmp_path / "input.txt"
    source.write_bytes(TEXT)
    register(url=source.as_uri(), size=len(TEXT), checksum=sha256(TEXT))
    assert get_corpus("tiny", data_dir, progress=False).read_bytes() == TEXT


def test_unknown_checksum_prints_the_computed_sha256(served, data_dir, register, capsys):
    root, base = served
    (root / "input.txt").write_bytes(TEXT)
    register(url=f"{base}/input.txt", size=None, checksum=None)
    get_corpus("tiny", data_dir, progress=False)
    assert hashlib.sha256(TEXT).hexdigest() in capsys.readouterr().err


# --- no network -----------------------------------------------------------------------------------


def test_unreachable_url_raises_download_error(data_dir, register):
    url = f"http://127.0.0.1:{closed_port()}/input.txt"
    register(url=url, size=len(TEXT), checksum=sha256(TEXT))
    with pytest.raises(DownloadError) as err:
        get_corpus("tiny", data_dir, progress=False)
    message = str(err.value)
    assert message.startswith(f"could not download tiny from {url}: no network (")
    assert message.endswith("download it by hand and pass the file to data")
    assert err.value.render(flag).endswith("pass the file to --data")  # as the CLI says it
    assert files_in(data_dir) == []


def test_http_error_names_the_status(served, data_dir, register):
    _, base = served
    register(url=f"{base}/missing.txt", size=len(TEXT), checksum=sha256(TEXT))
    with pytest.raises(DownloadError, match="HTTP 404"):
        get_corpus("tiny", data_dir, progress=False)
    assert files_in(data_dir) == []


def test_silent_server_times_out(data_dir, register, monkeypatch):
    monkeypatch.setattr(corpora, "TIMEOUT_S", 0.2)
    with socket.socket() as listener:  # accepts connections (kernel backlog) but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        register(url=f"http://127.0.0.1:{listener.getsockname()[1]}/x", size=1, checksum=None)
        with pytest.raises(DownloadError, match="timed out"):
            get_corpus("tiny", data_dir, progress=False)
    assert files_in(data_dir) == []


# --- already present ------------------------------------------------------------------------------


def test_verified_file_is_not_downloaded_again(data_dir, register):
    data_dir.mkdir()
    (data_dir / "tiny.txt").write_bytes(TEXT)
    # The URL is unreachable: any download attempt would raise DownloadError.
    register(url=f"http://127.0.0.1:{closed_port()}/x", size=len(TEXT), checksum=sha256(TEXT))
    assert get_corpus("tiny", data_dir, progress=False).read_bytes() == TEXT


def test_corrupt_existing_file_is_replaced(served, data_dir, register):
    root, base = served
    (root / "input.txt").write_bytes(TEXT)
    data_dir.mkdir()
    (data_dir / "tiny.txt").write_bytes(b"half a download")
    register(url=f"{base}/input.txt", size=len(TEXT), checksum=sha256(TEXT))
    assert get_corpus("tiny", data_dir, progress=False).read_bytes() == TEXT
    assert files_in(data_dir) == ["tiny.txt"]
