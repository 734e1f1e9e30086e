"""Keep the memory a CPU training step frees for the next step, instead of faulting it back in.

Every training step allocates the same large buffers (activations, the recurrent kernel's gate
workspace, gradients) and frees them when it ends. glibc's malloc serves a block above its mmap
threshold (128 KiB, adapting up to 32 MiB) with a fresh mapping that it unmaps on free, and hands
free memory at the top of its heap back to the system above its trim threshold. Either way the
next step touches the memory anew and the kernel faults it in again, one 4 KiB page at a time:
about 20,000 page faults a step for an LSTM 2x128 at batch 64 x 128 (`benchmarks/allocator.py`).

Raising both thresholds keeps freed memory in the process, where the next step reuses it. The
process then holds on to the largest step's memory until it exits; training reaches that peak
every step anyway. This is what jemalloc or tcmalloc, which PyTorch's CPU performance guides
recommend, would do, without preloading a second allocator. ``CHARLM_MALLOC=system`` leaves
malloc as it is.
"""

from __future__ import annotations

import ctypes
import os
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers in <malloc.h>
KEEP = 2**31 - 1  # bytes: blocks up to 2 GiB come from the heap, which is never trimmed


def glibc() -> ctypes.CDLL | None:
    """The C library, where it is glibc (whose mallopt these settings are for); else None."""
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; None or an error elsewhere
    except (AttributeError, ValueError, OSError):
        return None
    if sys.platform != "linux" or not (version or "").startswith("glibc"):
        return None
    return ctypes.CDLL(None)


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed memory for reuse; True where it now does.

    Process-wide and lasting, like ``torch.set_num_threads``; a no-op (False) on other C
    libraries and where ``CHARLM_MALLOC=system``.
    """
    libc = glibc()
    if libc is None or os.environ.get("CHARLM_MALLOC", "").lower() == "system":
        return False
    # mallopt returns 1 on success; both must take, or a step still faults its memory back in
    return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP))
