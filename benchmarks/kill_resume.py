"""Fault script: kill -9 the ServerApp at a random moment of a tiny 3-round run, resume it, compare.

    python -m benchmarks.kill_resume [--kills 20] [--seed 0]

One uninterrupted run gives the reference merged adapter. Then, each time: start the same run, kill
the process that runs the ServerApp (the local simulation's, with SIGKILL) after a random delay, check
that no round folder is half written, resume with `resume='RUN_DIR'` and compare the final merged
adapter with the reference (max abs difference of the merged updates). Writes
benchmarks/results/kill_resume.csv.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from benchmarks._isolate import write_csv
from fl_medlego.cli.flower_run import BIN, REPO, flwr_run, local_flower, superlink_pids
from fl_medlego.lora import load_adapter
from fl_medlego.processes import descendants

TINY = ("sites='breast,pneumonia' num-rounds=3 train.local-epochs=1 data.max-train=48 data.max-eval=48 "
        "lora.rank=2")


def final_delta(run_dir: Path) -> dict:
    adapter = load_adapter(run_dir / "round-003" / "adapter")
    return {name: f.delta() * adapter.scale for name, f in adapter.factors.items()}


def complete_rounds(run_dir: Path) -> tuple[list[int], list[str]]:
    """The complete rounds, and any round folder that is neither complete nor a temporary one."""
    done, broken = [], []
    for folder in sorted(run_dir.glob("round-*")):
        if folder.name.endswith(".tmp"):
            continue
        if (folder / "round.json").is_file() and (folder / "adapter" / "adapter_model.safetensors").is_file():
            done.append(int(folder.name.split("-")[1]))
        else:
            broken.append(folder.name)
    return done, broken


def killed_run(tmp: Path, out: Path, delay_s: float) -> Path | None:
    """Start the run, SIGKILL its simulation process after delay_s; the run folder (None if not made yet)."""
    with local_flower(tmp) as env:
        command = [str(BIN / "flwr"), "run", str(REPO / "scenarios" / "cross_domain"), "--stream",
                   "--run-config", f"{TINY} output-dir='{out}'"]
        process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay_s)
        superlinks = superlink_pids(tmp / "flwr-home")  # this run's local SuperLink, started by flwr
        for pid in [d for link in superlinks for d in descendants(link)]:
            try:
                if "flwr-simulation" in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        process.kill()
        process.wait()
    runs = list(out.iterdir()) if out.is_dir() else []
    return runs[0] if runs else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-delay", type=float, default=5.0, help="seconds before the earliest kill")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        with local_flower(tmp / "ref") as env:
            start = time.perf_counter()
            result = flwr_run(env, "cross_domain", f"{TINY} output-dir='{tmp / 'ref-out'}'", timeout_s=900)
            full_s = time.perf_counter() - start
        assert result["run"].get("status") == "finished:completed", result["log"][-2000:]
        reference = final_delta(next((tmp / "ref-out").iterdir()))
        print(f"reference run: {full_s:.0f} s", flush=True)
        for i in range(args.kills):
            delay = rng.uniform(args.min_delay, full_s)
            out = tmp / f"out-{i}"
            run_dir = killed_run(tmp / f"k{i}", out, delay)
            row = {"kill": i, "delay_s": round(delay, 1), "run_started": run_dir is not None}
            if run_dir is None:  # killed before the ServerApp made its folder: nothing to resume
                row.update(rounds_done_at_kill="", broken_rounds="", resumed_status="", max_abs_diff="")
            else:
                done, broken = complete_rounds(run_dir)
                with local_flower(tmp / f"r{i}") as env:
                    resumed = flwr_run(env, "cross_domain", f"{TINY} output-dir='{out}' resume='{run_dir}'",
                                       timeout_s=900)
                final_done, final_broken = complete_rounds(run_dir)
                status = resumed["run"].get("status")
                diff = max(float((final_delta(run_dir)[n] - reference[n]).abs().max()) for n in reference) \
                    if final_done == [1, 2, 3] else float("nan")
                row.update(rounds_done_at_kill=len(done), broken_rounds=len(broken) + len(final_broken),
                           resumed_status=status, max_abs_diff=diff)
            rows.append(row)
            print(row, flush=True)
    write_csv("kill_resume.csv", rows)
    resumed = [r for r in rows if r["run_started"]]
    ok = [r for r in resumed if r["resumed_status"] == "finished:completed" and r["max_abs_diff"] <= 1e-6]
    print(f"{len(rows)} kills, {len(resumed)} after the run folder existed: {len(ok)} resumed to the same final "
          f"adapter (<= 1e-6); half-written round folders: {sum(r['broken_rounds'] or 0 for r in resumed)}")


if __name__ == "__main__":
    main()
