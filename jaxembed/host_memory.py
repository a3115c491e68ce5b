"""Keep freed host memory in the process, so XLA:CPU's per-step buffers are not page-faulted
in afresh every step.

XLA:CPU allocates each execution's temporaries (1.6 GB for the benchmark's train step) with
`posix_memalign` from its worker threads. glibc serves a request that large from a fresh
`mmap` (a thread's arena cannot grow that far, so it maps even with mmap disabled) and
unmaps it on free, so every step the kernel zero-fills ~400k pages again: measured 2.3 s of
system time per 7 s step on 2 cores, ~15% of the step (benchmarks/RESULTS.md). PyTorch's
smaller per-op buffers stay in glibc's heap and reuse it.

`retain_freed_memory()` sets three glibc malloc options: one arena (so XLA's worker
threads allocate from the main heap), no mmap for large blocks, and no trimming of the
heap's top. Freed blocks are then reused by the next step, and the process keeps its peak
heap size, which is what a training or encoding process wants (GPU frameworks' caching
allocators do the same). The `jaxembed` command calls it before JAX starts;
`JAXEMBED_HOST_MALLOC=system` leaves glibc's defaults.
"""

from __future__ import annotations

import ctypes
import os
import sys

OPT_OUT_ENV = "JAXEMBED_HOST_MALLOC"
# glibc's <malloc.h> parameter numbers.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8


def retain_freed_memory() -> bool:
    """Apply the malloc options if this is a glibc process and not opted out; True if applied.

    Call it before JAX creates its thread pools (arenas already handed to threads stay)."""
    if os.environ.get(OPT_OUT_ENV, "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018  (only glibc has it; musl's mallopt differs)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, -1))  # -1: never trim
    return all(mallopt(param, value) == 1 for param, value in settings)
