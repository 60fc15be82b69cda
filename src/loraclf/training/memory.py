"""Peak memory of one run: peak RSS on CPU, ``torch.cuda.max_memory_allocated`` on GPU.

RSS is the process high-water mark. On Linux it is reset at the start of a run (``/proc/self/clear_refs``),
so several runs in one process (a sweep with ``--in-process``, a search) each get their own peak,
although memory the allocator kept from an earlier run still counts. Where the reset is not possible
the figure is the process's peak since it started, and ``peak_memory_source`` says so.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

import torch


def _vm_hwm_kb() -> Optional[int]:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _max_rss_mb() -> Optional[float]:
    """Peak RSS of this process in MB: VmHWM on Linux, getrusage elsewhere (not on Windows)."""
    kb = _vm_hwm_kb()
    if kb is not None:
        return kb * 1024 / 1e6
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6  # bytes on macOS, KiB on Linux


class PeakMemory:
    """Measure one run's peak memory: ``mem = PeakMemory.start()`` ... ``mem.read()``."""

    def __init__(self) -> None:
        self.cuda = torch.cuda.is_available()
        self.rss_reset = False

    @classmethod
    def start(cls) -> "PeakMemory":
        self = cls()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        try:  # Linux >= 4.0: writing 5 resets VmHWM to the current RSS
            with open(f"/proc/{os.getpid()}/clear_refs", "w", encoding="ascii") as fh:
                fh.write("5")
            self.rss_reset = _vm_hwm_kb() is not None
        except OSError:
            self.rss_reset = False
        return self

    def read(self) -> dict:
        """Fields for metrics.json's timing section (MB = 10^6 bytes)."""
        rss = _max_rss_mb()
        out: dict = {"peak_rss_mb": None if rss is None else round(rss, 1)}
        if self.cuda:
            out["peak_memory_mb"] = round(torch.cuda.max_memory_allocated() / 1e6, 1)
            out["peak_memory_source"] = "torch.cuda.max_memory_allocated"
        else:
            out["peak_memory_mb"] = out["peak_rss_mb"]
            out["peak_memory_source"] = "peak RSS of the run" if self.rss_reset else "peak RSS of the process"
        return out
