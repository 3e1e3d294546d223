"""What the machine is doing while the bench measures: its CPU, its load, and peak memory.

Read from /proc (Linux) rather than through psutil, which effnet does not depend on; elsewhere
the numbers are missing, not wrong. Kept apart from the measurements because it needs no torch
until a CUDA watch starts, and effnet.memory reads the CPU's name from here for its provenance.
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
from pathlib import Path


def load_average() -> float | None:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _status(pid: int | str) -> dict[str, int]:
    """VmHWM (peak RSS) of a process, and Pss and private (unshared) memory from smaps_rollup, in
    bytes (Linux); {} when it is gone. A forked worker maps its parent's pages, so its RSS counts
    them again: Pss shares each page out among the processes that map it."""
    values = {}
    for name, keys in (
        ("status", ("VmHWM", "VmRSS")),
        ("smaps_rollup", ("Pss", "Private_Clean", "Private_Dirty")),
    ):
        try:
            with open(f"/proc/{pid}/{name}") as f:
                for line in f:
                    key, _, rest = line.partition(":")
                    if key in keys:
                        values[key] = int(rest.split()[0]) * 1024
        except (OSError, ValueError):
            pass
    values["Private"] = values.get("Private_Clean", 0) + values.get("Private_Dirty", 0)
    return values


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (the loader workers)."""
    found = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return found


class MemoryWatch:
    """Peak RSS of this process (VmHWM, reset first), the peak Pss and private memory of its children
    together (the loader workers; sampled every 0.5 s), and peak CUDA memory. A RAM store's pages
    are shared: Pss splits them between the processes that read them, private leaves them out."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        self.workers_pss = self.workers_private = 0
        self._stop = threading.Event()

    def __enter__(self) -> MemoryWatch:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        if self.cuda:
            import torch

            torch.cuda.reset_peak_memory_stats()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.5):
            stats = [_status(pid) for pid in _children(me)]
            self.workers_pss = max(self.workers_pss, sum(s.get("Pss", 0) for s in stats))
            self.workers_private = max(self.workers_private, sum(s["Private"] for s in stats))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.main_rss = _status("self").get("VmHWM", 0)
        if self.cuda:
            import torch

            self.gpu_allocated = torch.cuda.max_memory_allocated()
            self.gpu_reserved = torch.cuda.max_memory_reserved()

    def as_dict(self) -> dict[str, float | None]:
        mb = 1e6
        return {
            "main_rss_mb": round(self.main_rss / mb, 1),
            "workers_pss_mb": round(self.workers_pss / mb, 1),
            "workers_private_mb": round(self.workers_private / mb, 1),
            "gpu_max_allocated_mb": round(self.gpu_allocated / mb, 1) if self.cuda else None,
            "gpu_max_reserved_mb": round(self.gpu_reserved / mb, 1) if self.cuda else None,
        }
