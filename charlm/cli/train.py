"""``charlm train``: a run folder from a corpus, with the settings resolved by the library."""

from __future__ import annotations

import click

from charlm.cli.common import (
    UNSET_IS_DEFAULT,
    data_options,
    emit_json,
    given_here,
    model_options,
    optim_options,
    user_errors,
)
from charlm.training.presets import PRESETS, recipe_line, trains_in_float32
from charlm.training.presets import apply as apply_preset


@click.command()
@data_options
@click.option("--cell", default="lstm", show_default=True,
              help="Recurrent cell (rnn, lstm, gru, gru-note, lstm-ln, a registered one), or "
                   "transformer: a small causal transformer, the reference to beat.")
@click.option("--hidden-size", default=384, show_default=True)
@click.option("--num-layers", default=1, show_default=True)
@click.option("--head-size", default=0, show_default=True,
              help="A hidden layer this wide (GELU) between the recurrent stack and the output "
                   "(0: a linear output layer).")
@click.option("--batch-size", type=int, default=None,
              help="Parallel streams per process [default: 8 or 16, whichever trains faster "
                   "on this machine, measured once and cached].")
@model_options
@click.option("--activation-reg", default=0.0, show_default=True,
              help="AR (AWD-LSTM): penalise the mean square of the top layer's outputs after "
                   "dropout, times this weight.")
@click.option("--temporal-reg", default=0.0, show_default=True,
              help="TAR (AWD-LSTM): penalise the mean square of the top layer's change from "
                   "one character to the next, times this weight.")
@optim_options
@click.option("--max-epochs", type=int, default=None)
@click.option("--restart-every", default=8, show_default=True,
              help="Each stream's carried state starts again from zero every N windows, the "
                   "streams in turn (0: only at each epoch's start), so that even a short run "
                   "learns to write from the zero state that sampling starts from.")
@click.option("--seed", default=1337, show_default=True)
@click.option("--out", default="checkpoints/run", show_default=True, help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue exactly from OUT/last.ckpt.")
@click.option("--eval-every", type=int, default=None,
              help="Validate and checkpoint every N steps (0: only at the end) [default: 500, "
                   "fewer where they would take over a tenth of a --max-time budget].")
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
                  f"{p.name}: {p.summary}{'; ' + p.float32_summary if p.float32 else ''}."
                  for p in PRESETS.values()))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@user_errors
def train(data, hf_split, as_json, preset, **options):
    """Train a model; the run folder gets best.ckpt, last.ckpt, metrics.csv, samples.txt,
    run.json."""
    from charlm.training.environment import prepare_process
    from charlm.training.fit import TrainConfig, fit
    from charlm.training.interrupt import Interrupted
    from charlm.training.runlock import is_rank_zero
    given = {k for k in options if given_here(k)}
    if preset is not None:
        merged = apply_preset(options, preset, given)  # the precision the run will ask for
        float32 = trains_in_float32(merged["precision"], merged["accelerator"])
        options = apply_preset(options, preset, given, float32)
        if not as_json:
            click.echo(recipe_line(preset, float32), err=True)
    options = {k: v for k, v in options.items() if v is not None or k not in UNSET_IS_DEFAULT}
    if options["devices"].isdigit():
        options["devices"] = int(options["devices"])
    config = TrainConfig(data=list(data), split=hf_split, progress=not as_json, **options)
    try:
        prepare_process()
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
                   f"at step {results['best_step']}; {results['steps']} steps "
                   f"({results['epochs']:.2f} epochs), "
                   f"{results['train_chars_per_s']:,.0f} train chars/s; "
                   f"checkpoints in {config.out}")
