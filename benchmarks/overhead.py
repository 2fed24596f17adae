"""Flower + Ray overhead: the default cross_domain simulation vs. the same work in a plain Python loop.

    python -m benchmarks.overhead [--pairs 3] [--run-config "..."] [--federation-config "..."]

Both sides run the same code: the plain side runs the real ServerApp and ClientApp in one process
(fl_medlego.cli.local_run: discovery, every round of the strategy with its guard, the sites' training
and evaluation, the summary), the Flower side the same apps under `flwr run`. Each pair runs the plain
loop in a fresh Python process, then `flwr run` (a fresh local SuperLink, simulation process and Ray),
one after the other; pairs repeat so that a ratio is told from the machine's noise. Two ratios per pair:

- `ratio_to_loop`: flwr run's wall time over the plain loop's own time (imports and data already
  loaded): everything Flower, Ray and our apps add, start-up included. The headline number.
- `ratio_to_process`: over the plain process's wall time (interpreter start and imports included).

The Flower side is split by the arrival times of its streamed log lines (the log stream is polled,
so each boundary is known to about half a second): start-up until round 1 begins (itself split at
"Successfully started run": the local SuperLink is up; "Starting Flower Simulation": the simulation
process is up; "results of this run go to": our ServerApp is imported and running), the rounds
(Flower's own "Strategy execution finished in" figure), and what follows; the sites' local epochs
(the seconds each progress line reports) are summed on both sides, so that time lost to processes
competing for the CPU shows apart from time spent between epochs. Writes results/overhead.csv.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks._isolate import ROOT, write_csv
from fl_medlego.cli.flower_run import flwr_run, local_flower
from fl_medlego.scenario import load_scenario_config

STRATEGY_DONE = re.compile(r"Strategy execution finished in ([\d.]+)s")
EPOCH_LINE = re.compile(r"site \S+: epoch \d+/\d+, .*\(([\d.]+) s\)")  # fl_medlego.train.progress_line


def plain_child(run_config: dict) -> None:
    """In the child process: the apps in this process, timed on their own; prints one JSON line."""
    from fl_medlego.cli.local_run import run_local_federation

    epochs = []

    class EpochLines(logging.Handler):  # the sites' progress lines, as the Flower side's log has them
        def emit(self, record: logging.LogRecord) -> None:
            if match := EPOCH_LINE.search(record.getMessage()):
                epochs.append(float(match.group(1)))

    logging.getLogger("flwr").addHandler(EpochLines())
    with tempfile.TemporaryDirectory() as tmp:
        config = {**run_config, "output-dir": str(Path(tmp) / "out")}
        start = time.perf_counter()
        run_local_federation(config, Path(tmp) / "state")
        print(json.dumps({"loop_s": time.perf_counter() - start, "epochs_s": sum(epochs)}))


def plain_run(run_config: dict) -> dict:
    """The plain loop in a fresh process: its own seconds and the process's wall time."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "benchmarks.overhead", "--plain-child", json.dumps(run_config)],
                          cwd=ROOT, capture_output=True, text=True, timeout=3600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"the plain loop failed: {proc.stderr[-2000:]}")
    timings = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"plain_process_s": wall, "plain_loop_s": timings["loop_s"], "plain_epochs_s": timings["epochs_s"]}


def first_line_time(lines: list[tuple[float, str]], text: str) -> float | None:
    return next((t for t, line in lines if text in line), None)


def flower_run(run_config_overrides: str, federation_config: str) -> dict:
    """`flwr run scenarios/cross_domain` on a fresh local SuperLink: wall time and where it went."""
    with tempfile.TemporaryDirectory() as tmp:
        overrides = f"{run_config_overrides} output-dir='{tmp}/outputs'".strip()
        with local_flower(Path(tmp)) as env:
            result = flwr_run(env, "cross_domain", overrides, timeout_s=3600, federation_config=federation_config)
    status = result["run"].get("status")
    if status != "finished:completed":
        raise RuntimeError(f"flwr run ended {status!r}, not finished:completed: {result['log'][-3000:]}")
    lines = result["lines"]
    round_1 = first_line_time(lines, "[ROUND 1/")
    done = next((float(m.group(1)) for _, line in lines if (m := STRATEGY_DONE.search(line))), None)
    if round_1 is None or done is None:
        raise RuntimeError("the streamed log lacks Flower's round markers: cannot split the run's time")
    epochs = sum(float(m.group(1)) for _, line in lines if (m := EPOCH_LINE.search(line)))
    return {"flower_s": result["seconds"], "run_started_s": first_line_time(lines, "Successfully started run"),
            "simulation_up_s": first_line_time(lines, "Starting Flower Simulation"),
            "serverapp_up_s": first_line_time(lines, "results of this run go to"),
            "startup_s": round_1, "rounds_s": done, "after_rounds_s": result["seconds"] - round_1 - done,
            "flower_epochs_s": epochs}


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--run-config", default="")
    parser.add_argument("--federation-config", default="", help='e.g. "client-resources-num-cpus=1"')
    parser.add_argument("--output", default="overhead.csv", help="file name under benchmarks/results/")
    parser.add_argument("--plain-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_child:
        plain_child(json.loads(args.plain_child))
        return
    run_config = load_scenario_config(ROOT / "scenarios" / "cross_domain", args.run_config)
    rows = []
    for pair in range(1, args.pairs + 1):
        row = {"pair": pair, **plain_run(run_config), **flower_run(args.run_config, args.federation_config)}
        row["ratio_to_loop"] = row["flower_s"] / row["plain_loop_s"]
        row["ratio_to_process"] = row["flower_s"] / row["plain_process_s"]
        row["rounds_to_loop"] = row["rounds_s"] / row["plain_loop_s"]
        rows.append({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()})
        print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), flush=True)
    print()
    print("| pair | plain loop (s) | plain process (s) | flwr run (s) | start-up to round 1 (s) | rounds (s) "
          "| after rounds (s) | local epochs, plain (s) | local epochs, flwr (s) | flwr / loop | flwr / process |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['pair']} | {r['plain_loop_s']:.1f} | {r['plain_process_s']:.1f} | {r['flower_s']:.1f} "
              f"| {r['startup_s']:.1f} | {r['rounds_s']:.1f} | {r['after_rounds_s']:.1f} | {r['plain_epochs_s']:.1f} "
              f"| {r['flower_epochs_s']:.1f} | {r['ratio_to_loop']:.3f} | {r['ratio_to_process']:.3f} |")
    print(f"\nmedian flwr / loop: {spread([r['ratio_to_loop'] for r in rows])}")
    print(f"median flwr / process: {spread([r['ratio_to_process'] for r in rows])}")
    print(f"median rounds / loop: {spread([r['rounds_to_loop'] for r in rows])}")
    settings = {"run_config": args.run_config or "(defaults)",
                "federation_config": args.federation_config or "(default)"}
    path = write_csv(args.output, [{**r, **settings} for r in rows])
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
