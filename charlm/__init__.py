"""charlm: train character-level RNN, LSTM and GRU language models, generate, compare the cells."""

__version__ = "0.1.0"

from .model import CharRNN, ModelConfig, cell_names, register_cell  # noqa: E402
from . import cells  # noqa: E402,F401  (registers the explicit cells and gru-note)
from . import transformer  # noqa: E402,F401  (registers the transformer reference)
from .vocab import CharVocab  # noqa: E402


def load(path):
    """Load a checkpoint (.ckpt) or an exported folder: ``(model, vocab, info)`` on the CPU."""
    from .checkpoint import load as _load
    return _load(path)


__all__ = ["CharRNN", "CharVocab", "ModelConfig", "cell_names", "load", "register_cell",
           "__version__"]
