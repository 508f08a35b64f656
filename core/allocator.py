"""glibc's malloc told to keep freed memory for the next image instead of handing it back to the OS.

Why: every network call allocates its activations afresh (tens to hundreds of KiB to a few MiB each). With glibc's
defaults, blocks above the mmap threshold (128 KiB at start, then the largest block freed so far) are mapped and
unmapped per call, and free memory at the top of the heap beyond twice that is trimmed back to the OS; either way
the next call touches new pages and pays a page fault per 4 KiB.
On a 2-core CPU that was a large share of the time: ``top`` showed the training's feature encoding at 100 % system
CPU, and one weak SuperSimpleNet training took 67 million page faults. With the two thresholds below the same
process keeps its freed blocks and reuses them (docs/results.md, "Memory allocator and the inference form":
latency and training time measured with and without).

The cost: the process keeps up to TRIM_THRESHOLD_BYTES of freed memory instead of returning it, and blocks below
32 MiB come from the heap, so its resident size stays near its high-water mark. The peak is set by the largest
working set, which is allocated either way: one weak training's peak RSS was 2.42 GB tuned against 2.20-2.30 GB.

Only glibc is tuned (Linux). Where the user set any of glibc's MALLOC_* variables or glibc tunables for malloc, or
preloads another allocator (jemalloc, tcmalloc, mimalloc), nothing is changed: they chose.
"""
from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Mapping

M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
M_MMAP_THRESHOLD = -3
# glibc's ceiling for the mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX): blocks up to this come from the heap
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024
# free memory at the heap's top that stays with the process; above it glibc trims as usual
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024

_OTHER_ALLOCATORS = ("jemalloc", "tcmalloc", "mimalloc")
_applied: dict[str, int] | None = None


def allocator_choice_left_to_user(environ: Mapping[str, str] = os.environ) -> str | None:
    """Why the allocator is left as it is (a short reason), or None when it may be tuned."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return "not glibc"
    chosen = sorted(name for name in environ if name.startswith("MALLOC_"))  # glibc's own malloc variables
    if chosen:
        return f"{chosen[0]} is set"
    if "glibc.malloc." in environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES sets malloc tunables"
    preload = environ.get("LD_PRELOAD", "")
    other = next((name for name in _OTHER_ALLOCATORS if name in preload), None)
    return f"{other} is preloaded" if other else None


def keep_freed_memory() -> dict[str, int] | None:
    """Sets glibc's mmap and trim thresholds for this process (once; later calls return the same). Returns the
    values set ({"mmap_threshold": bytes, "trim_threshold": bytes}) or None where the allocator is left alone."""
    global _applied
    if _applied is not None or allocator_choice_left_to_user() is not None:
        return _applied
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # mallopt returns 1 on success; the mmap threshold first, as setting it also fixes glibc's sliding threshold
    if mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) != 1:
        return None
    _applied = {"mmap_threshold": MMAP_THRESHOLD_BYTES, "trim_threshold": TRIM_THRESHOLD_BYTES}
    return _applied
