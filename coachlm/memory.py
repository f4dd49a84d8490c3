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

What holds the demo SFT's ~2.6 GB is mostly not tensors but oneDNN (issue 15; world-small,
batch 32, 900 steps, bf16 on an AMX CPU, one thread, glibc mallinfo2 every 25 steps). Every
bf16 matmul shape gets its own oneDNN primitive (~13 per batch shape, forward and backward,
~0.6 MB each), kept in oneDNN's primitive cache (1,024 entries, ONEDNN_PRIMITIVE_CACHE_CAPACITY).
Tightly packed SFT batches take 141 (rows, width) shapes in 900 steps, so the cache fills by step ~200
(malloc in-use 163 -> 792 MB, then flat) and churns from then on; its small blocks, between
each step's freed activations, keep the heap from shrinking: its free part grew 380 -> 1,360 MB
and malloc_trim returns little of it. Peak RSS 2,622 MB. A smaller cache is no cure: capacity 256
with widths rounded to 32 held 399 vs 520 MB in use but 1,217 vs 912 MB free, peak 2,042 vs
1,902 MB. Fewer shapes are: under bf16 on a CPU SFT packs into widths that are multiples of 64
(`SFTConfig.pack_width_multiple`; which multiple, by estimated cost: `collate.pack_geometry`)
and the LM head's span started at a multiple of 16 (now its rows are the labelled positions
rounded up to a multiple of 32, `trainers.lm_loss`), so 900 steps took 10 batch shapes and 13
head shapes instead of 141 and 143; peak RSS of the SFT stage 2,676 -> 857 MB, 0.247 -> 0.221 CPU s per step, 13.3% -> 6.6%
of positions padded (same settings, one run each on the loaded machine; README has 16 and 32),
losses equal up to floating point (padding is inert, tested).
The model, its gradients and AdamW's moments hold ~32 MB.

The other way round, for speed, `keep_freed_memory` (every training run, `Engine.prepare`) keeps
a step's freed memory for the next step instead of returning it and faulting it in again.

Not glibc (macOS, musl), or the user's own MALLOC_MMAP_THRESHOLD_ set: nothing is changed.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # from glibc's malloc.h
DEFAULT_THRESHOLD = 1 << 20
_fixed = False  # fix_mmap_threshold was called: keep_freed_memory leaves its choice alone


def _mallopt(*settings: str):
    """glibc's mallopt, or None (another C library, or the user's own MALLOC_<setting>_)."""
    if any(f"MALLOC_{k}_" in os.environ for k in settings):
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def fix_mmap_threshold(threshold: int = DEFAULT_THRESHOLD) -> bool:
    """Serve every allocation of `threshold` bytes or more by mmap (returned to the system when
    freed); True when set. Call once, early, in a process that trains or samples on CPU."""
    global _fixed
    mallopt = _mallopt("MMAP_THRESHOLD")
    if mallopt is None:
        return False
    _fixed = True
    return bool(mallopt(M_MMAP_THRESHOLD, int(threshold)))


def keep_freed_memory() -> bool:
    """Keep the memory a training step frees for the next step; True when set.

    A step allocates its activations and gradients afresh and frees them at its end (the
    gradients are dropped, not zeroed: zeroing is one more pass over them). With glibc's dynamic
    thresholds the heap's free top past twice the largest freed block goes back to the system,
    so the next step takes a page fault (the kernel zeroing 4 KiB) for each of those pages
    again. Measured at world-25m (SFT, batch 8, bf16, one thread): ~8,000 faults and ~20 ms of
    system CPU per ~370 ms step, ~1 ms with this; peak RSS within ~1%. Blocks up to 32 MiB
    (glibc's upper bound for the mmap threshold) come from the heap, and up to 1 GiB of its
    free top is kept (`release_free_memory` still returns it when a stage ends)."""
    mallopt = _mallopt("MMAP_THRESHOLD", "TRIM_THRESHOLD")
    if mallopt is None or _fixed:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, 32 << 20)) and bool(mallopt(M_TRIM_THRESHOLD, 1 << 30))


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
