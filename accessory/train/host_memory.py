"""Keep freed host memory in the process for the next training step.

glibc hands every freed block above its mmap threshold (at most 32 MB by default) back to the OS
and page-faults a fresh one in at the next allocation of that size. A training step frees and
re-allocates the same large buffers every step (logits chunks, gradients, activations), so on
CPU the kernel spends a tenth of the step zeroing pages (measured in bench/train_throughput.py).
Raising the mmap and trim thresholds keeps those blocks for reuse: the process's RSS stays at its
high-water mark instead of going up and down every step. The price is a heap that never shrinks,
which buffers of ever-changing sizes fragment (FSDP's): the caller decides where it pays.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's <malloc.h>
MMAP_THRESHOLD = 1 << 30  # only blocks of a GiB and more are mapped (and unmapped) on their own
TRIM_THRESHOLD = (1 << 31) - 1  # never give the top of the heap back while training


def keep_freed_host_memory() -> bool:
    """True when the allocator now keeps freed blocks; False where it isn't glibc's (macOS, musl)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
