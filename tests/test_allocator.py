"""core.allocator: glibc keeps freed memory, so repeated large allocations stop page-faulting; users' choices win."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import textwrap

import pytest

from core.allocator import allocator_choice_left_to_user

GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# A child interpreter makes 100 "calls" that each hold sixteen 1 MiB arrays at once and then free them all, as a
# network call does its activations, and prints the minor page faults the calls took; with "tuned" it first calls
# keep_freed_memory (and prints what it set). With glibc's defaults the freed top of the heap (16 MiB, above the
# sliding trim threshold of twice the largest block) goes back to the OS after every call.
_CHILD = textwrap.dedent("""
    import resource, sys
    import numpy as np
    from core.allocator import keep_freed_memory
    if sys.argv[1] == "tuned":
        print(keep_freed_memory())
        assert keep_freed_memory() is keep_freed_memory(), "a second call must not change anything"
    def call():
        held = [np.ones(1 << 18, dtype=np.float32) for _ in range(16)]
        return len(held)
    for _ in range(5):
        call()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(100):
        call()
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
""")


def _page_faults(mode: str, **extra_env: str) -> tuple[list[str], int]:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MALLOC_") and key not in ("GLIBC_TUNABLES", "LD_PRELOAD")}
    env.update(extra_env)
    run = subprocess.run([sys.executable, "-c", _CHILD, mode], capture_output=True, text=True, env=env, timeout=120,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode == 0, run.stderr
    lines = run.stdout.split()
    return lines[:-1], int(lines[-1])


@pytest.mark.skipif(not GLIBC, reason="core.allocator tunes glibc's malloc only; this system's C library is not glibc")
def test_tuned_process_reuses_freed_memory_instead_of_faulting_it_in_again():
    _, plain = _page_faults("plain")
    printed, tuned = _page_faults("tuned")
    assert "33554432" in " ".join(printed) and "1073741824" in " ".join(printed)
    # 100 calls x 16 MiB: about 4096 faults per call when the memory is handed back each time, ~0 when it is kept
    assert plain > 100 * 1000
    assert tuned < plain / 20


@pytest.mark.skipif(not GLIBC, reason="core.allocator tunes glibc's malloc only; this system's C library is not glibc")
def test_user_malloc_setting_is_left_alone():
    printed, _ = _page_faults("tuned", MALLOC_TRIM_THRESHOLD_="131072")
    assert printed == ["None"]


def test_reasons_to_leave_the_allocator_alone():
    if not GLIBC:
        assert allocator_choice_left_to_user({}) == "not glibc"
        return
    assert allocator_choice_left_to_user({}) is None
    assert allocator_choice_left_to_user({"MALLOC_MMAP_THRESHOLD_": "65536"}) == "MALLOC_MMAP_THRESHOLD_ is set"
    assert allocator_choice_left_to_user({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}) is not None
    assert allocator_choice_left_to_user({"GLIBC_TUNABLES": "glibc.rtld.nns=4"}) is None
    assert allocator_choice_left_to_user({"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) == "jemalloc is preloaded"
