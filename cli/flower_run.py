"""Run a scenario with `flwr run` on a private local SuperLink, and always stop what was started."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from fl_medlego.processes import free_port, stop_process

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent  # flwr and flower-superlink of the running environment


def superlink_pids(flwr_home: Path) -> list[int]:
    """Local SuperLinks started for this FLWR_HOME (their --database lies under it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "flower-superlink" in cmdline and str(flwr_home) in cmdline:
                pids.append(int(proc.name))
    return pids


@contextmanager
def local_flower(tmp_path: Path):
    """Environment for `flwr` with its own FLWR_HOME and ports; stops its SuperLink by pid, pass or fail."""
    flwr_home = tmp_path / "flwr-home"
    env = {**os.environ, "FLWR_HOME": str(flwr_home), "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()), "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
           # Everything the app needs is installed already; never resolve packages at run time.
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    try:
        yield env
    finally:
        # The SuperLink, its group and every descendant: the SuperExec and the simulation it starts
        # (with Ray) run in sessions of their own and outlive a group signal when a run is interrupted.
        for pid in superlink_pids(flwr_home):
            stop_process(pid)


def flwr_run(env: dict, scenario: str, run_config: str, timeout_s: float, federation_config: str = "") -> dict:
    """`flwr run SCENARIO --stream`, then the run's record from `flwr list` (status etc.) and the log.

    "lines" holds every streamed log line with the seconds since the command started when it arrived,
    so a benchmark can tell where a run's time went (start-up, rounds, teardown).
    """
    cmd = [str(BIN / "flwr"), "run", str(REPO / "scenarios" / scenario), "--stream", "--run-config", run_config]
    if federation_config:
        cmd += ["--federation-config", federation_config]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO)
    lines: list[tuple[float, str]] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.perf_counter() - start, line.rstrip("\n")))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        returncode = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        stop_process(proc.pid)
        raise
    finally:
        reader.join(timeout=10)
    seconds = time.perf_counter() - start
    listed = subprocess.run([str(BIN / "flwr"), "list", "--format", "json"], env=env, capture_output=True,
                            text=True, timeout=60, cwd=REPO)
    runs = json.loads(listed.stdout)["runs"]
    run = max(runs, key=lambda r: r["pending-at"]) if runs else {}
    log = "\n".join(line for _, line in lines)
    return {"run": run, "log": log, "lines": lines, "seconds": seconds, "returncode": returncode}
