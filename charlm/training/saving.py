"""Lightning checkpoints and run files written whole or not at all (``charlm.atomic``'s recipe)."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L

from charlm.atomic import commit_file, temporary_for


def atomic_save(trainer: L.Trainer, path: Path) -> None:
    """trainer.save_checkpoint to a temporary file, then commit it: whole or not at all.

    A stale .tmp left by a killed run is simply overwritten; a full disk is one clear error.
    """
    with temporary_for(path) as tmp:
        trainer.save_checkpoint(tmp, weights_only=False)
    if trainer.is_global_zero:
        commit_file(tmp, path)
    trainer.strategy.barrier()


def atomic_copy(src: Path, dst: Path) -> None:
    """Copy ``src`` onto ``dst`` whole or not at all."""
    with temporary_for(dst) as tmp:
        shutil.copyfile(src, tmp)
    commit_file(tmp, dst)
