"""From sources to batches: encode once into a memory-mapped cache, split, lay out streams.

    source(s) ──datasets──▶ text ──vocab──▶ ids (cached .npy, memory-mapped)
      ──contiguous split: train | val | test──▶ B parallel streams ──windows of T──▶ model
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from charlm.atomic import atomic_write_bytes, commit_file, sweep_stale_temporaries
from charlm.data import sources as src
from charlm.data.vocab import CharVocab, codepoints
from charlm.errors import CharlmError

CACHE_FORMAT = 1
IGNORE = -100  # target id that the loss skips (padding, burn-in)
# code points encoded at a time: ~15 MB of working memory, whatever the corpus
ENCODE_CHUNK = 1 << 20


def cache_root() -> Path:
    """Where encoded corpora live: $CHARLM_CACHE, else ~/.cache/charlm."""
    return Path(os.environ.get("CHARLM_CACHE", Path.home() / ".cache" / "charlm"))


@dataclass
class Corpus:
    """An encoded corpus: ids (memory-mapped), the vocabulary, and what was done to make them."""

    ids: np.ndarray
    vocab: CharVocab
    meta: dict = field(default_factory=dict)

    def split(self, val_fraction: float, test_fraction: float) -> dict[str, np.ndarray]:
        """Contiguous splits: train = first (1 − val − test), then val, then test."""
        bounds = split_bounds(len(self.ids), val_fraction, test_fraction)
        return {name: self.ids[a:b] for name, (a, b) in bounds.items()}


def split_bounds(n: int, val_fraction: float, test_fraction: float) -> dict[str, tuple[int, int]]:
    """[start, end) of each split; the same arithmetic as nanoGPT's int(n * 0.9)."""
    for flag, f in (("`val_fraction`", val_fraction), ("`test_fraction`", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise CharlmError(f"{flag} must be in [0, 1), not {f}")
    if val_fraction + test_fraction >= 1.0:
        raise CharlmError("`val_fraction` plus `test_fraction` must leave some text to train on")
    train_end = int(n * (1.0 - val_fraction - test_fraction))
    val_end = int(n * (1.0 - test_fraction)) if test_fraction else n
    bounds = {"train": (0, train_end), "val": (train_end, val_end), "test": (val_end, n)}
    for name, frac in (("val", val_fraction), ("test", test_fraction)):
        a, b = bounds[name]
        if frac > 0 and b - a < 2:
            raise CharlmError(f"`{name}_fraction` {frac} leaves the {name} split with {b - a} "
                              f"characters of {n}; use a larger fraction or more text")
    return bounds


def _fingerprint(sources: list[src.Source], encoding: str, vocab: CharVocab | None) -> str:
    key = {"format": CACHE_FORMAT, "sources": [[s.kind, s.identity()] for s in sources],
           "encoding": encoding, "vocab": vocab.chars if vocab else None}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


def ids_checksum(ids: np.ndarray) -> int:
    """The crc32 of the ids' bytes, as a cache's meta records it (its ids are checked with it)."""
    return zlib.crc32(memoryview(np.ascontiguousarray(ids)).cast("B"))


def _load_cached(entry: Path) -> Corpus | None:
    """The cached corpus, or None when it is missing, truncated or corrupt (then it is rebuilt)."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        ids = np.load(entry / "ids.npy", mmap_mode="r")
        if len(ids) != meta["chars"] or ids_checksum(ids) != meta["crc32"]:
            return None
        return Corpus(ids, CharVocab(meta["vocab"]), meta)
    except (OSError, ValueError, KeyError, json.JSONDecodeError):
        return None


def encode_sources(sources: list[src.Source], vocab: CharVocab | None, encoding: str,
                   entry: Path) -> Corpus:
    """Two passes in chunks, so memory does not grow with the corpus: code points to a scratch
    file (counting them for the vocabulary), then ids into the cache that later runs memory-map."""
    entry.mkdir(parents=True, exist_ok=True)
    sweep_stale_temporaries(entry)  # what a killed run left; a live writer's files are kept
    scratch = entry / f"codepoints.tmp{os.getpid()}"
    counts = np.zeros(0, dtype=np.int64)
    try:
        with open(scratch, "wb") as f, tqdm(desc="reading", unit="char", unit_scale=True,
                                             leave=False) as bar:
            for chunk in src.read_chunks(sources, encoding):
                cps = codepoints(chunk)
                f.write(cps.tobytes())
                c = np.bincount(cps)
                if len(c) > len(counts):
                    counts = np.pad(counts, (0, len(c) - len(counts)))
                counts[:len(c)] += c
                bar.update(len(cps))
        total = int(counts.sum())
        if total == 0:
            raise CharlmError(f"{src.describe(sources)} is empty: there is no text to train on")
        if not any(not chr(c).isspace() for c in np.flatnonzero(counts)):
            raise CharlmError(f"{src.describe(sources)} contains only whitespace")
        vocab = vocab or CharVocab.from_counts(counts)
        known = vocab.lookup(np.arange(len(counts), dtype=np.uint32)) >= 0
        unknown = {chr(c): int(counts[c]) for c in np.flatnonzero(counts * ~known)}
        n = total - sum(unknown.values())
        tmp = entry / f"ids.tmp{os.getpid()}.npy"
        crc = 0
        # read()/write() in chunks rather than memory maps: mapped pages would count in this
        # process's resident memory, which then grows with the corpus
        with open(scratch, "rb") as cps_file, open(tmp, "wb") as out:
            np.lib.format.write_array_header_1_0(out, {
                "descr": np.lib.format.dtype_to_descr(vocab.dtype), "fortran_order": False,
                "shape": (n,)})
            for _ in tqdm(range(0, total, ENCODE_CHUNK), desc="encoding", unit="chunk",
                          leave=False):
                ids = vocab.lookup(np.fromfile(cps_file, dtype=np.uint32, count=ENCODE_CHUNK))
                ids = ids[ids >= 0].astype(vocab.dtype)  # outside a given vocabulary: skipped
                out.write(ids.tobytes())
                crc = zlib.crc32(ids, crc)  # the same as ids_checksum of the whole array
        commit_file(tmp, entry / "ids.npy")
    finally:
        scratch.unlink(missing_ok=True)
    ids = np.load(entry / "ids.npy", mmap_mode="r")
    meta = {"format": CACHE_FORMAT, "chars": n, "crc32": crc, "vocab": vocab.chars,
            "sources": src.describe(sources), "encoding": encoding,
            "unknown": unknown, "fingerprint": entry.name}
    atomic_write_bytes(entry / "meta.json", json.dumps(meta).encode())
    return Corpus(ids, vocab, meta)


def load_corpus(specs: list[str] | None = None, *, vocab: CharVocab | None = None,
                encoding: str = "utf-8", split: str = "train", text_column: str = "text",
                streaming: bool = False) -> Corpus:
    """Encode ``specs`` (default: the built-in stdlib corpus), from the cache when it is there.

    With ``vocab`` (a checkpoint's), characters outside it are skipped and counted in
    ``meta["unknown"]``; without, the vocabulary is every character of the text.
    ``meta["from_cache"]`` says whether the ids were read from the cache rather than encoded.
    """
    sources = [src.resolve(s, split=split, text_column=text_column, streaming=streaming)
               for s in (specs or [src.STDLIB])]
    entry = cache_root() / _fingerprint(sources, encoding, vocab)
    corpus = _load_cached(entry)
    from_cache = corpus is not None
    if corpus is None:
        corpus = encode_sources(sources, vocab, encoding, entry)
    corpus.meta["cache"], corpus.meta["from_cache"] = str(entry / "ids.npy"), from_cache
    return corpus


# The train split as B parallel streams, read in windows of T characters (stateful TBPTT):
#
#   ids:      [ stream 0 .......... | stream 1 .......... | ... | stream B-1 ......... ]
#   step k:   stream b feeds ids[b*L + k*T : b*L + (k+1)*T] and predicts the next character
#
#             window 0   window 1   window 2        (one row per stream, one batch per column)
#   row 0   |----------|----------|----------| ...
#   row 1   |----------|----------|----------| ...
#
# Window k+1 of a row continues window k, so the hidden state carried out of step k is the
# right context for step k+1. Each row's last partial window is the documented tail.
#
# With ``window="shifted"`` each epoch cuts the streams at a different place: every start moves
# by one offset in [0, T) drawn from (seed, epoch), so a character sits at a different position
# of its window from epoch to epoch. The first characters of a window learn nothing about how the
# state they read was made (it is detached), and with a fixed cut the same characters are always
# first; AWD-LSTM varies its BPTT length for the same reason. Each stream keeps T - 1 characters
# back for the shift, so an epoch has one window fewer where the tail was shorter than that.
#
# With ``restart_every`` R, stream b's state also starts again from zero at every R-th window,
# the streams staggered (b's turn comes at windows where (k + b*R // streams) % R == 0), so that
# some rows start cold every few steps. Otherwise a model sees a zero state only at each epoch's
# first window, and a short run never learns to write from one, which is where sampling starts.
#
# With ``window="mixed"`` the run reads random windows until ``progress`` (a callable the trainer
# sets: how far along its budget step s is, 0 to 1) reaches MIXED_STREAMS_FROM, then the streams
# from their first window, all rows cold. The step where that happened is kept (``streams_from``,
# saved in checkpoints), so batches stay a function of (step, streams_from) and resuming is exact.
WINDOWS = ("stream", "shifted", "random", "mixed")
MIXED_STREAMS_FROM = 2 / 3


class TrainStreams:
    """Batch ``step`` of training, as a pure function of the step (so resuming is exact)."""

    def __init__(self, ids: np.ndarray, batch_size: int, seq_len: int, window: str = "stream",
                 seed: int = 0, rank: int = 0, world: int = 1, restart_every: int = 0):
        if window not in WINDOWS:
            raise CharlmError(f"`window` must be one of {', '.join(WINDOWS)}, not {window!r}")
        self.ids, self.batch_size, self.seq_len, self.window = ids, batch_size, seq_len, window
        self.seed, self.rank, self.world = seed, rank, world
        self.restart_every = restart_every
        streams = batch_size * world
        self.stream_len = (len(ids) - 1) // streams
        # a shifted cut keeps seq_len - 1 characters of each stream back to move into
        shifted = window == "shifted"
        room = self.stream_len - (seq_len - 1 if shifted else 0)
        self.windows_per_epoch = max(room, 0) // seq_len
        if self.windows_per_epoch < 1:
            need = streams * (2 * seq_len - 1 if shifted else seq_len) + 1
            per = f"(2 x seq len {seq_len} - 1)" if shifted else f"seq len {seq_len}"
            raise CharlmError(
                f"the training split has {len(ids)} characters, fewer than one batch needs "
                f"({need} = batch size {batch_size} x {world} process(es) x {per} + 1); "
                f"use more text or a smaller `batch_size` / `seq_len`")
        self._offsets = np.arange(seq_len + 1)
        self.progress: Callable[[int], float] | None = None  # "mixed": how far along step s is
        self.streams_from: int | None = None  # "mixed": the first step read from the streams

    @property
    def chars_per_step(self) -> int:
        return self.batch_size * self.seq_len

    @property
    def tail(self) -> int:
        """Characters of the train split that an epoch never feeds (per process group)."""
        used = self.batch_size * self.world * self.windows_per_epoch * self.seq_len
        return len(self.ids) - used

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
        """(x (B, T), y (B, T), restart): the rows (of this batch) whose carried state starts
        from zero; all of them at an epoch's first window and with random windows."""
        rows = np.arange(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        every = tuple(range(self.batch_size))
        streamed = self.streamed_step(step)
        if streamed is not None:
            epoch, k = divmod(streamed, self.windows_per_epoch)
            starts = rows * self.stream_len + k * self.seq_len + self.shift(epoch)
            restart = every if k == 0 else self.restarting(k, rows)
        else:  # nanoGPT-style random windows; the generator is keyed by the step, not carried
            rng = np.random.default_rng([self.seed, step])
            starts = rng.integers(0, len(self.ids) - self.seq_len,
                                  size=self.batch_size * self.world)[rows]
            restart = every
        chunk = torch.from_numpy(self.ids[starts[:, None] + self._offsets].astype(np.int64))
        return chunk[:, :-1], chunk[:, 1:], restart  # (B, T), (B, T)

    def streamed_step(self, step: int) -> int | None:
        """Where ``step`` falls in the streams' layout, or None where it reads random windows.
        With mixed windows the first step whose progress reaches MIXED_STREAMS_FROM becomes
        ``streams_from``; steps are asked in order, so it is the switch for the whole run."""
        if self.window == "random":
            return None
        if self.window != "mixed":
            return step
        if (self.streams_from is None and self.progress is not None
                and self.progress(step) >= MIXED_STREAMS_FROM):
            self.streams_from = step
        if self.streams_from is None or step < self.streams_from:
            return None
        return step - self.streams_from

    def shift(self, epoch: int) -> int:
        """Where this epoch's cut starts in every stream: 0, or with shifted windows an offset
        below seq_len drawn from (seed, epoch), the same on every process."""
        if self.window != "shifted":
            return 0
        return int(np.random.default_rng([self.seed, epoch]).integers(0, self.seq_len))

    def restarting(self, k: int, rows: np.ndarray) -> tuple[int, ...]:
        """The positions in this batch of the ``rows`` (streams, numbered across processes)
        that start cold at window k."""
        every = self.restart_every
        if not every:
            return ()
        due = (k + rows * every // (self.batch_size * self.world)) % every == 0
        return tuple(int(i) for i in np.flatnonzero(due))


class StepBatches(torch.utils.data.IterableDataset):
    """Batches for steps [start, stop) of a TrainStreams, as a DataLoader wants them.

    Its length is ``stop``: one pass is the whole run, of which a resumed run has done ``start``
    steps already. A trainer that resumes mid-pass counts those as done and ends the pass after
    the ``stop - start`` batches that remain; a length of ``stop - start`` would make it end the
    pass early and start it again from ``start``, repeating batches.
    """

    def __init__(self, streams: TrainStreams, start: int, stop: int | None):
        self.streams, self.start, self.stop = streams, start, stop

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]]:
        step = self.start
        while self.stop is None or step < self.stop:
            yield self.streams.batch(step)
            step += 1

    def __len__(self) -> int:
        if self.stop is None:
            raise TypeError("an open-ended run has no length")
        return self.stop


def eval_batches(ids: np.ndarray, seq_len: int, max_streams: int = 16, rank: int = 0,
                 world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor, bool]]:
    """Windows for one full pass over a split: every character after the first is predicted once.

    For speed the split is cut into S pieces read in parallel. Stream b starts ``seq_len``
    characters before its piece (a burn-in whose predictions are not scored), so a piece's first
    characters are predicted with context, as in a single pass. S does not depend on the number of
    processes: under DDP rank r takes streams r, r+world, ..., and sums give the exact value.
    """
    n = len(ids)
    s = max(1, min(max_streams, n // (8 * seq_len)))
    cuts = [round(b * n / s) for b in range(s + 1)]
    rows = list(range(rank, s, world))
    if n < 2 or not rows:
        return
    starts = [max(0, cuts[b] - seq_len) for b in rows]
    length = max(cuts[b + 1] - st - 1 for b, st in zip(rows, starts))
    x = np.zeros((len(rows), length), dtype=np.int64)
    y = np.full((len(rows), length), IGNORE, dtype=np.int64)
    for r, (b, st) in enumerate(zip(rows, starts)):
        seg = np.asarray(ids[st:cuts[b + 1]], dtype=np.int64)
        x[r, :len(seg) - 1] = seg[:-1]
        first = max(cuts[b], 1) - st - 1  # index in y of the first scored target
        y[r, first:len(seg) - 1] = seg[first + 1:]
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    for k in range(0, length, seq_len):
        yield x[:, k:k + seq_len], y[:, k:k + seq_len], k == 0

