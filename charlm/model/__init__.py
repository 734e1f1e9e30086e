"""The model layer: the cell registry, the note's cells, the transformer reference, ``CharRNN``.

Owns what a checkpoint's weights mean: each cell's equations (``cells``, with a one-step API that
sampling and unit inspection drive), the registry every cell registers into (``registry``), and
the character model around a cell (``charrnn``). Imports torch and charlm's base only: no data,
no Lightning, no click. Importing the package registers every built-in cell.
"""

from charlm.model import cells, transformer  # noqa: F401  (register the explicit cells, the transformer)
from charlm.model.charrnn import (
                                   CharRNN,
                                   ModelConfig,
                                   State,
                                   build_cell,
                                   detach_state,
                                   hidden_size_for_params,
                                   map_state,
                                   restart_rows,
                                   state_hidden,
)
from charlm.model.registry import (
    Cell,
    UnknownCell,
    cell,
    cell_names,
    is_recurrent,
    register_cell,
    unregister_cell,
)

__all__ = ["Cell", "CharRNN", "ModelConfig", "State", "UnknownCell", "build_cell", "cell",
           "cell_names", "detach_state", "hidden_size_for_params", "is_recurrent", "map_state",
           "register_cell", "restart_rows", "state_hidden", "unregister_cell"]
