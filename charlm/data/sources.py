"""Corpus sources: what ``--data`` may name, read as text in bounded chunks.

A source is a text file, a directory (its text files, recursively), a glob, a dataset saved with
``save_to_disk``, ``hf:NAME`` on the Hub, or ``stdlib`` (this interpreter's standard library,
the built-in corpus that exists on every machine). Datasets are read through Hugging Face
``datasets`` (``--streaming`` reads a Hub dataset row by row without downloading it whole).
Text files are read directly, a few million characters at a time, so a 100 GB file never sits in
memory: ``datasets``' text loader either drops line breaks (by line) or puts a whole file in one
string (``sample_by="document"``). Files are read with Python's universal newlines, so Windows
line endings (\r\n) arrive as \n. Each file or row is a document; documents are joined with a
newline where one does not already end with one.
"""

from __future__ import annotations

import codecs
import glob as globlib
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from charlm.errors import CharlmError

STDLIB = "stdlib"
HF_PREFIX = "hf:"
_SKIP_PARTS = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
# characters handed on at a time, so a huge document never sits in memory twice
CHUNK_CHARS = 1 << 20


@dataclass
class Source:
    """One resolved ``--data`` value."""

    spec: str                                   # what the user typed
    kind: str                                   # "files" | "disk" | "hub"
    files: list[Path] = field(default_factory=list)
    options: dict = field(default_factory=dict)  # hub: split, text_column, streaming
    skip_binary: bool = False  # folder, glob: binary files are skipped when read, not listed

    def identity(self) -> list:
        """What the cache fingerprint needs to know: names, sizes and mtimes, or the dataset id."""
        if self.kind == "files":
            return [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in self.files]
        if self.kind == "disk":
            state = Path(self.spec) / "state.json"
            return [str(Path(self.spec).resolve()), state.read_text() if state.exists() else "",
                    sorted(self.options.items())]
        return [self.spec, sorted(self.options.items())]


def absolute_spec(spec: str) -> str:
    """A --data value that still means the same thing from another directory (for checkpoints)."""
    if spec == STDLIB or spec.startswith(HF_PREFIX):
        return spec
    return os.path.abspath(os.path.expanduser(spec))


def stdlib_files() -> list[Path]:
    """The built-in corpus: this interpreter's standard-library sources, sorted, tests excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    return [f for f in sorted(root.rglob("*.py"))
            if not _SKIP_PARTS & set(f.relative_to(root).parts[:-1])]


def looks_binary(path: Path) -> bool:
    """A file with a NUL byte in its first 8 KiB is not text."""
    with open(path, "rb") as f:
        return b"\0" in f.read(8192)


def _text_files(directory: Path) -> list[Path]:
    """Non-empty, non-hidden files; which are binary is checked when they are read, so a run
    that finds its corpus cached opens none of them (the fingerprint needs only stat)."""
    files = [f for f in sorted(directory.rglob("*"))
             if f.is_file() and not any(p.startswith(".") for p in f.relative_to(directory).parts)]
    return [f for f in files if f.stat().st_size > 0]


def resolve(spec: str, *, split: str = "train", text_column: str = "text",
            streaming: bool = False) -> Source:
    """Turn one ``--data`` value into a Source, or say clearly why it cannot be read."""
    if spec == STDLIB:
        return Source(spec, "files", stdlib_files())
    if spec.startswith(HF_PREFIX):
        name = spec[len(HF_PREFIX):]
        parts = name.replace("\\", "/").split("/")
        if not name or name.startswith(("/", ".", "~")) or any(p in ("", ".", "..") for p in parts):
            raise CharlmError(f"{spec!r} is not a Hugging Face dataset name "
                              f"(expected hf:OWNER/NAME)")
        return Source(spec, "hub", options={"split": split, "text_column": text_column,
                                            "streaming": streaming})
    path = Path(spec).expanduser()
    if path.is_dir():
        if (path / "state.json").exists() or (path / "dataset_dict.json").exists():
            return Source(spec, "disk", options={"split": split, "text_column": text_column})
        files = _text_files(path)
        if not files:
            raise CharlmError(f"the directory {spec} holds no text files")
        return Source(spec, "files", files, skip_binary=True)
    if path.is_file():
        if looks_binary(path):
            raise CharlmError(f"{spec} looks like a binary file (it contains NUL bytes), not text")
        return Source(spec, "files", [path])
    if globlib.has_magic(spec):
        files = [Path(f) for f in sorted(globlib.glob(spec, recursive=True)) if Path(f).is_file()]
        if not files:
            raise CharlmError(f"the pattern {spec!r} matches no files")
        return Source(spec, "files", files, skip_binary=True)
    raise CharlmError(f"no such file or directory: {spec}")


def _decode_error(path: Path, encoding: str) -> CharlmError:
    """Say at which byte of ``path`` decoding fails (read again in binary, in chunks)."""
    decoder, offset = codecs.getincrementaldecoder(encoding)(), 0
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK_CHARS)
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the last block
            try:
                decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                at = offset - pending + e.start
                return CharlmError(
                    f"{path} is not valid {encoding}: byte 0x{e.object[e.start]:02x} at offset "
                    f"{at} does not decode; pass `encoding` (for example `encoding` latin-1)")
            if not block:
                break
            offset += len(block)
    return CharlmError(f"{path} could not be decoded as {encoding}; pass `encoding`")


def _file_chunks(path: Path, encoding: str) -> Iterator[str]:
    """One text file in chunks of at most CHUNK_CHARS characters (universal newlines)."""
    try:
        with open(path, encoding=encoding, newline=None) as f:
            while chunk := f.read(CHUNK_CHARS):
                yield chunk
    except UnicodeDecodeError:
        raise _decode_error(path, encoding) from None
    except LookupError:
        raise CharlmError(f"unknown `encoding` {encoding!r}") from None


def _documents(source: Source, encoding: str) -> Iterator[Iterator[str]]:
    """Each document of a source (a file, a dataset row) as an iterator of text pieces."""
    if source.kind == "files":
        for f in source.files:
            if not (source.skip_binary and looks_binary(f)):
                yield _file_chunks(f, encoding)
    else:
        for row in _rows(source):
            yield iter((row,))


def _rows(source: Source) -> Iterator[str]:
    """The text column of a dataset, row by row (a streaming dataset is never materialised)."""
    import datasets  # heavy: imported only when a dataset is actually read

    datasets.disable_progress_bars()
    if source.kind == "disk":
        ds = datasets.load_from_disk(source.spec)
        if isinstance(ds, datasets.DatasetDict):
            split = source.options["split"]
            if split not in ds:
                raise CharlmError(f"{source.spec} has no split {split!r}; it has {', '.join(ds)}")
            ds = ds[split]
        column = source.options["text_column"]
    else:
        opts = source.options
        try:
            ds = datasets.load_dataset(source.spec[len(HF_PREFIX):], split=opts["split"],
                                       streaming=opts["streaming"])
        except Exception as e:
            raise CharlmError(f"could not load {source.spec} from the Hugging Face Hub: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        column = opts["text_column"]
    names = ds.column_names
    if names is not None and column not in names:
        raise CharlmError(f"{source.spec} has no column {column!r}; pass `text_column` "
                          f"(columns: {', '.join(names)})")
    if isinstance(ds, datasets.IterableDataset):  # --streaming: one row at a time
        for row in ds:
            yield row[column]
        return
    for batch in ds.iter(1000):
        yield from batch[column]


def read_chunks(sources: list[Source], encoding: str = "utf-8") -> Iterator[str]:
    """The text of every source, in order, as chunks of at most ~4M characters."""
    ends_line = True  # so the first document needs no separator
    for source in sources:
        for document in _documents(source, encoding):
            first = True
            for piece in document:
                if not piece:
                    continue
                if first and not ends_line:
                    yield "\n"
                first = False
                for i in range(0, len(piece), CHUNK_CHARS):
                    yield piece[i:i + CHUNK_CHARS]
                ends_line = piece.endswith("\n")


def describe(sources: list[Source]) -> str:
    """One line naming the sources, for reports."""
    parts = []
    for s in sources:
        parts.append(f"{s.spec} ({len(s.files)} files)" if s.kind == "files" and len(s.files) > 1
                     else s.spec)
    return ", ".join(parts)


__all__ = ["Source", "resolve", "read_chunks", "describe", "stdlib_files", "STDLIB"]
