"""A site's node dies mid-run: the round fails within Flower's heartbeat patience, not the 30-minute
round-timeout, and the run ends failed with the site named in its summary."""

import json
import os
import signal
import subprocess
import time

import pytest

from fl_medlego import processes
from fl_medlego.cli import loopback
from fl_medlego.cli.flower_run import BIN, REPO

pytestmark = [pytest.mark.deployment, pytest.mark.slow]


def test_a_killed_node_fails_its_round_in_bounded_time(tmp_path):
    workdir = tmp_path / "federation"
    state = loopback.up(workdir, ["blood", "breast"])
    try:
        out = workdir / "outputs"
        config = (f"sites='blood,breast' num-rounds=2 train.local-epochs=3 data.max-train=400 data.max-eval=48 "
                  f"lora.rank=2 output-dir='{out}'")  # round-timeout stays at its default, 1800 s
        env = {**os.environ, "FLWR_HOME": state["flwr_home"], "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
        run = subprocess.Popen([str(BIN / "flwr"), "run", str(REPO / "scenarios" / "cross_domain"), "--stream",
                                "--run-config", config], env=env, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
        blood_log = state["sites"]["blood"]["log"]
        deadline = time.monotonic() + 240
        while "site blood: epoch 1/3" not in open(blood_log).read() and time.monotonic() < deadline:
            time.sleep(1)  # round 1 is under way: every site has its train message
        assert time.monotonic() < deadline, "round 1 did not start"
        breast = state["sites"]["breast"]["pid"]
        for pid in [breast, *processes.descendants(breast)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed_at = time.monotonic()
        run.wait(timeout=600)
        waited = time.monotonic() - killed_at
        listed = subprocess.run([str(BIN / "flwr"), "list", "--format", "json"], env=env, capture_output=True,
                                text=True, timeout=60)
        (record,) = json.loads(listed.stdout)["runs"]
        assert record["status"] != "finished:completed", record
        (run_dir,) = out.iterdir()
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["status"].startswith("failed") and "breast" in summary["status"], summary["status"]
        breast_status = summary["site_status"]["breast"]
        assert breast_status["state"] in ("missing", "rejected") and breast_status["round"] == 1, breast_status
        print(f"the run ended {waited:.0f} s after the node was killed: {summary['status']}")
        assert waited < 300
    finally:
        loopback.down(workdir)
