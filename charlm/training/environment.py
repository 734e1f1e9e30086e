"""The process-wide settings a training process wants, applied by its entry point.

``charlm train``, a ``charlm compare`` run's worker and the benchmarks call ``prepare_process``
once; ``fit`` itself changes nothing outside its run, so a script that imports charlm keeps its
own malloc, logging and warning settings unless it asks for these.
"""

from __future__ import annotations

import logging
import warnings

from charlm.training.allocator import keep_freed_memory

# Lightning's warnings about what charlm does on purpose: its batches are an IterableDataset
# with a length (one process reads it, so the length is exact); a run folder holds run.lock and,
# on --resume, the earlier run, whose metrics.csv is merged rather than lost.
EXPECTED_WARNINGS = (".*IterableDataset.*__len__.*", ".*LeafSpec.*",
                     ".*Experiment logs directory.*not empty.*")


def prepare_process() -> bool:
    """Keep freed memory for the next step (``charlm.training.allocator``), quiet Lightning's
    tips and banners and the warnings above; True where malloc now keeps freed memory."""
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    for message in EXPECTED_WARNINGS:
        warnings.filterwarnings("ignore", message=message)
    return keep_freed_memory()
