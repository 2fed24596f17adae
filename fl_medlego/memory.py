"""Resident memory of this process, for the logs and the benchmarks (Linux /proc)."""

from __future__ import annotations

import resource


def current_rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_rss_mb() -> float:
    """This process's RSS high-water mark (VmHWM), in MB. Not ru_maxrss: Linux carries that one over from
    the parent across fork and exec, so a child would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")
