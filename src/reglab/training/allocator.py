"""Keep freed memory in the process on CPUs, so a step's activations do not page-fault anew.

A training step on a CPU allocates and frees the same large tensors every step (at airbench94's
batch of 2000, activations of 100-500 MB each). glibc's malloc serves blocks that large with
``mmap`` and returns them to the kernel on ``free``, so the next step's tensors are fresh pages:
every 4 KiB page faults and is zeroed by the kernel before the kernel's first write. Measured on
a 2-core EPYC (bench/page_faults.py, bench/results/page_faults_cpu_2026-12-01.txt): 1.44 million
page faults and 10.5 s of system CPU time per step of 2000 images, 17.6 s a step against 10.4 s
with freed memory kept (at 500 images: 3.44 s against 2.79 s).

:func:`keep_freed_memory` tells glibc (``mallopt``) to serve large blocks from its heap instead
of ``mmap`` and not to give freed heap back to the kernel, the effect PyTorch's CPU performance
guide gets by preloading jemalloc or tcmalloc, without a library to install. The process's
resident memory then stays at its peak instead of falling between steps.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# mallopt's parameter numbers (glibc's malloc.h)
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None
    return libc


_applied: str | None = None


def keep_freed_memory() -> str:
    """Make glibc's malloc keep freed memory (idempotent); what now holds, in words."""
    global _applied
    if _applied is not None:
        return _applied
    libc = _glibc()
    if libc is None:
        return "system (not glibc: unchanged)"
    # mallopt takes an int: the largest trim threshold it accepts is INT_MAX (2 GiB). Blocks are
    # trimmed only when the heap's free top exceeds it, which a step's tensors rarely do.
    ok = libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _applied = "keep (glibc mallopt: no mmap, no trim)" if ok else "system (mallopt refused)"
    return _applied


def malloc_mode(requested: str, device_type: str) -> str:
    """Apply ``--malloc`` for a run on ``device_type``; what holds, in words, for the header."""
    if requested == "keep" and device_type == "cpu":
        return keep_freed_memory()
    if _applied is not None:  # an earlier run in this process kept memory: it still holds
        return _applied
    return "system"
