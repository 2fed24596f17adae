"""Run one measurement in a fresh Python process and return its timing and peak memory.

Peak memory is the child's RSS high-water mark minus its RSS just before the measured call (inputs
already built), so neither the parent nor earlier cases leak into a number.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from fl_medlego.cli.flower_run import REPO as ROOT
from fl_medlego.files import atomic_path
from fl_medlego.memory import current_rss_mb, peak_rss_mb


def measure(fn, *args) -> dict:
    """Call fn(*args) once in this process: seconds and peak extra memory (MB)."""
    before = current_rss_mb()
    start = time.perf_counter()
    result = fn(*args)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mb": max(peak_rss_mb() - before, 0.0), "result": result}


def run_child(module: str, case: dict, timeout_s: float = 1800) -> dict:
    """`python -m MODULE --child JSON` in a fresh process; the child prints one JSON line last."""
    proc = subprocess.run([sys.executable, "-m", module, "--child", json.dumps(case)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        raise RuntimeError(f"{module} child failed for {case}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def write_csv(name: str, rows: list[dict]) -> Path:
    """benchmarks/results/NAME, one row per dict (the first row's keys are the columns)."""
    import csv

    path = ROOT / "benchmarks" / "results" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path
