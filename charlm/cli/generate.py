"""``charlm sample``, ``eval`` and ``export``: what a checkpoint generates, scores and becomes."""

from __future__ import annotations

import sys
import time

import click
import numpy as np

from charlm.cli.common import (
    data_options,
    emit_json,
    given_here,
    user_errors,
)
from charlm.errors import CharlmError


@click.command()
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
              help="Also report known words, distinct-n, novelty and loops (one character "
                   "40 times in a row) against the training text.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON object with every sample: the one output that keeps the text in "
                   "memory (so does --stats); otherwise text is written as it is drawn.")
@click.option("--max-kept-chars", default=50_000_000, show_default=True,
              help="Most characters --json or --stats may keep in memory "
                   "(--num-samples x (prompt + --length)).")
@user_errors
def sample(checkpoint, prompt, length, temperature, top_k, top_p, greedy, num_samples, seed,
           stats, as_json, max_kept_chars):
    """Generate text from a checkpoint, run folder (its best.ckpt) or exported folder, streamed
    as it is written."""
    from charlm.generation.checkpoint import load
    from charlm.generation.sampling import SampleSettings, check_length, generate, prompt_ids
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
               f"distinct-2 {s['distinct_2']:.2f}, novel 8-grams {s['novelty_8']:.1%}, "
               f"loops {s['loops']:.1%} (training text {s['loops_training']:.1%}) "
               f"({s['words']} words)", err=True)


def _stream_one(model, vocab, prompt: str, length: int, settings, seed) -> None:
    """One sample to stdout as it is drawn; nothing kept (a terminal sees every character)."""
    from charlm.generation.sampling import generate_chars
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

    from charlm.generation.sampling import generate_ids
    dtype = np.uint8 if len(vocab) <= 256 else np.uint32
    need = num_samples * length * np.dtype(dtype).itemsize
    with tempfile.TemporaryFile(prefix="charlm-sample-") as tmp:
        free = shutil.disk_usage(tempfile.gettempdir()).free
        if need > free:
            raise CharlmError(f"{num_samples:,} samples of {length:,} characters need "
                              f"{need / 1e9:.1f} GB of temporary disk in {tempfile.gettempdir()}, "
                              f"which has {free / 1e9:.1f} GB free; "
                              f"ask for fewer or shorter samples")
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
    from charlm.generation.evaluation import run_corpus, run_split
    from charlm.lab.textstats import TrainingText
    train = run_split(run_corpus(info, vocab), info, "train")
    return TrainingText(np.asarray(train), vocab).stats(texts)


@click.command("eval")
@click.argument("checkpoint")
@data_options(split_flag="--hf-split")
@click.option("--split", "which", default=None, type=click.Choice(["train", "val", "test", "all"]),
              help="Which part to score, with the training run's fractions "
                   "[default: val of the training data; all of new --data].")
@click.option("--seq-len", default=256, show_default=True,
              help="Window length of the pass (the state is carried).")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def eval_(checkpoint, data, hf_split, which, seq_len, as_json, encoding, text_column, streaming):
    """Full-pass loss (nats/char), bpc and perplexity of a checkpoint on a split or new text."""
    from charlm.generation.evaluation import evaluate_checkpoint
    which = which or ("all" if data else "val")
    # what was not given on the command line is read as the run read its data (evaluation)
    given = {name: value if given_here(name) else None for name, value in
             (("encoding", encoding), ("text_column", text_column), ("hf_split", hf_split),
              ("streaming", streaming))}
    result = evaluate_checkpoint(checkpoint, list(data), which, seq_len=seq_len, **given)
    if as_json:
        emit_json(result)
        return
    click.echo(f"{result['split']}: loss {result['loss']:.4f} nats/char, bpc {result['bpc']:.4f}, "
               f"perplexity {result['perplexity']:.3f} over {result['chars']:,} characters")
    if result.get("unknown_chars"):
        click.echo(f"skipped {result['unknown_chars']:,} characters outside the model's "
                   f"vocabulary: {result['unknown']}")


@click.command()
@click.argument("checkpoint")
@click.argument("out_dir")
@user_errors
def export(checkpoint, out_dir):
    """Write a pickle-free folder: model.safetensors + config.json (+ a model card)."""
    from charlm.generation.checkpoint import export as export_
    click.echo(f"exported to {export_(checkpoint, out_dir)}")
