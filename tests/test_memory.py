"""glibc's mmap threshold fixed for a training process (coachlm.memory), in a child process so
that this test process keeps its own malloc settings."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

CODE = "from coachlm.memory import fix_mmap_threshold; print(fix_mmap_threshold(1 << 16))"


def _run(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", CODE], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_sets_the_threshold_on_glibc():
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_MMAP_THRESHOLD_"}
    assert _run(env) == "True"


def test_leaves_a_users_own_setting_alone():
    assert _run({**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}) == "False"


TRIM = """
import gc
from coachlm.memory import release_free_memory
def anon_kb():
    return int([l for l in open('/proc/self/status') if l.startswith('RssAnon')][0].split()[1])
chunks = [bytes(1000) for _ in range(100_000)]  # ~100 MB of heap in small chunks
keep = chunks[::100]  # a few survivors pin the heap: free() alone cannot shrink it
del chunks
gc.collect()
before = anon_kb()
print(release_free_memory(), before - anon_kb())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_release_free_memory_returns_a_fragmented_heap():
    ok, released_kb = subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True,
                                     check=True).stdout.split()
    assert ok == "True" and int(released_kb) > 50_000
