"""charlm: train character-level RNN, LSTM and GRU language models, generate, compare the cells.

The package is layered, each layer importing only those below it (``tests/test_layers.py``
checks): the base (``errors``, ``atomic``, ``process``, ``version``), then ``model``, ``data``,
``generation``, ``training``, ``lab`` and ``serve``, and ``cli`` on top. What is exported here is
the public API a script or a plug-in uses.
"""

from charlm.data.vocab import CharVocab
from charlm.model import CharRNN, ModelConfig, cell_names, register_cell
from charlm.version import __version__


def load(path):
    """Load a checkpoint (.ckpt) or an exported folder: ``(model, vocab, info)`` on the CPU."""
    from charlm.generation.checkpoint import load as load_checkpoint
    return load_checkpoint(path)


__all__ = ["CharRNN", "CharVocab", "ModelConfig", "cell_names", "load", "register_cell",
           "__version__"]
