"""The request batcher: the rows of every active request share one forward step per character.

A worker thread owns the model, so generation never blocks the event loop (``charlm serve`` runs
the worker in the process's main thread and the event loop in a second one). Each turn it
(1) admits waiting requests while rows are free, priming each with one forward of its prompt
(``sampling.prime_rows``, as ``charlm sample`` does; a prompt read recently is copied, not read
again: ``PromptStates``), (2) picks every row's next character with that
row's own settings and generator (``sampling.pick``, grouped by settings), (3) hands the characters
to the requests' streams, and (4) drops finished or abandoned rows and steps the rest as one batch.

    rows:  [ A/0 | A/1 | A/2 | B/0 | C/0 ]   one request's n choices are n rows
    turn:  admit → pick (per settings group) → sinks → drop done rows → Stepper.step (B,) → (B, V)

The server hands characters over on its streams' ticks (``hand_every``), not every turn: between
hand-overs, rows without stop strings or logprobs keep only the turns' id tensors, read into text
in one go, so a turn's Python costs about what ``generate``'s step does however many rows share it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from charlm.data.vocab import CharVocab
from charlm.generation.sampling import (
    RowDraws,
    SampleSettings,
    Stepper,
    pick,
    prime_rows,
    row_draws,
    sample_generators,
)
from charlm.model import CharRNN, State
from charlm.serve.stops import StopText

_NEVER = float("inf")  # turns until a plain row's end, where there is none
_UNREAD_AT_MOST = 1024  # turns of ids kept unread, however long the ticks (bounded memory)


class QueueFull(Exception):
    """Every row is busy and the waiting line is full."""


class Piece(NamedTuple):
    """What one choice wrote in one turn: text (stop strings held back), logprobs, finish.

    A tuple, not a dataclass: every row makes one every turn, so its cost is per character."""

    index: int
    text: str
    logprobs: Sequence[tuple[str, float, dict[str, float]]] = ()
    finish_reason: str | None = None


@dataclass(eq=False)
class Job:
    """One completion request: ``n`` rows with the same prompt, settings, seed and stop rule."""

    prompt_ids: list[int]
    settings: SampleSettings
    max_tokens: int
    n: int = 1
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logprobs: int | None = None  # top alternatives per character, or None for none
    sink: Callable[[list[Piece]], None] = lambda pieces: None  # called from the worker thread
    cancelled: bool = False


class _Row:
    """One choice of one job: its generator, its count, its stop rule, and what it wrote since
    its last hand-over."""

    def __init__(self, job: Job, index: int, generator: RowDraws | torch.Generator):
        self.job, self.index, self.generator = job, index, generator
        self.written, self.stop = 0, StopText(job.stop)
        self.key = (job.settings.temperature, job.settings.top_k, job.settings.top_p,
                    job.settings.greedy)
        self.text: list[str] = []  # to send: released characters since the last hand-over
        self.entries: list = []    # their logprobs entries, where the job asked
        self.finish: str | None = None
        # no stop strings and no logprobs: the row's characters are read in blocks (``write``),
        # not one by one each turn (``feed``)
        self.plain = not self.stop.stops and job.logprobs is None

    def write(self, text: str) -> bool:
        """A plain row's next characters (never past ``max_tokens``); True once it finished."""
        self.text.append(text)
        self.written += len(text)
        if self.written >= self.job.max_tokens:
            self.finish = "length"
        return self.finish is not None

    def feed(self, ch: str, lp) -> bool:
        """Take the row's next character (kept until ``take``); True once the row finished."""
        if not self.stop.stops:
            if lp:
                self.entries.append(lp)
            return self.write(ch)
        self.written += 1
        text, entries, stopped = self.stop.feed(ch, lp)
        self.text.append(text)
        self.entries += entries
        if stopped:
            self.finish = "stop"
        elif self.written >= self.job.max_tokens:
            more, more_lp = self.stop.flush()
            self.text.append(more)
            self.entries += more_lp
            self.finish = "length"
        return self.finish is not None

    def take(self) -> Piece | None:
        """What the row wrote since the last take, as one piece (None: nothing to send)."""
        text = "".join(self.text)
        if not text and not self.entries and self.finish is None:
            return None  # stop strings hold back every character so far
        piece = Piece(self.index, text, self.entries, self.finish)
        self.text, self.entries = [], []
        return piece


def _same_prompt_length(jobs: list[Job]) -> list[list[Job]]:
    """``jobs`` grouped by the length of their prompts (an empty one primes with one
    character), in order of arrival within each group."""
    groups: dict[int, list[Job]] = {}
    for job in jobs:
        groups.setdefault(max(1, len(job.prompt_ids)), []).append(job)
    return list(groups.values())


def _tree(fn, *trees):
    """Apply ``fn`` to the matching tensors of nested lists/tuples (a recurrent state)."""
    if isinstance(trees[0], Tensor):
        return fn(*trees)
    return type(trees[0])(_tree(fn, *parts) for parts in zip(*trees))


class PromptStates:
    """The logits and state after each recently primed prompt, so that a prompt is read once.

    Priming a row reads its whole prompt through the model, which costs more than many steps,
    and clients often send the same prompt (a page's default, the n choices of one request, a
    batch of requests for one text): those rows copy the primed prompt's logits and state
    instead. The model's weights never change while it serves, so a copy is what a new
    forward would give. The states are kept in the model's layout, one row each (batch is
    dimension 1), for the ``size`` most recently used prompts.
    """

    def __init__(self, model: CharRNN, vocab: CharVocab, size: int = 256):
        self.model, self.vocab, self.size = model, vocab, size
        self._primed: OrderedDict[tuple[int, ...], tuple[Tensor, State]] = OrderedDict()
        self.primed_rows = 0  # rows read through the model (the rest were copies)

    def rows(self, prompts: list[list[int]]) -> tuple[Tensor, State]:
        """The next-character logits (B, V) and the model-layout state of one row per prompt,
        priming the prompts not kept (one forward for those of each length)."""
        keys = [tuple(ids) for ids in prompts]
        new: dict[int, list[tuple[int, ...]]] = {}
        for key in dict.fromkeys(k for k in keys if k not in self._primed):
            new.setdefault(max(1, len(key)), []).append(key)
        for group in new.values():
            logits, state = prime_rows(self.model, self.vocab, [list(k) for k in group])
            self.primed_rows += len(group)
            for i, key in enumerate(group):  # clones: a kept row must not hold its whole batch
                self._primed[key] = (logits[i:i + 1].clone(),
                                     _tree(lambda t, i=i: t[:, i:i + 1].clone(), state))
        kept = [self._primed[k] for k in keys]
        for key in keys:
            self._primed.move_to_end(key)
        while len(self._primed) > self.size:
            self._primed.popitem(last=False)
        logits = torch.cat([k[0] for k in kept])
        return logits, _tree(lambda *ts: torch.cat(ts, 1), *[k[1] for k in kept])


class Batcher:
    """Serves jobs from a worker thread, every active row a row of one batch."""

    def __init__(self, model: CharRNN, vocab: CharVocab, max_batch: int = 64, max_queue: int = 256,
                 thread: bool = True, hand_every: float = 0.0):
        """With ``thread=False`` no worker thread starts: the caller runs the worker with
        ``run()`` in a thread of its choosing (``charlm serve`` uses the main thread, where
        torch's steps run faster), until ``close()``.

        ``hand_every``: seconds between hand-overs of a running job's characters (0: every
        turn). A job's first characters and a finished choice are handed over in their own turn
        whatever it says; in between, rows keep what they write, and every job is handed its
        characters at the first turn past each multiple of ``hand_every`` on the monotonic
        clock (the event loop's clock, on which the streams send)."""
        self.model, self.vocab = model.eval(), vocab
        self.max_batch, self.max_queue = max_batch, max_queue
        self.hand_every, self._next_hand = hand_every, 0.0
        self.stepper = Stepper(self.model)
        self.prompts = PromptStates(self.model, vocab)
        # unpacked explicit states are per-layer (B, H) tensors; a module's own are (L, B, H)
        self._dim = 0 if self.stepper.cell is not None else 1
        self._rows: list[_Row] = []
        self._logits: Tensor | None = None  # (B, V): every row's next-character logits
        self._layers = None                 # the rows' carried state, as Stepper carries it
        self._groups: list[tuple] = []  # (settings, row indices or None for all, generators)
        self._asked: list[int] = []  # rows that want logprobs
        self._jobs: dict[Job, list[_Row]] = {}  # the active jobs' rows
        self._fed: list[int] = []  # rows that take each character in its turn (not plain)
        self._picked: list[Tensor] = []  # each turn's ids (B,) since the plain rows last read
        self._until_end = _NEVER  # turns until the first plain row's last character
        self._new: list[Job] = []  # jobs joined since the last turn
        self._cancels = False  # a job was cancelled since the last turn: look for its rows
        self._waiting: deque[Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self.steps = 0
        self._thread = None
        if thread:
            self._thread = threading.Thread(target=self.run, name="charlm-batcher", daemon=True)
            self._thread.start()

    # --- the event loop's side

    def submit(self, job: Job) -> None:
        """Queue ``job``; raises QueueFull when it would wait beyond the queue's bound."""
        with self._cond:
            free = max(0, self.max_batch - len(self._rows) - sum(j.n for j in self._waiting))
            if self._closed or len(self._waiting) >= self.max_queue + free:
                raise QueueFull
            self._waiting.append(job)
            self._cond.notify()

    def cancel(self, job: Job) -> None:
        """Abandon ``job``: a waiting one leaves the line now, an active one's rows at the next
        turn."""
        job.cancelled = True
        self._cancels = True
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)
            self._cond.notify()

    @property
    def has_thread(self) -> bool:
        """Whether the worker runs in a thread of its own (else ``run()`` is the caller's)."""
        return self._thread is not None

    def stats(self) -> dict:
        """Active rows and waiting requests, for /health."""
        with self._cond:
            return {"active_rows": len(self._rows), "waiting": len(self._waiting),
                    "max_batch": self.max_batch, "steps": self.steps}

    def close(self) -> None:
        """Stop the worker (waiting and active jobs are abandoned)."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(10)

    # --- the worker's side

    def run(self) -> None:
        """The worker: admit, prime, pick and step until ``close()``; then every job still
        active or waiting ends with an error piece, so no stream waits for the rest."""
        try:
            self._work()
        finally:
            with self._cond:
                self._closed = True
                jobs = list(dict.fromkeys([r.job for r in self._rows] + list(self._waiting)))
                self._waiting.clear()
            self._rows, self._logits, self._layers, self._picked = [], None, None, []
            for job in jobs:
                job.sink([Piece(-1, "the server is stopping", [], "error")])

    def _work(self) -> None:
        with torch.inference_mode():  # thread-local: the worker thread sets its own
            while True:
                joining = self._admit()
                if joining is None:
                    return
                for group in _same_prompt_length(joining):
                    try:
                        self._join(group)
                    except Exception as e:  # a bug must not kill the server: fail these only
                        for job in group:
                            job.sink([_error_piece(e)])
                try:
                    if self._rows:
                        self._turn()
                except Exception as e:  # a bug must not kill the server: fail this batch only
                    self._fail_all(e)

    def _admit(self) -> list[Job] | None:
        """Jobs that fit in the free rows, first come first served (waits while idle)."""
        with self._cond:
            while not self._closed and not self._rows and not self._waiting:
                self._cond.wait()
            if self._closed:
                return None
            joining, free = [], self.max_batch - len(self._rows)
            while self._waiting and self._waiting[0].n <= free:
                job = self._waiting.popleft()
                joining.append(job)
                free -= job.n
            return joining

    def _join(self, jobs: list[Job]) -> None:
        """Prime the rows of ``jobs`` (prompts of one length) with one forward and add them to
        the batch."""
        jobs = [job for job in jobs if not job.cancelled]
        for job in [job for job in jobs if job.max_tokens == 0]:
            job.sink([Piece(i, "", [], "length") for i in range(job.n)])
        jobs = [job for job in jobs if job.max_tokens > 0]
        if not jobs:
            return
        logits, state = self.prompts.rows([job.prompt_ids for job in jobs for _ in range(job.n)])
        layers = self.stepper.unpack(state)
        self._read()  # the rows change: what the present ones picked is read first
        self._new += jobs
        self._rows += [_Row(job, i, g) for job in jobs
                       for i, g in enumerate(row_draws(sample_generators(job.seed, job.n)))]
        if self._logits is None:
            self._logits, self._layers = logits.contiguous(), layers
        else:
            self._logits = torch.cat([self._logits, logits])
            self._layers = _tree(lambda a, b: torch.cat([a, b], self._dim), self._layers, layers)
        self._changed()

    def _turn(self) -> None:
        """One character for every row, then one batched step for the rows still going.

        A plain row's characters wait, as the turns' id tensors, until something reads them
        (``_read``): a hand-over, a row's last character, or a change of rows. So a turn of
        plain rows costs Python the same few calls whatever the batch (as ``generate``'s step);
        rows with stop strings or logprobs take their character every turn."""
        if self._cancels:
            self._cancels = False
            self._keep([i for i, r in enumerate(self._rows) if not r.job.cancelled])
            if not self._rows:
                return
        ids = self._pick()  # (B,)
        self._picked.append(ids)
        due, self._new = self._new, []  # a job's first characters go out at once
        if self._fed:
            lps, chars, picked = self._logprobs(ids), self.vocab.chars, ids.tolist()
            for i in self._fed:
                row = self._rows[i]
                if row.feed(chars[picked[i]], lps.get(i)):
                    due.append(row.job)
        if len(self._picked) >= min(self._until_end, _UNREAD_AT_MOST):  # a row's last, or many
            due += self._read()
        self._hand_over(due)
        keep = [i for i, r in enumerate(self._rows) if r.finish is None] if due else None
        if keep is not None and len(keep) < len(self._rows):
            self._keep(keep)
            ids = ids[keep]
        if self._rows:
            self._logits, self._layers = self.stepper.step(ids, self._layers)
        self.steps += 1

    def _read(self) -> list[Job]:
        """The characters picked since the last read → the plain rows' text; the jobs whose
        plain rows finished."""
        if not self._picked:
            return []
        block = torch.stack(self._picked, 1).tolist()  # (B, turns)
        self._picked = []
        chars = self.vocab.chars
        ended = [row.job for row, picked in zip(self._rows, block)
                 if row.plain and row.write("".join([chars[c] for c in picked]))]
        self._until_end = self._turns_to_end()
        return ended

    def _turns_to_end(self) -> float:
        """Turns until the first plain row still going writes its last character (counted from
        the last read)."""
        return min((r.job.max_tokens - r.written for r in self._rows
                    if r.plain and r.finish is None), default=_NEVER)

    def _hand_over(self, due: list[Job]) -> None:
        """Hand every job its rows' new pieces, once per ``hand_every``; in between only the
        ``due`` jobs (first characters, a finished choice). One call of a job's sink each."""
        tick = self.hand_every <= 0
        if not tick:
            now = time.monotonic()
            if now >= self._next_hand:
                self._next_hand = (now // self.hand_every + 1) * self.hand_every
                tick = True
            elif not due:
                return
        due += self._read()
        for job in self._jobs if tick else dict.fromkeys(due):
            pieces = [p for p in (row.take() for row in self._jobs[job]) if p is not None]
            if pieces:
                job.sink(pieces)

    def _changed(self) -> None:
        """The rows changed: regroup them by settings, and find the ones that want logprobs
        (kept until the rows change again, not redone every turn)."""
        groups: dict[tuple, list[int]] = {}
        self._jobs = {}  # each job's rows (side by side: joined together, dropped in order)
        for i, row in enumerate(self._rows):
            groups.setdefault(row.key, []).append(i)
            self._jobs.setdefault(row.job, []).append(row)
        # a job cancelled since it joined has no rows left: no first characters are due to it
        self._new = [job for job in self._new if job in self._jobs]
        self._fed = [i for i, r in enumerate(self._rows) if not r.plain]
        self._until_end = self._turns_to_end()  # nothing waits to be read here
        self._groups = [(self._rows[rows[0]].job.settings,
                         None if len(groups) == 1 else torch.tensor(rows),
                         [self._rows[i].generator for i in rows]) for rows in groups.values()]
        self._asked = [i for i, r in enumerate(self._rows) if r.job.logprobs is not None]

    def _pick(self) -> Tensor:
        """Every row's next id, each settings group through ``sampling.pick`` with its rows'
        own generators, so a row draws exactly what ``generate`` would draw for it."""
        if len(self._groups) == 1:
            settings, _, generators = self._groups[0]
            return pick(self._logits, settings, generators)
        ids = torch.empty(len(self._rows), dtype=torch.long)
        for settings, idx, generators in self._groups:
            ids[idx] = pick(self._logits.index_select(0, idx), settings, generators)
        return ids

    def _logprobs(self, ids: Tensor) -> dict[int, tuple[str, float, dict[str, float]]]:
        """The model's log-probability of each chosen character and its top alternatives,
        for the rows that asked (the model's own distribution, before temperature)."""
        asked = self._asked
        if not asked:
            return {}
        idx = torch.tensor(asked)
        lp = torch.log_softmax(self._logits.index_select(0, idx).float(), -1)  # (A, V)
        chosen = lp.gather(1, ids[idx][:, None])[:, 0].tolist()
        k = min(max(self._rows[i].job.logprobs for i in asked), lp.shape[1])
        top_lp, top_ids = (t.tolist() for t in lp.topk(k, -1)) if k else ([[]] * len(asked),) * 2
        chars, out, picked = self.vocab.chars, {}, ids.tolist()
        for a, i in enumerate(asked):
            want = self._rows[i].job.logprobs
            alts = {chars[c]: p for c, p in zip(top_ids[a][:want], top_lp[a][:want])}
            out[i] = (chars[picked[i]], chosen[a], alts)
        return out

    def _keep(self, keep: list[int]) -> None:
        """Drop every row not in ``keep`` (row indices) from the batch."""
        if len(keep) == len(self._rows):
            return
        self._read()  # the rows change: what they picked is read first
        self._rows = [self._rows[i] for i in keep]
        self._changed()
        if not keep:
            self._logits = self._layers = None
            return
        idx = torch.tensor(keep)
        self._logits = self._logits.index_select(0, idx)
        self._layers = _tree(lambda t: t.index_select(self._dim, idx), self._layers)

    def _fail_all(self, error: Exception) -> None:
        """Finish every active row with an error (the worker goes on with new jobs)."""
        jobs = {r.job for r in self._rows}
        self._rows, self._logits, self._layers, self._picked = [], None, None, []
        self._changed()
        for job in jobs:
            job.sink([_error_piece(error)])


def _error_piece(error: Exception) -> Piece:
    """A piece that tells the request's stream the server failed it (index -1)."""
    return Piece(-1, f"internal error: {type(error).__name__}: {error}", [], "error")
