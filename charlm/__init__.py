"""charlm: train character-level RNN, LSTM and GRU language models, generate, compare the cells."""

__version__ = "0.1.0"

import os  # noqa: E402

# OpenMP threads that spin while waiting make every small matmul of a recurrent step ~30x slower
# as soon as another process wants the CPU (measured: 5.6 ms vs 0.16 ms per 16x256x1024 matmul
# on 2 busy cores). Sleeping waiters cost nothing visible on an idle machine. Must be set before
# torch loads its OpenMP runtime; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .model import CharRNN, ModelConfig, cell_names, register_cell  # noqa: E402
from . import cells  # noqa: E402,F401  (registers the explicit cells and gru-note)
from .vocab import CharVocab  # noqa: E402


def load(path):
    """Load a checkpoint (.ckpt) or an exported folder: ``(model, vocab, info)`` on the CPU."""
    from .checkpoint import load as _load
    return _load(path)


__all__ = ["CharRNN", "CharVocab", "ModelConfig", "cell_names", "load", "register_cell",
           "__version__"]
