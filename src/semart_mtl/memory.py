"""Peak memory of a run, as recorded in every history row."""

from __future__ import annotations

import resource
import sys

import torch


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
