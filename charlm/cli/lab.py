"""The workbench commands: ``compare`` (cells side by side), ``visualize`` and ``inspect``
(a look inside a trained model). Thin click wrappers, like the rest of the CLI."""

from __future__ import annotations

import click

from charlm.cli.common import (
    data_options,
    emit_json,
    model_options,
    optim_options,
    options,
    user_errors,
)


@click.command()
@click.argument("checkpoints", nargs=-1)
@data_options
@click.option("--cells", default=None,
              help="Comma-separated cells to train; add transformer for a nanoGPT-style "
                   "reference [default: rnn,lstm,gru; none when CHECKPOINTS are given].")
@click.option("--params", default=None, metavar="N[,N...]",
              help="Solve each cell's hidden size for this many parameters, like 250000 or "
                   "250k; a list (100k,250k,1M) trains a grid of sizes [default: 500k].")
@click.option("--hidden-size", type=int, default=None,
              help="The same hidden size for every cell instead.")
@click.option("--num-layers", default="1", show_default=True, metavar="N[,N...]",
              help="Layers (blocks for the transformer); a list (1,2,3) trains a grid of depths.")
@model_options
@optim_options
@click.option("--batch-size", type=int, default=None,
              help="Parallel streams per process, the same for every cell (fixed on purpose, not "
                   "chosen per machine as train does, so runs compare) [default: 32].")
@click.option("--precision", default="32-true", show_default=True,
              help="Lightning's precision for every run; float32 on purpose, as it keeps the "
                   "gradient-flow figures exact (auto: chosen for this machine, as train).")
@click.option("--recipe", "recipes", multiple=True, metavar="CELL:SETTING=VALUE",
              help="One cell's own optimiser setting (lr, warmup-steps, weight-decay, "
                   "grad-clip) in place of the shared one, e.g. lstm:lr=1.2e-2 (repeatable). "
                   "The data, batches, budget and sizes stay the same for every cell.")
@click.option("--seeds", default=2, show_default=True,
              help="Runs per cell, seeds SEED, SEED+1, ...")
@click.option("--seed", default=1337, show_default=True, help="The first seed.")
@click.option("--eval-every", type=int, default=None,
              help="Validate every N steps [default: a tenth of --max-steps; 100 under a time "
                   "budget].")
@click.option("--probe-k", default=64, show_default=True,
              help="Gradient flow: how many steps back to measure.")
@click.option("--probe-windows", default=64, show_default=True,
              help="Gradient flow: windows of the val split averaged.")
@click.option("--prompt", default="",
              help="Prompt of every cell's sample (default: the start of a line).")
@click.option("--out", default="checkpoints/compare", show_default=True, help="Comparison folder.")
@click.option("--resume", is_flag=True, help="Continue unfinished runs from their last.ckpt.")
@click.option("--in-process", is_flag=True,
              help="Train in this process (starts faster; peak memory is then not measured).")
@click.option("--jobs", type=click.IntRange(min=1), default=None,
              help="Runs trained at once, each in its own process [default: one per CPU core "
                   "on a CPU, the cores shared out between them; one on a GPU].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object as the last line.")
@user_errors
def compare(checkpoints, data, hf_split, cells, params, num_layers, hidden_size, recipes, seeds,
            out, resume, in_process, jobs, probe_k, probe_windows, prompt, as_json, eval_every,
            **options):
    """Compare cells fairly (same data, batches, budget) against an n-gram baseline; or CHECKPOINTS.

    Each run trains for --max-steps or --max-time (default: 1200 steps; the default 3 cells x
    2 seeds take about half an hour on 2 CPU cores). Every cell starts its input weights at
    their fan-in (--init); the LSTM and GRU skip the learning-rate warm-up that the plain RNN
    needs (--warmup-steps gives every cell the same one). Writes OUT/report.md, results.json
    and the figures, and one folder per run under OUT/runs; a rerun with the same --out reuses
    the finished runs.
    """
    from charlm.lab.compare import run_compare
    from charlm.lab.compare_config import (
        DEFAULT_BATCH,
        DEFAULT_INIT,
        DEFAULT_LR,
        DEFAULT_STEPS,
        CompareConfig,
        default_eval_every,
        default_recipes,
        default_warmup,
        parse_count,
        parse_layers,
        parse_recipes,
    )
    from charlm.lab.compare_report import json_line, summary_table
    from charlm.lab.compare_runs import MeasureSettings
    from charlm.process import sigterm_as_ctrl_c
    from charlm.training.environment import prepare_process
    from charlm.training.fit import TrainConfig
    names = [c.strip() for c in cells.split(",") if c.strip()] if cells is not None else \
        ([] if checkpoints else ["rnn", "lstm", "gru"])
    # compare's own defaults: the same for every cell (no weight decay, a fixed batch)
    options["lr"] = DEFAULT_LR if options["lr"] is None else options["lr"]
    options["weight_decay"] = 0.0 if options["weight_decay"] is None else options["weight_decay"]
    if options["batch_size"] is None:
        options["batch_size"] = DEFAULT_BATCH
    if options["max_steps"] is None and options["max_time"] is None:
        options["max_steps"] = DEFAULT_STEPS
    recipes = parse_recipes(list(recipes))
    if options["warmup_steps"] is None:  # the plain RNN's warm-up; the gated cells go without
        options["warmup_steps"] = default_warmup(options["max_steps"])
        recipes = default_recipes(names, recipes, options["warmup_steps"])
    options["init"] = options["init"] or DEFAULT_INIT
    if eval_every is None:
        eval_every = default_eval_every(options["max_steps"])
    depths = parse_layers(num_layers)
    train = TrainConfig(data=list(data), split=hf_split, eval_every=eval_every, devices=1,
                        num_layers=depths[0], progress=False, restart_every=0, **options)
    sizes = None if params is None else [parse_count(p) for p in params.split(",") if p.strip()]
    config = CompareConfig(train=train, cells=names, checkpoints=list(checkpoints),
                           params=sizes, layers=depths, hidden_size=hidden_size, seeds=seeds,
                           recipes=recipes,
                           out=out, resume=resume, isolate=not in_process, jobs=jobs,
                           measure=MeasureSettings(probe_k=probe_k, probe_windows=probe_windows,
                                                   prompt=prompt))
    prepare_process()  # for the runs it trains in this process (--in-process)
    with sigterm_as_ctrl_c():  # a `kill` stops the runs' processes too, as Ctrl-C does
        results = run_compare(config)
    click.echo(summary_table(results))
    click.echo(f"\nreport: {out}/report.md")
    if as_json:
        emit_json(json_line(results))


def _unit_list(ctx, param, value):
    """--units 3,17,42 → [3, 17, 42]."""
    if not value:
        return []
    try:
        return [int(u) for u in value.split(",") if u.strip()]
    except ValueError:
        raise click.BadParameter(f"expected unit numbers separated by commas, like 3,17; "
                                 f"got {value!r}") from None


def inspect_options(fn):
    """What visualize and inspect share: the text to read, how much of it, which layer."""
    return options(
        click.argument("checkpoint"),
        click.option("--text", "text_file", metavar="FILE", help="A text file to read."),
        data_options(split_flag="--hf-split"),
        click.option("--chars", default=2000, show_default=True,
                     help="Characters of the text to read (from its start)."),
        click.option("--layer", type=int, default=None,
                     help="Only this layer (0 is the first) [default: every layer; the page "
                          "shows --units of the top layer]."),
        click.option("--top", default=3, show_default=True, help="Best units listed per feature."),
    )(fn)


def _echo_inspection(insp) -> None:
    from charlm.lab.units import gates_table, units_table
    for note in insp.notes:
        click.echo(f"note: {note}")
    click.echo(f"\nunits that track features of the text ({len(insp.acts.text):,} characters, "
               f"Pearson r):\n{units_table(insp.matches, insp.absent)}")
    if insp.stats:
        click.echo(f"\ngate saturation (fraction of characters, mean over units):\n"
                   f"{gates_table(insp.stats)}")


@click.command()
@inspect_options
@click.option("--units", callback=_unit_list, metavar="3,17,...",
              help="Units of --layer to show first [default: the finder's best units].")
@click.option("--out", required=True, metavar="PAGE.html", help="The page to write.")
@user_errors
def visualize(checkpoint, text_file, data, hf_split, chars, layer, top, units, out, **read_options):
    """Write PAGE.html: the text coloured by chosen units, with next-character predictions.

    A self-contained page (no network): every character's background is a unit's activation after
    reading it (LSTM: tanh(c) and h; GRU, RNN: h), -1 red to +1 blue; hovering a character shows
    the model's top-5 next characters. The page opens on the units that best track simple
    features of the text (inside quotes, position in line, bracket depth, indentation, inside a
    word, after a newline) and holds the gate-saturation table, also printed here and plotted to
    PAGE_gates.png. Characters outside the model's vocabulary are skipped, with a note.
    """
    from charlm.lab.visualize import visualize as visualize_
    insp, page, png = visualize_(checkpoint, out, units=units, layer=layer, text_file=text_file,
                                 data=list(data), chars=chars, top=top, split=hf_split,
                                 **read_options)
    _echo_inspection(insp)
    click.echo(f"\nwrote {page}" + (f" and {png}" if png else ""))


@click.command("inspect")
@inspect_options
@click.option("--json", "as_json", is_flag=True,
              help="Print one JSON object (per-unit saturation included) as the last line.")
@user_errors
def inspect_(checkpoint, text_file, data, hf_split, chars, layer, top, as_json, **read_options):
    """Print the units that track features of the text, and the gates' saturation.

    For each feature (inside quotes, position in line, bracket depth, indentation, inside a word,
    after a newline) the --top units whose activation (LSTM: tanh(c) or h; GRU, RNN: h)
    correlates best with it (Pearson r, signed); then, per layer and sigmoid gate, the fraction of
    characters at which the gate is below 0.1 and above 0.9, as in Karpathy, Johnson & Fei-Fei
    2015. `charlm visualize` shows the same on a page.
    """
    from charlm.lab.inspection import inspect_checkpoint
    insp = inspect_checkpoint(checkpoint, text_file=text_file, data=list(data), chars=chars,
                              layer=layer, top=top, split=hf_split, **read_options)
    if as_json:
        emit_json(insp.to_json())
    else:
        _echo_inspection(insp)
