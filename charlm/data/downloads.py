"""The classic character-model corpora, downloaded by name and checked against published checksums.

`charlm data get NAME` ends here: `get_corpus("tinyshakespeare", "data")` fetches Karpathy's
char-rnn input.txt from its canonical address, checks it and leaves it as
`data/tinyshakespeare.txt`. Zipped corpora (enwik8, text8) are unpacked to the same
`data/<name>.txt` form. A download goes to a temporary file inside the data folder and is renamed
into place only once verified, so a failed, interrupted or corrupted download never leaves a half
file where a good one is expected.

Every error is a `CorpusError` (a `ValueError`) whose message is one sentence a CLI can print as is:
`DownloadError` when the file cannot be fetched, `ChecksumError` when what arrived is not the
published file.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from charlm.atomic import fsync_dir
from charlm.errors import CharlmError

TIMEOUT_S = 30.0  # per socket operation, not for the whole download
_CHUNK = 1 << 20
_BYTES = {"unit": "B", "unit_scale": True, "unit_divisor": 1024}  # tqdm shows MB/s


class CorpusError(CharlmError, ValueError):
    """A corpus cannot be provided; the message is one sentence meant for the user."""


class DownloadError(CorpusError):
    """The corpus could not be fetched (no network, an HTTP error, a timeout)."""


class ChecksumError(CorpusError):
    """What was fetched is not the published file (wrong size or hash); nothing was kept."""


@dataclass(frozen=True)
class CorpusDownload:
    """One downloadable corpus. Checksums are "algo:hex" (any hashlib name), None where
    unpublished."""

    name: str
    description: str
    url: str
    size: int | None  # bytes of the final <name>.txt
    checksum: str | None  # of the final <name>.txt
    member: str | None = None  # file to extract when `url` is a zip archive
    archive_size: int | None = None
    archive_checksum: str | None = None


# Where each checksum was published (repo: path); none was invented.
# tinyshakespeare: huggingface/datasets: datasets/tiny_shakespeare/urls_checksums/checksums.txt
#   (also its dataset_infos.json); the benchmark copy of the corpus has the same checksum.
# warpeace: unknown; no checksum or byte size was found in public code (~3.2 MB). get_corpus prints
#   the sha256 it computed so a user can compare it with a trusted copy.
# enwik8: md5 is Matt Mahoney's published value, quoted in dmlc/gluon-nlp:
#   src/gluonnlp/data/corpora/large_text_compression_benchmark.py; the zip's sha256 and size are in
#   huggingface/datasets: datasets/enwik8/dataset_infos.json (gluon-nlp's language_model.txt, below,
#   has the same size and sha1 d856b1ccd937c51aeb9c342e47666fb8c38e7e72).
# text8: the zip's sha1 and size: dmlc/gluon-nlp: scripts/datasets/url_checksums/language_model.txt;
#   text8's own sha1: Text8.data_file in gluon-nlp's large_text_compression_benchmark.py (taken
#   from gluon-nlp's mirror of the zip, whose sha1 is the one above).
_KARPATHY = (
    "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
)
CORPORA: dict[str, CorpusDownload] = {
    c.name: c
    for c in [
        CorpusDownload(
            "tinyshakespeare",
            "Tiny Shakespeare, Karpathy's char-rnn input.txt",
            _KARPATHY,
            size=1_115_394,
            checksum="sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        ),
        CorpusDownload(
            "warpeace",
            "War and Peace (Tolstoy), from Karpathy's char-rnn page",
            "https://cs.stanford.edu/people/karpathy/char-rnn/warpeace_input.txt",
            size=None,
            checksum=None,
        ),
        CorpusDownload(
            "enwik8",
            "enwik8, the first 10^8 bytes of an English Wikipedia XML dump",
            "https://mattmahoney.net/dc/enwik8.zip",
            size=100_000_000,
            checksum="md5:a1fa5ffddb56f4953e226637dabbb36a",
            member="enwik8",
            archive_size=36_445_475,
            archive_checksum="sha256:547994d9980ebed1288380d652999f38a14fe291a6247c157c3d33d4932534bc",
        ),
        CorpusDownload(
            "text8",
            "text8, 10^8 characters of Wikipedia as lowercase a-z and spaces",
            "https://mattmahoney.net/dc/text8.zip",
            size=100_000_000,
            checksum="sha1:0dc3edebc970dcc96137e7deda4d9995af9d93de",
            member="text8",
            archive_size=31_344_016,
            archive_checksum="sha1:6c70299b93b7e1f927b42cd8f6ac1a31547c7a2e",
        ),
    ]
}


def list_corpora() -> list[tuple[str, str, int | None]]:
    """(name, description, size in bytes or None if unknown) of every corpus, for the CLI's help."""
    return [(c.name, c.description, c.size) for c in CORPORA.values()]


def lookup(name: str) -> CorpusDownload:
    """The registry entry for `name`; anything else (paths, "..", "") raises CorpusError."""
    if name not in CORPORA:
        raise CorpusError(f"unknown corpus {name!r}: choose one of {', '.join(CORPORA)}")
    return CORPORA[name]


def get_corpus(name: str, data_dir: str | os.PathLike, *, progress: bool = True) -> Path:
    """Return data_dir/<name>.txt, downloading, verifying and unpacking it first if needed."""
    corpus = lookup(name)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    dest = data_dir / f"{corpus.name}.txt"
    if dest.resolve().parent != data_dir.resolve():  # registry names are plain; never trust that
        raise CorpusError(f"corpus name {name!r} would write outside {data_dir}")
    if dest.is_file() and _mismatch(dest, corpus.size, corpus.checksum) is None:
        return dest

    temps: list[Path] = []
    try:
        download = _temp(data_dir, corpus.name, temps)
        _fetch(corpus, download, progress)
        text = download
        if corpus.member is not None:
            _verify(corpus, download, corpus.archive_size, corpus.archive_checksum)
            text = _temp(data_dir, corpus.name, temps)
            _extract(corpus, download, text)
        _verify(corpus, text, corpus.size, corpus.checksum)
        os.replace(text, dest)  # atomic: readers see the old file or the whole new one
        fsync_dir(data_dir)
    finally:
        for path in temps:
            path.unlink(missing_ok=True)
    if corpus.checksum is None:
        print(
            f"{corpus.name}: no published checksum to compare with; the file has "
            f"{dest.stat().st_size:,} bytes and sha256 {_digest(dest, 'sha256')}",
            file=sys.stderr,
        )
    return dest


def _temp(data_dir: Path, name: str, temps: list[Path]) -> Path:
    # In data_dir, not /tmp, so the final os.replace never crosses a filesystem.
    fd, path = tempfile.mkstemp(dir=data_dir, prefix=f".{name}.", suffix=".part")
    os.close(fd)
    temps.append(Path(path))
    return Path(path)


def _fetch(corpus: CorpusDownload, path: Path, progress: bool) -> None:
    def fail(reason: str) -> DownloadError:
        return DownloadError(
            f"could not download {corpus.name} from {corpus.url}: {reason}; "
            "download it by hand and pass the file to `data`"
        )

    try:
        with urllib.request.urlopen(corpus.url, timeout=TIMEOUT_S) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length else (corpus.archive_size or corpus.size)
            _copy(response, path, total, corpus.name, progress)
    except urllib.error.HTTPError as e:  # before URLError: it is one, but the server did answer
        raise fail(f"the server answered HTTP {e.code} ({e.reason})") from e
    except (urllib.error.URLError, TimeoutError) as e:  # a connect timeout arrives as URLError
        if isinstance(e, TimeoutError) or isinstance(e.reason, TimeoutError):
            raise fail(f"the connection timed out after {TIMEOUT_S:g} s") from e
        raise fail(f"no network ({e.reason})") from e
    except (ConnectionError, http.client.HTTPException) as e:  # dropped mid-download
        raise fail(f"the connection broke ({e or type(e).__name__})") from e


def _extract(corpus: CorpusDownload, archive: Path, path: Path) -> None:
    try:
        with zipfile.ZipFile(archive) as zf, zf.open(corpus.member) as member:
            _copy(member, path, corpus.size, f"{corpus.name} (unzip)", progress=False)
    except (zipfile.BadZipFile, KeyError) as e:
        raise ChecksumError(
            f"{corpus.name}: the download from {corpus.url} is not a zip holding {corpus.member!r} "
            f"({e}); it was deleted"
        ) from e


def _copy(src, path: Path, total: int | None, desc: str, progress: bool) -> None:
    bar = tqdm(total=total, desc=desc, disable=not progress, **_BYTES)
    with open(path, "wb") as out, bar:
        while chunk := src.read(_CHUNK):
            out.write(chunk)
            bar.update(len(chunk))
        out.flush()
        os.fsync(out.fileno())  # the bytes are on disk before the rename makes them visible


def _verify(corpus: CorpusDownload, path: Path, size: int | None, checksum: str | None) -> None:
    problem = _mismatch(path, size, checksum)
    if problem is not None:
        raise ChecksumError(
            f"{corpus.name}: the file downloaded from {corpus.url} {problem}, so it was deleted; "
            "try again, or download it by hand and pass the file to `data`"
        )


def _mismatch(path: Path, size: int | None, checksum: str | None) -> str | None:
    """Why `path` is not the expected file, or None when it is (size first: it is free)."""
    actual = path.stat().st_size
    if actual == 0:
        return "is empty"
    if size is not None and actual != size:
        return f"has {actual:,} bytes where {size:,} were expected"
    if checksum is not None:
        algo, expected = checksum.split(":", 1)
        got = _digest(path, algo)
        if got != expected.lower():
            return f"has {algo} {got} where {expected} was expected"
    return None


def _digest(path: Path, algo: str) -> str:
    h = hashlib.new(algo, usedforsecurity=False)  # a checksum, not a signature
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()
