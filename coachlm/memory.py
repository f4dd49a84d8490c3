"""glibc malloc settings that keep a CPU training process's resident memory near its working set.

PyTorch's CPU allocator is plain malloc. glibc serves requests above `M_MMAP_THRESHOLD` with
their own mmap and returns them to the system on free, but its threshold is dynamic: the first
time a large mmapped block is freed, the threshold rises to that block's size (up to 32 MiB on
64-bit), so from then on activations, logits and their gradients come from the heap, and the
freed heap is kept rather than returned (mallopt(3), "M_MMAP_THRESHOLD"). Measured on one SFT
step of world-small (batch 32, packed): RSS settled at ~570 MB with the default and at ~330 MB
with the threshold fixed at 64 KiB, peak after the forward ~565 vs ~460 MB (issue 15).
Setting the threshold explicitly also turns the dynamic adjustment off.

The price is a fresh, zero-filled mapping (page faults) for every large tensor: the same SFT
step took ~0.98 vs ~0.58 CPU seconds with a 1 MiB threshold (25 steps, two runs each, on a
loaded 2-core machine). So nothing calls this by default: it is for runs where memory, not
speed, is the limit (see benchmarks/memory_stages.py --mmap-threshold).

Not glibc (macOS, musl), or the user's own MALLOC_MMAP_THRESHOLD_ set: nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_MMAP_THRESHOLD = -3  # from glibc's malloc.h
DEFAULT_THRESHOLD = 1 << 20


def fix_mmap_threshold(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Serve every allocation of `threshold` bytes or more by mmap (returned to the system when
    freed); True when set. Call once, early, in a process that trains or samples on CPU."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))


def release_free_memory() -> bool:
    """Hand the heap's free pages back to the system (glibc `malloc_trim(0)`); True if any were.

    Cheap (one call, no per-step cost), so trainers call it when a stage ends: freed
    tokenization buffers, activations and optimizer temporaries otherwise stay resident into
    the next stage of the same process. Measured between pretrain (5 steps) and SFT of
    world-small in one process: RSS 871 -> 432 MB, and the SFT peak 880 -> 725 MB.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.malloc_trim(0))
    except (OSError, AttributeError):
        return False
