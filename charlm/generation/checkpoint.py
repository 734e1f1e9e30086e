"""Loading and exporting trained models, safely.

``load(path)`` accepts a training checkpoint (``.ckpt``) or an exported folder and returns a ready
CharRNN on the CPU, its vocabulary and what is known about it. Checkpoints are opened with
``torch.load(weights_only=True)``: they hold plain data only, so opening one can never run code.
An export is pickle-free: ``model.safetensors`` + ``config.json`` (config and vocab) + a model card,
written by huggingface_hub's ``PyTorchModelHubMixin`` (which also gives ``push_to_hub``).
"""

from __future__ import annotations

import contextlib
import io
import pickle
from pathlib import Path

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from charlm.data.vocab import CharVocab
from charlm.errors import CharlmError
from charlm.model import CharRNN, ModelConfig

CHECKPOINT_FORMAT = 1  # the newest checkpoint format this version reads


class ExportedModel(nn.Module, PyTorchModelHubMixin, library_name="charlm",
                    tags=["character-level", "language-model", "rnn"],
                    repo_url="https://github.com/charlm/charlm"):
    """A CharRNN with its vocabulary, as the Hub mixin saves and loads it."""

    def __init__(self, model: dict, vocab: list[str], info: dict | None = None):
        super().__init__()
        self.model = CharRNN(ModelConfig(**model))
        self.vocab = list(vocab)
        self.info = info or {}


def read_checkpoint(path: Path) -> dict:
    """A .ckpt file's contents as plain data (weights only: it can never run code), refused in one
    sentence where it is not a charlm checkpoint this version can read."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        why = [line.strip() for line in str(e).splitlines() if "Unsupported global" in line]
        raise CharlmError(f"{path} was refused: it holds something other than plain data, and "
                          f"opening a checkpoint must never run code"
                          f"{' (' + why[0][:160] + ')' if why else ''}") from None
    except Exception as e:  # torch.load fails in many ways on a file that is not a checkpoint
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise CharlmError(f"{path} is not a readable charlm checkpoint (truncated or another "
                          f"format): {first}") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise CharlmError(f"{path} is not a charlm checkpoint (no state_dict / hyper_parameters)")
    meta = ckpt.get("charlm") if isinstance(ckpt.get("charlm"), dict) else {}
    fmt = meta.get("format", 1)
    if not isinstance(fmt, int) or fmt > CHECKPOINT_FORMAT:
        raise CharlmError(f"{path} was written by a newer charlm "
                          f"({meta.get('version')}); upgrade charlm to read it")
    return ckpt


def _from_ckpt(path: Path) -> tuple[CharRNN, CharVocab, dict]:
    ckpt = read_checkpoint(path)
    hp = ckpt["hyper_parameters"]
    try:
        model = CharRNN(ModelConfig(**hp["model"]))
        state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items()
                 if k.startswith("model.")}
        model.load_state_dict(state)
        vocab = CharVocab(hp["vocab"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CharlmError(f"{path} does not hold a model this charlm can build: "
                          f"{str(e).splitlines()[0][:200]}") from None
    _check_vocab(path, model, vocab, hp["vocab"])
    _check_weights(path, model)
    info = {"path": str(path), "step": ckpt.get("global_step"), "data": hp.get("data"),
            "optim": hp.get("optim"), "charlm": {k: v for k, v in ckpt.get("charlm", {}).items()
                                                 if k in ("version", "torch", "elapsed_s")}}
    return model.eval(), vocab, info


def _check_weights(path: Path, model: CharRNN) -> None:
    """Refuse weights that are not numbers: damaged bytes, not a model that trained into NaN
    (training stops at a NaN loss and keeps best.ckpt from before it)."""
    bad = [name for name, p in model.named_parameters() if not torch.isfinite(p).all()]
    if bad:
        raise CharlmError(f"{path} is damaged: {bad[0]} holds values that are not finite numbers")


def _check_vocab(path: Path, model: CharRNN, vocab: CharVocab, saved: list) -> None:
    """The model's output rows and the vocabulary must be the same characters, in the same order."""
    if list(saved) != vocab.chars:
        raise CharlmError(f"{path} has a damaged vocabulary (not distinct characters in code-point "
                          f"order), so its ids cannot be trusted")
    if model.config.vocab_size != len(vocab):
        raise CharlmError(f"{path} is inconsistent: the model has {model.config.vocab_size} "
                          f"outputs but the vocabulary {len(vocab)} characters")


def _from_export(path: Path) -> tuple[CharRNN, CharVocab, dict]:
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise CharlmError(f"{path} is a directory but neither a charlm export (config.json and "
                          f"model.safetensors) nor a run folder (best.ckpt or last.ckpt)")
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the mixin prints where it loads from
            exported = ExportedModel.from_pretrained(str(path))
    except Exception as e:  # a broken export can fail in json, safetensors or the constructor
        raise CharlmError(
            f"{path} is not a readable charlm export: "
            f"{str(e).splitlines()[0][:200] if str(e) else type(e).__name__}") from None
    info = {"path": str(path), **exported.info}
    try:
        vocab = CharVocab(exported.vocab)
    except (TypeError, ValueError) as e:
        raise CharlmError(f"{path} is not a readable charlm export: {e}") from None
    _check_vocab(path, exported.model, vocab, exported.vocab)
    _check_weights(path, exported.model)
    return exported.model.eval(), vocab, info


def load(path: str | Path) -> tuple[CharRNN, CharVocab, dict]:
    """A checkpoint, export or run folder (its best.ckpt, else its last.ckpt) → (model on CPU in
    eval mode, vocab, info)."""
    path = Path(path)
    if not path.exists():
        raise CharlmError(f"no such checkpoint: {path}")
    if not path.is_dir():
        return _from_ckpt(path)
    if not (path / "config.json").exists():
        for name in ("best.ckpt", "last.ckpt"):
            if (path / name).is_file():
                return _from_ckpt(path / name)
    return _from_export(path)


def export(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir`` with model.safetensors, config.json and a model card."""
    model, vocab, info = load(checkpoint)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").exists():
        raise CharlmError(f"{out} exists and is not an export; choose an empty or new folder")
    exported = ExportedModel(model.config.to_dict(), vocab.chars,
                             info={k: info.get(k) for k in ("step", "data")})
    exported.model.load_state_dict(model.state_dict())
    exported.save_pretrained(str(out))
    return out
