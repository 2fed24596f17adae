"""Real sites on loopback: SuperLink with TLS + SuperNode authentication + a persistent database.

Marked `deployment`: outside the default run; `pytest -m deployment` runs them, and CI runs them.
Every process is started through fl_medlego.cli.loopback, recorded with its pid, and stopped by pid.
"""

import json
import os
import subprocess
from pathlib import Path

import pytest

from fl_medlego import processes
from fl_medlego.cli import loopback
from fl_medlego.cli.flower_run import BIN, REPO
from fl_medlego.server.coordinator import registered_nodes

pytestmark = pytest.mark.deployment


@pytest.fixture(scope="module")
def federation(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("federation")
    state = loopback.up(workdir, ["blood", "breast"])
    try:
        yield workdir, state
    finally:
        pids = [e["pid"] for e in [*state["sites"].values(), state["superlink"]] if e.get("pid")]
        family = pids + [d for p in pids for d in processes.descendants(p)]
        loopback.down(workdir)
        assert not [p for p in family if processes.is_alive(p)], "a process of the federation outlived `down`"


def test_authorized_sites_complete_a_run_and_intruders_are_refused(federation):
    workdir, state = federation
    intruder = loopback.start_site(workdir, state, "pneumonia", "bundled", register=False)  # unknown key
    no_ca = loopback.start_site(workdir, state, "organa", "bundled", with_ca=False)  # registered, no CA
    # Flower ends a refused SuperNode with process status 1 and logs its own exit code, 305.
    for node in (intruder, no_ca):
        assert processes.exit_code(node["pid"], 90) == 1
        assert "Exit Code: 305" in open(node["log"]).read()
    assert "CERTIFICATE_VERIFY_FAILED" in open(no_ca["log"]).read()
    assert "CERTIFICATE_VERIFY_FAILED" not in open(intruder["log"]).read()  # it had the CA: refused for its key

    out = workdir / "outputs"
    config = (f"sites='blood,breast,pneumonia,organa' num-rounds=2 train.local-epochs=1 data.max-train=48 "
              f"data.max-eval=48 lora.rank=2 node-wait-timeout=15 min-sites=2 output-dir='{out}'")
    env = {**os.environ, "FLWR_HOME": state["flwr_home"], "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run([str(BIN / "flwr"), "run", str(REPO / "scenarios" / "cross_domain"), "--stream",
                    "--run-config", config], env=env, capture_output=True, text=True, timeout=600, cwd=REPO)
    listed = subprocess.run([str(BIN / "flwr"), "list", "--format", "json"], env=env, capture_output=True,
                            text=True, timeout=60)
    (run,) = json.loads(listed.stdout)["runs"]
    assert run["status"] == "finished:completed"
    (run_dir,) = out.iterdir()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["sites"]) == {"blood", "breast"}  # the run went on with the authorized sites
    assert sorted(summary["sites_missing"]) == ["organa", "pneumonia"]
    assert all(s["merged"]["round"] == 2 for s in summary["sites"].values())
    # The same summary as in simulation: the same settings, the real apps in one process, the two sites alone
    # (a site's data and training depend on the seed and its own name only).
    local = local_summary(config.replace("pneumonia,organa", "").replace(",'", "'"), workdir / "local")
    for site in ("blood", "breast"):
        for part in ("specialist", "merged"):
            expected = {k: v for k, v in local["sites"][site][part].items() if k != "round"}
            got = {k: summary["sites"][site][part][k] for k in expected}
            assert got == pytest.approx(expected, abs=1e-3, nan_ok=True), (site, part)
    # A real site's training progress goes to its SuperNode's log, where its IT team reads it.
    assert "site blood: epoch 1/1, train loss" in open(state["sites"]["blood"]["log"]).read()


def test_restarted_superlink_keeps_registered_sites(federation):
    workdir, state = federation
    before = {n["node-id"] for n in registered_nodes(state["flwr_home"], loopback.CONNECTION)}
    assert len(before) >= 3  # blood, breast, and organa (registered; it failed on TLS)
    processes.stop_process(state["superlink"]["pid"])
    assert not processes.is_alive(state["superlink"]["pid"])
    loopback.start_superlink(workdir, state)
    after = {n["node-id"] for n in registered_nodes(state["flwr_home"], loopback.CONNECTION)}
    assert before == after


def local_summary(run_config: str, folder: Path) -> dict:
    """summary.json of the same run config run in this process (fl_medlego.cli.local_run), writing under `folder`."""
    from fl_medlego.cli.local_run import run_local_federation
    from fl_medlego.scenario import load_scenario_config

    config = {**load_scenario_config(REPO / "scenarios" / "cross_domain", run_config), "output-dir": str(folder)}
    federation = run_local_federation(config, folder / "state")
    return json.loads((federation.run_dir / "summary.json").read_text())
