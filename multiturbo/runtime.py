"""Process-wide settings of a run: the random seeds and the device."""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch

from .errors import MultiturboError


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (every device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), cpu, cuda or cuda:N; a clear error for a
    bad name or a CUDA device this machine does not have."""
    if str(name) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise MultiturboError(f"train.device: {name!r} is not a device name. Use auto, cpu, cuda or cuda:N.") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MultiturboError(f"train.device: {name!r} asked for, but no CUDA device is available here. Use train.device=auto or cpu.")
    return device


def process_seconds() -> float | None:
    """Seconds since this process started (Linux: /proc), or None where that is unknown: what a run
    spent before its first line of work (the interpreter, imports, config loading)."""
    try:
        with open("/proc/self/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - start_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


def peak_memory(device: torch.device | str) -> dict[str, float]:
    """Peak memory in MiB: ``cpu_rss_mb``, the process's largest resident set so far
    (``resource.getrusage``; it never goes down), and on CUDA ``cuda_mb``, the allocator's peak since
    the last call (which resets it), so that each epoch reports its own."""
    out: dict[str, float] = {}
    try:
        import resource  # POSIX only

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        out["cpu_rss_mb"] = round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)
    except (ImportError, OSError):
        pass
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        out["cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        torch.cuda.reset_peak_memory_stats(device)
    return out
