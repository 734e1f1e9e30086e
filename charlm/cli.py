"""The ``charlm`` command: thin click wrappers that parse, call the library, and print."""

from __future__ import annotations

import errno
import functools
import json
import re
import sys
import time

import click
import numpy as np

from . import __version__
from .errors import CharlmError
from .presets import PRESETS, apply as apply_preset


def user_errors(fn):
    """Turn a user's mistake into one clear sentence and exit code 1, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CharlmError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted") from None
        except BrokenPipeError:  # the reader went away (`| head`): nothing left to say to it
            _quiet_stdout()
            raise SystemExit(0) from None
        except OSError as e:  # a full disk, a path no one may write: the user's to fix
            raise click.ClickException(_os_error(e)) from None
        except (MemoryError, RuntimeError) as e:  # a model or batch larger than this machine
            if not isinstance(e, MemoryError) and "allocate" not in str(e):
                raise
            asked = re.search(r"allocate (\d+) bytes", str(e))
            size = f" ({int(asked[1]) / 2**30:,.1f} GiB at once)" if asked else ""
            raise click.ClickException(f"not enough memory for what was asked{size}; ask for a "
                                       f"smaller model, batch or number of samples") from None
    return wrapper


def _os_error(e: OSError) -> str:
    """One sentence for an error the system gave about a file."""
    where = f" ({e.filename})" if e.filename else ""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device{where.replace(' (', ' while writing ').rstrip(')')}"
    return f"{(e.strerror or str(e) or type(e).__name__).rstrip('.').lower()}{where}"


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so the flush at exit does not fail again on the closed pipe."""
    import os
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):  # stdout is not a real file (a test runner's)
        pass


def data_options(fn=None, *, split_flag: str = "--split"):
    """--data and the options that say how to read it (train, eval, data, compare)."""
    if fn is None:
        return functools.partial(data_options, split_flag=split_flag)
    for decorator in reversed([
        click.option("--data", "data", multiple=True, metavar="SOURCE",
                     help="Text file, directory, glob, save_to_disk folder, hf:NAME or stdlib "
                          "(repeatable; default: stdlib, the Python standard library)."),
        click.option("--encoding", default="utf-8", show_default=True, help="Text file encoding."),
        click.option("--text-column", default="text", show_default=True,
                     help="Column of a dataset that holds the text."),
        click.option(split_flag, "hf_split", default="train", show_default=True,
                     help="Split of a Hugging Face / save_to_disk dataset."),
        click.option("--streaming", is_flag=True, help="Stream an hf: dataset instead of downloading it whole."),
    ]):
        fn = decorator(fn)
    return fn


def options(*decorators):
    """Apply click options in the order they are written (one decorator for a shared group)."""
    def apply(fn):
        for decorator in reversed(decorators):
            fn = decorator(fn)
        return fn
    return apply


model_options = options(  # train and compare
    click.option("--num-layers", default=1, show_default=True),
    click.option("--embedding-dim", default=64, show_default=True),
    click.option("--dropout", default=0.0, show_default=True,
                 help="Dropout between stacked layers and before the output layer."),
    click.option("--weight-drop", default=0.0, show_default=True,
                 help="DropConnect on the recurrent (hidden-to-hidden) weights while training."),
    click.option("--init", default="default", show_default=True,
                 type=click.Choice(["default", "orthogonal"]),
                 help="Recurrent weights: torch's uniform, or an orthogonal block per gate."),
    click.option("--heads", type=int, default=None,
                 help="transformer only: attention heads [default: about one per 64 of width]."),
    click.option("--context", type=int, default=None,
                 help="transformer only: characters it attends to [default: --seq-len]."),
    click.option("--impl", default="auto", show_default=True,
                 type=click.Choice(["auto", "fused", "explicit"]),
                 help="fused torch kernels, or the explicit cells written as the lecture note's "
                      "equations (auto: fused where the cell has it)."),
)

optim_options = options(  # train and compare: the same batches, optimiser and budget
    click.option("--seq-len", default=128, show_default=True,
                 help="Characters per window (BPTT length)."),
    click.option("--lr", type=float, default=None,
                 help="Peak learning rate (AdamW) [default: 6e-3 for train, 4e-3 for compare]."),
    click.option("--weight-decay", type=float, default=None,
                 help="AdamW's decoupled decay on the weight matrices "
                      "[default: 0.1 for train, 0 for compare]."),
    click.option("--warmup-steps", default=0, show_default=True),
    click.option("--grad-clip", default=5.0, show_default=True),
    click.option("--schedule", default="cosine", show_default=True,
                 type=click.Choice(["cosine", "constant"])),
    click.option("--max-steps", type=int, default=None),
    click.option("--max-time", type=float, default=None, help="Wall-clock budget in minutes."),
    click.option("--val-fraction", default=0.1, show_default=True),
    click.option("--test-fraction", default=0.0, show_default=True),
    click.option("--window", default="stream", show_default=True,
                 type=click.Choice(["stream", "random"])),
    click.option("--accelerator", default="auto", show_default=True),
)


UNSET_IS_DEFAULT = ("lr", "weight_decay")  # left out when not given: TrainConfig's default


def emit_json(obj: dict) -> None:
    click.echo(json.dumps(obj))


@click.group()
@click.version_option(__version__, prog_name="charlm")
def cli():
    """Train character-level RNN, LSTM and GRU language models, generate text, compare cells."""
    # A path that is not valid UTF-8 reaches us as surrogates; print its bytes back as they were
    # (as ls does) instead of failing on them.
    for stream in (sys.stdout, sys.stderr):
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="surrogateescape")


@cli.command()
@data_options
@click.option("--cell", default="lstm", show_default=True,
              help="Recurrent cell (rnn, lstm, gru, gru-note, lstm-ln, a registered one), or "
                   "transformer: a small causal transformer, the reference to beat.")
@click.option("--hidden-size", default=384, show_default=True)
@click.option("--batch-size", type=int, default=None,
              help="Parallel streams per process [default: 8 or 16, whichever trains faster "
                   "on this machine, measured once and cached].")
@model_options
@optim_options
@click.option("--max-epochs", type=int, default=None)
@click.option("--seed", default=1337, show_default=True)
@click.option("--out", default="checkpoints/run", show_default=True, help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue exactly from OUT/last.ckpt.")
@click.option("--eval-every", default=500, show_default=True,
              help="Validate and checkpoint every N steps (0: only at the end).")
@click.option("--sample-every", default=0, show_default=True,
              help="Write samples every N steps (0: never).")
@click.option("--devices", default="auto", show_default=True)
@click.option("--strategy", default="auto", show_default=True)
@click.option("--num-nodes", default=1, show_default=True)
@click.option("--precision", default="auto", show_default=True,
              help="Lightning's precision (32-true, bf16-mixed, 16-mixed, ...); auto: bf16-mixed "
                   "where this machine computes bf16 natively (a CPU reporting AMX or "
                   "AVX512-BF16, a GPU of compute capability 8.0+; measured where the CPU does "
                   "not say), else 32-true. The run prints what it chose and why.")
@click.option("--preset", default=None, type=click.Choice(sorted(PRESETS)),
              help="Measured settings for a job; flags you give override them. " + " ".join(
                  f"{p.name}: {p.summary}." for p in PRESETS.values()))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@user_errors
def train(data, hf_split, as_json, preset, **options):
    """Train a model; the run folder gets best.ckpt, last.ckpt, metrics.csv, samples.txt, run.json."""
    from .interrupt import Interrupted
    from .runlock import is_rank_zero
    from .train import TrainConfig, fit
    ctx = click.get_current_context()
    given = {k for k in options
             if ctx.get_parameter_source(k) is not click.core.ParameterSource.DEFAULT}
    options = apply_preset(options, preset, given)
    options = {k: v for k, v in options.items() if v is not None or k not in UNSET_IS_DEFAULT}
    if options["devices"].isdigit():
        options["devices"] = int(options["devices"])
    config = TrainConfig(data=list(data), split=hf_split, progress=not as_json, **options)
    try:
        results = fit(config)
    except Interrupted:
        if not is_rank_zero():  # every rank stopped at the same step: rank 0 says so, once
            raise SystemExit(1) from None
        raise
    if not is_rank_zero():  # under DDP every process runs this command; one of them reports
        return
    if as_json:
        emit_json({k: v for k, v in results.items() if k != "history"})
    else:
        click.echo(f"best val loss {results['val_loss']:.4f} nats ({results['val_bpc']:.4f} bpc) "
                   f"at step {results['best_step']}; {results['steps']} steps, "
                   f"{results['train_chars_per_s']:,.0f} train chars/s; "
                   f"checkpoints in {config.out}")


@cli.command()
@click.argument("checkpoint")
@click.option("--prompt", default="", help="Text to start from (default: the start of a line).")
@click.option("--length", default=500, show_default=True, help="New characters per sample.")
@click.option("--temperature", default=0.8, show_default=True, help="0 means greedy.")
@click.option("--top-k", type=int, default=None)
@click.option("--top-p", type=float, default=None)
@click.option("--greedy", is_flag=True, help="Always take the most likely character.")
@click.option("--num-samples", default=1, show_default=True,
              help="Samples, generated as one batch; each is printed whole when all are done.")
@click.option("--seed", type=int, default=None,
              help="Same seed, same text; sample i is the same whatever --num-samples.")
@click.option("--stats", is_flag=True,
              help="Also report known words, distinct-n and novelty against the training text.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object with every sample: the one output that keeps the text in "
                   "memory (so does --stats); otherwise text is written as it is drawn.")
@click.option("--max-kept-chars", default=50_000_000, show_default=True,
              help="Most characters --json or --stats may keep in memory "
                   "(--num-samples x (prompt + --length)).")
@user_errors
def sample(checkpoint, prompt, length, temperature, top_k, top_p, greedy, num_samples, seed,
           stats, as_json, max_kept_chars):
    """Generate text from a checkpoint or an exported folder, streamed as it is written."""
    from .checkpoint import load
    from .sampling import SampleSettings, check_length, generate, prompt_ids
    settings = SampleSettings(temperature, top_k, top_p, greedy)
    check_length(length, num_samples)
    keep = as_json or stats
    if keep and num_samples * (len(prompt) + length) > max_kept_chars:
        raise CharlmError(f"--json and --stats keep every sample in memory: {num_samples:,} x "
                          f"{len(prompt) + length:,} characters is more than --max-kept-chars "
                          f"{max_kept_chars:,}; raise it, or drop --json/--stats to stream")
    model, vocab, info = load(checkpoint)
    prompt_ids(vocab, prompt)  # an unknown character is an error before anything is printed
    t0 = time.perf_counter()
    if keep:
        texts = generate(model, vocab, prompt, length, settings, num_samples, seed)
    elif num_samples == 1:
        _stream_one(model, vocab, prompt, length, settings, seed)
    else:
        _stream_many(model, vocab, prompt, length, settings, num_samples, seed)
    seconds = time.perf_counter() - t0
    if not keep:
        return
    result = {"samples": texts, "chars_per_s": num_samples * length / max(seconds, 1e-9)}
    if stats:
        result["stats"] = _sample_stats(vocab, info, [t[len(prompt):] for t in texts])
    if as_json:
        emit_json(result)
        return
    for i, text in enumerate(texts):
        click.echo(text if num_samples == 1 else f"--- sample {i + 1} ---\n{text}")
    s = result["stats"]
    click.echo(f"known words {s['known_words']:.1%}, distinct-1 {s['distinct_1']:.2f}, "
               f"distinct-2 {s['distinct_2']:.2f}, novel 8-grams {s['novelty_8']:.1%} "
               f"({s['words']} words)", err=True)


def _stream_one(model, vocab, prompt: str, length: int, settings, seed) -> None:
    """One sample to stdout as it is drawn; nothing kept (a terminal sees every character)."""
    from .sampling import generate_chars
    out = sys.stdout
    live = out.isatty()
    out.write(prompt)
    for (ch,) in generate_chars(model, vocab, prompt, length, settings, 1, seed):
        out.write(ch)
        if live:
            out.flush()
    out.write("\n")
    out.flush()


def _stream_many(model, vocab, prompt: str, length: int, settings, num_samples: int,
                 seed) -> None:
    """Several samples, one batch: each step's ids go to a temporary file on disk (memory
    stays flat whatever --length), then each sample is printed whole, read back in chunks."""
    import shutil
    import tempfile

    from .sampling import generate_ids
    dtype = np.uint8 if len(vocab) <= 256 else np.uint32
    need = num_samples * length * np.dtype(dtype).itemsize
    with tempfile.TemporaryFile(prefix="charlm-sample-") as tmp:
        free = shutil.disk_usage(tempfile.gettempdir()).free
        if need > free:
            raise CharlmError(f"{num_samples:,} samples of {length:,} characters need "
                              f"{need / 1e9:.1f} GB of temporary disk in {tempfile.gettempdir()}, "
                              f"which has {free / 1e9:.1f} GB free; ask for fewer or shorter samples")
        chunk = []
        for nxt in generate_ids(model, vocab, prompt, length, settings, num_samples, seed):
            chunk.append(nxt.numpy().astype(dtype))
            if len(chunk) == 4096:
                tmp.write(np.stack(chunk).tobytes())  # (steps, B), step-major
                chunk = []
        if chunk:
            tmp.write(np.stack(chunk).tobytes())
        tmp.flush()
        steps = np.memmap(tmp, dtype=dtype, mode="r", shape=(length, num_samples)) \
            if length else np.zeros((0, num_samples), dtype)
        chars = np.array(vocab.chars)
        for i in range(num_samples):
            sys.stdout.write(f"--- sample {i + 1} ---\n{prompt}")
            for start in range(0, length, 1 << 16):
                sys.stdout.write("".join(chars[steps[start:start + (1 << 16), i]]))
            sys.stdout.write("\n")
        sys.stdout.flush()
        del steps


def _sample_stats(vocab, info: dict, texts: list[str]) -> dict:
    """Generated text against the checkpoint's training split."""
    from .evaluation import run_corpus, run_split
    from .textstats import TrainingText
    train = run_split(run_corpus(info, vocab), info, "train")
    return TrainingText(np.asarray(train), vocab).stats(texts)


@cli.command("eval")
@click.argument("checkpoint")
@data_options(split_flag="--hf-split")
@click.option("--split", "which", default=None, type=click.Choice(["train", "val", "test", "all"]),
              help="Which part to score, with the training run's fractions "
                   "[default: val of the training data; all of new --data].")
@click.option("--seq-len", default=256, show_default=True, help="Window length of the pass (the state is carried).")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def eval_(checkpoint, data, hf_split, which, seq_len, as_json, encoding, text_column, streaming):
    """Full-pass loss (nats/char), bpc and perplexity of a checkpoint on a split or new text."""
    from .evaluation import evaluate_checkpoint
    which = which or ("all" if data else "val")
    result = evaluate_checkpoint(checkpoint, list(data), which, seq_len=seq_len, encoding=encoding,
                                 text_column=text_column, hf_split=hf_split, streaming=streaming)
    if as_json:
        emit_json(result)
        return
    click.echo(f"{result['split']}: loss {result['loss']:.4f} nats/char, bpc {result['bpc']:.4f}, "
               f"perplexity {result['perplexity']:.3f} over {result['chars']:,} characters")
    if result.get("unknown_chars"):
        click.echo(f"skipped {result['unknown_chars']:,} characters outside the model's vocabulary: "
                   f"{result['unknown']}")


@cli.command()
@click.argument("checkpoint")
@click.argument("out_dir")
@user_errors
def export(checkpoint, out_dir):
    """Write a pickle-free folder: model.safetensors + config.json (+ a model card)."""
    from .checkpoint import export as export_
    click.echo(f"exported to {export_(checkpoint, out_dir)}")


@cli.group()
def data():
    """Inspect, prepare and download corpora."""


@data.command("info")
@click.argument("source", nargs=-1)
@click.option("--val-fraction", default=0.1, show_default=True)
@click.option("--test-fraction", default=0.0, show_default=True)
@click.option("--encoding", default="utf-8", show_default=True)
@click.option("--text-column", default="text", show_default=True)
@click.option("--split", "hf_split", default="train", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@user_errors
def data_info(source, val_fraction, test_fraction, encoding, text_column, hf_split, as_json):
    """Characters, vocabulary, split sizes and cache path of SOURCE (encoding it if needed)."""
    from .data import load_corpus
    corpus = load_corpus(list(source) or None, encoding=encoding, text_column=text_column,
                         split=hf_split)
    splits = corpus.split(val_fraction, test_fraction)
    info = {"sources": corpus.meta["sources"], "chars": len(corpus.ids),
            "vocab_size": len(corpus.vocab), "vocab": "".join(corpus.vocab.chars),
            "dtype": str(corpus.ids.dtype), "splits": {k: len(v) for k, v in splits.items()},
            "cache": corpus.meta["cache"]}
    if as_json:
        emit_json(info)
        return
    click.echo(f"sources:    {info['sources']}\ncharacters: {info['chars']:,}\n"
               f"vocab:      {info['vocab_size']} ({info['dtype']} ids)\n"
               f"            {corpus.vocab.describe()}\n"
               f"splits:     " + ", ".join(f"{k} {v:,}" for k, v in info["splits"].items()) +
               f"\ncache:      {info['cache']}")


@data.command("prepare")
@click.argument("source", nargs=-1)
@click.option("--encoding", default="utf-8", show_default=True)
@click.option("--text-column", default="text", show_default=True)
@click.option("--split", "hf_split", default="train", show_default=True)
@user_errors
def data_prepare(source, encoding, text_column, hf_split):
    """Encode SOURCE into the cache now (train does it on demand)."""
    from .data import load_corpus
    t0 = time.perf_counter()
    corpus = load_corpus(list(source) or None, encoding=encoding, text_column=text_column,
                         split=hf_split)
    click.echo(f"{len(corpus.ids):,} characters, vocab {len(corpus.vocab)}: "
               f"{corpus.vocab.describe()}\ncached at {corpus.meta['cache']} "
               f"({time.perf_counter() - t0:.1f} s)")


@data.command("get")
@click.argument("name")
@click.option("--dir", "data_dir", default="data", show_default=True, help="Where to put it.")
@user_errors
def data_get(name, data_dir):
    """Download a classic corpus (tinyshakespeare, warpeace, enwik8, text8), checksum-verified."""
    from . import corpora
    try:
        path = corpora.get_corpus(name, data_dir)
    except (ValueError, corpora.DownloadError) as e:
        raise CharlmError(str(e)) from None
    click.echo(f"{name}: {path}")


@cli.command()
@click.argument("checkpoint")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on (0.0.0.0: every interface, reachable by others).")
@click.option("--port", default=8000, show_default=True, help="0: any free port.")
@click.option("--api-key", envvar="CHARLM_API_KEY", default=None,
              help="Require Authorization: Bearer KEY on every API request [env CHARLM_API_KEY].")
@click.option("--name", default=None, help="The model's name in the API [default: the run folder].")
@click.option("--max-batch", default=64, show_default=True,
              help="Rows generated together (a request with n choices takes n rows).")
@click.option("--max-queue", default=256, show_default=True,
              help="Requests that may wait for rows; beyond it the server answers 503.")
@click.option("--max-tokens", default=2048, show_default=True, help="Most characters per choice.")
@click.option("--max-n", default=16, show_default=True, help="Most choices per request.")
@click.option("--max-prompt", default=4096, show_default=True, help="Longest prompt, in characters.")
@user_errors
def serve(checkpoint, host, port, api_key, name, max_batch, max_queue, max_tokens, max_n,
          max_prompt):
    """Serve a checkpoint: an OpenAI-compatible completions API and a web page at /."""
    try:
        from . import serve as serving
    except ImportError as e:
        if (e.name or "").split(".")[0] not in ("starlette", "uvicorn", "anyio", "h11"):
            raise
        raise CharlmError("charlm serve needs the serve extra: pip install 'charlm[serve]'") from None
    from .checkpoint import load
    from .model import is_recurrent
    for flag, value, least in [("--max-batch", max_batch, 1), ("--max-n", max_n, 1),
                               ("--max-prompt", max_prompt, 1), ("--max-queue", max_queue, 0),
                               ("--max-tokens", max_tokens, 1)]:
        if value < least:
            raise CharlmError(f"{flag} must be at least {least}, not {value}")
    model, vocab, _ = load(checkpoint)
    if not is_recurrent(model.config.cell):  # rows share one state tensor per layer
        raise CharlmError(f"charlm serve takes recurrent models; {checkpoint} is a "
                          f"{model.config.cell} (generate from it with charlm sample)")
    name = name or serving.model_name(checkpoint)
    limits = serving.Limits(max_tokens, min(max_n, max_batch), max_prompt, max_batch, max_queue)
    sock = serving.bind(host, port)
    app = serving.create_app(model, vocab, name, limits, api_key)
    where = f"http://{'[' + host + ']' if ':' in host else host}:{sock.getsockname()[1]}"
    # The worker thread (model steps) and the event loop (sends) share the GIL; a short switch
    # interval keeps either from waiting the default 5 ms for the other (process-wide: set here)
    sys.setswitchinterval(0.0005)
    click.echo(f"serving {name} at {where}/ (API at {where}/v1"
               f"{', key required' if api_key else ''}); Ctrl-C stops", err=True)
    serving.run(app, sock)


from . import cli_lab  # noqa: E402,F401  (registers compare, visualize and inspect)


def main() -> None:  # pragma: no cover
    cli()
