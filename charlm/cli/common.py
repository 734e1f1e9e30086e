"""What every command shares: the one-sentence error wrapper, option groups, JSON output."""

from __future__ import annotations

import errno
import functools
import json
import re
import sys

import click

from charlm.errors import CharlmError

# The library names a setting by its field; the flag is "--" + the field with dashes, but for these
FLAGS = {"text_file": "--text", "vocab_size": "the vocabulary size"}


def flag(setting: str) -> str:
    """The command-line name of the setting the library calls ``setting``."""
    return FLAGS.get(setting, "--" + setting.replace("_", "-"))


def user_errors(fn):
    """Turn a user's mistake into one clear sentence and exit code 1, never a traceback."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except CharlmError as e:
            raise click.ClickException(e.render(flag)) from None
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
    if e.errno in (errno.EEXIST, errno.ENOTDIR) and e.filename:
        # making a folder where a file is: "file exists" would not say which of them is wrong
        return f"{e.filename} (or a folder above it) is a file where a folder is needed"
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
        click.option("--streaming", is_flag=True,
                     help="Stream an hf: dataset instead of downloading it whole."),
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


model_options = options(  # train and compare (each has its own --num-layers)
    click.option("--embedding-dim", default=64, show_default=True),
    click.option("--dropout", default=0.0, show_default=True,
                 help="Dropout between stacked layers and before the output layer."),
    click.option("--weight-drop", default=0.0, show_default=True,
                 help="DropConnect on the recurrent (hidden-to-hidden) weights while training."),
    click.option("--init", default=None, type=click.Choice(["default", "orthogonal", "fan-in"]),
                 help="default: torch's U(±1/√hidden) for every weight; orthogonal: an "
                      "orthogonal block per gate for the recurrent weights; fan-in: input "
                      "weights at U(±1/√inputs) [default: default for train, fan-in for "
                      "compare]."),
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
                 help="Peak learning rate (AdamW) [default: 6e-3]."),
    click.option("--weight-decay", type=float, default=None,
                 help="AdamW's decoupled decay on the weight matrices "
                      "[default: 0.1 for train, 0 for compare]."),
    click.option("--warmup-steps", type=int, default=None,
                 help="Steps of linear learning-rate warm-up [default: 0 for train; for compare "
                      "a twentieth of --max-steps, at most 60, where LSTM and GRU go without; "
                      "given, it is every cell's]."),
    click.option("--grad-clip", default=5.0, show_default=True),
    click.option("--schedule", default="cosine", show_default=True,
                 type=click.Choice(["cosine", "linear", "constant"]),
                 help="How the learning rate falls from --lr to zero over the budget "
                      "(constant: it stays)."),
    click.option("--max-steps", type=int, default=None),
    click.option("--max-time", type=float, default=None, help="Wall-clock budget in minutes."),
    click.option("--val-fraction", default=0.1, show_default=True),
    click.option("--test-fraction", default=0.0, show_default=True),
    click.option("--window", default="stream", show_default=True,
                 type=click.Choice(["stream", "shifted", "random", "mixed"]),
                 help="How training reads the text: contiguous streams with the state carried "
                      "(stream); the same, each epoch's cut moved by a random offset (shifted); "
                      "nanoGPT's random windows from a zero state (random); random windows for "
                      "the first two thirds of the budget, then streams (mixed)."),
    click.option("--accelerator", default="auto", show_default=True),
)


# left out when not given: TrainConfig's default
UNSET_IS_DEFAULT = ("lr", "weight_decay", "warmup_steps", "init")


def given_here(name: str) -> bool:
    """Whether the option ``name`` of the running command was given (not left at its default)."""
    source = click.get_current_context().get_parameter_source(name)
    return source not in (None, click.core.ParameterSource.DEFAULT)


def emit_json(obj: dict) -> None:
    click.echo(json.dumps(obj))
