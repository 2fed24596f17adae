"""Flower + Ray overhead: the default cross_domain simulation vs. the same work in a plain Python loop.

    python -m benchmarks.overhead [--run-config "..."]

Both sides do the same work with the same library calls: every round each site trains (from scratch,
then from the merged adapter), the server decodes, validates and merges the packed factors, and every
site evaluates the merged adapter and its specialist. Timed in one process, one after the other;
the Flower side includes starting the local SuperLink and Ray, as a user's `flwr run` does.
Writes results/overhead.csv.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from benchmarks._flower import flwr_run, local_flower
from benchmarks._isolate import ROOT, write_csv
from fl_medlego.scenario import load_scenario_config

from plain_federation import plain_federation  # tests/ is on the path through benchmarks._flower


def plain_loop(run_config: dict) -> float:
    """Seconds the plain loop takes for the scenario's work (see tests/plain_federation.py)."""
    start = time.perf_counter()
    plain_federation(run_config)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run-config", default="")
    args = parser.parse_args()
    run_config = load_scenario_config(ROOT / "scenarios" / "cross_domain", args.run_config)
    loop_s = plain_loop(run_config)
    print(f"plain loop: {loop_s:.1f} s", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        overrides = f"{args.run_config} output-dir='{tmp}/outputs'".strip()
        with local_flower(Path(tmp)) as env:
            start = time.perf_counter()
            result = flwr_run(env, "cross_domain", overrides, timeout_s=1800)
            flower_s = time.perf_counter() - start
    status = result["run"].get("status")
    print(f"flwr run: {flower_s:.1f} s ({status})", flush=True)
    row = {"plain_loop_s": round(loop_s, 1), "flower_ray_s": round(flower_s, 1), "ratio": round(flower_s / loop_s, 3),
           "status": status, "run_config": args.run_config or "(defaults)"}
    print(row)
    write_csv("overhead.csv", [row])


if __name__ == "__main__":
    main()
