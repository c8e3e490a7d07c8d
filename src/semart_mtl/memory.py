"""Memory of a run: peak figures for every history row, and how CPU tensors are allocated."""

from __future__ import annotations

import ctypes
import platform
import resource
import sys

import torch

# mallopt(3) parameter numbers, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def peak_memory_mb(device: torch.device | str) -> float:
    """Peak CUDA memory allocated on a GPU; the process's peak resident set size on a CPU.

    NOTE: both are peaks since the process started (the CUDA one since the last reset), so in a
    notebook kernel that trained before they include the earlier work.
    """
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # ru_maxrss is in kilobytes on Linux and in bytes on macOS.
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def keep_freed_memory() -> bool:
    """Let glibc keep the memory of freed CPU tensors for the next step; False where it can't.

    glibc maps every allocation above 32 MiB (an EfficientNet-B0 activation at batch 32 is up
    to 150 MB) straight from the kernel and unmaps it on free, so each training step faults its
    activations in again, page by page, zeroed: on 2 cores the frozen half of EfficientNet-B0
    spent more time in those page faults than in its own arithmetic. With mmap and trimming
    off, large blocks come from the heap and stay there for reuse.

    NOTE: the process then never returns memory to the system; its size stays at its peak
    until it ends (a notebook kernel too), which is the size a training step needs anyway.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    # mallopt returns 1 on success.
    return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, -1))
