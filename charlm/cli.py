"""The ``charlm`` command: thin click wrappers that parse, call the library, and print."""

from __future__ import annotations

import errno
import functools
import json
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
        except OSError as e:  # a full disk is the user's to fix, not a bug: say which file
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            where = f" while writing {e.filename}" if e.filename else ""
            raise click.ClickException(f"no space left on the device{where}") from None
    return wrapper


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
    click.option("--impl", default="auto", show_default=True,
                 type=click.Choice(["auto", "fused", "explicit"]),
                 help="fused torch kernels, or the explicit cells written as the lecture note's "
                      "equations (auto: fused where the cell has it)."),
)

optim_options = options(  # train and compare: the same batches, optimiser and budget
    click.option("--seq-len", default=128, show_default=True,
                 help="Characters per window (BPTT length)."),
    click.option("--lr", default=4e-3, show_default=True),
    click.option("--weight-decay", default=0.0, show_default=True),
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


def emit_json(obj: dict) -> None:
    click.echo(json.dumps(obj))


@click.group()
@click.version_option(__version__, prog_name="charlm")
def cli():
    """Train character-level RNN, LSTM and GRU language models, generate text, compare cells."""


@cli.command()
@data_options
@click.option("--cell", default="lstm", show_default=True,
              help="Recurrent cell (rnn, lstm, gru, gru-note, or a registered one).")
@click.option("--hidden-size", default=384, show_default=True)
@click.option("--batch-size", type=int, default=None,
              help="Parallel streams per process [default: 16 where training runs in bf16, else 8].")
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
                   "where the hardware computes bf16 natively (AMX or AVX512-BF16 CPUs, bf16 "
                   "GPUs), else 32-true.")
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
@click.option("--num-samples", default=1, show_default=True, help="Samples, generated as one batch.")
@click.option("--seed", type=int, default=None, help="Same seed, same text.")
@click.option("--stats", is_flag=True,
              help="Also report known words, distinct-n and novelty against the training text.")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def sample(checkpoint, prompt, length, temperature, top_k, top_p, greedy, num_samples, seed,
           stats, as_json):
    """Generate text from a checkpoint or an exported folder, streamed as it is written."""
    from .checkpoint import load
    from .sampling import SampleSettings, generate, prompt_ids
    settings = SampleSettings(temperature, top_k, top_p, greedy)
    if length < 0:
        raise CharlmError(f"--length must be at least 0, not {length}")
    model, vocab, info = load(checkpoint)
    prompt_ids(vocab, prompt)  # an unknown character is an error before anything is printed
    stream = not as_json and num_samples == 1
    if stream:
        click.echo(prompt, nl=False)
    on_chars = (lambda chars: (sys.stdout.write(chars[0]), sys.stdout.flush())) if stream else None
    t0 = time.perf_counter()
    texts = generate(model, vocab, prompt, length, settings, num_samples, seed, on_chars)
    seconds = time.perf_counter() - t0
    result = {"samples": texts, "chars_per_s": num_samples * length / max(seconds, 1e-9)}
    if stats:
        result["stats"] = _sample_stats(vocab, info, [t[len(prompt):] for t in texts])
    if as_json:
        emit_json(result)
        return
    if stream:
        click.echo()
    else:
        for i, text in enumerate(texts):
            click.echo(f"--- sample {i + 1} ---\n{text}")
    if stats:
        s = result["stats"]
        click.echo(f"known words {s['known_words']:.1%}, distinct-1 {s['distinct_1']:.2f}, "
                   f"distinct-2 {s['distinct_2']:.2f}, novel 8-grams {s['novelty_8']:.1%} "
                   f"({s['words']} words)", err=True)


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
    for flag, value, least in [("--max-batch", max_batch, 1), ("--max-n", max_n, 1),
                               ("--max-prompt", max_prompt, 1), ("--max-queue", max_queue, 0),
                               ("--max-tokens", max_tokens, 1)]:
        if value < least:
            raise CharlmError(f"{flag} must be at least {least}, not {value}")
    model, vocab, _ = load(checkpoint)
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
