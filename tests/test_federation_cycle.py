"""`federation up`, `down`, `up` again in one folder: every site's SuperNode is active after each `up`
(a node `down` left online at the SuperLink could not be activated again), and federation.json lists
only live processes. Marked `deployment`; every process is started by fl_medlego.cli.loopback and
stopped by pid, pass or fail."""

import json

import pytest

from fl_medlego import processes
from fl_medlego.cli import loopback
from fl_medlego.server.coordinator import registered_nodes

pytestmark = pytest.mark.deployment

SITES = ["blood", "breast"]


def listed_pids(workdir) -> list[int]:
    state = json.loads((workdir / loopback.STATE_FILE).read_text())
    return [e["pid"] for e in [*state["sites"].values(), state["superlink"]] if e.get("pid")]


def test_up_down_up_in_one_folder_keeps_every_site_active(tmp_path):
    workdir = tmp_path / "dryrun"
    started: list[int] = []
    try:
        for cycle in range(3):
            state = loopback.up(workdir, SITES)
            pids = listed_pids(workdir)
            started += pids + [d for p in pids for d in processes.descendants(p)]
            assert len(pids) == len(SITES) + 1 and all(processes.is_alive(p) for p in pids), cycle
            online = {n["node-id"] for n in registered_nodes(state["flwr_home"], loopback.CONNECTION)
                      if n["status"] == "online"}
            nodes = {state["sites"][s]["node_id"] for s in SITES}
            assert len(nodes) == len(SITES) and nodes <= online, (cycle, nodes, online)
            stopped = loopback.down(workdir)
            assert sorted(stopped) == sorted(pids), cycle
            assert not (workdir / loopback.STATE_FILE).exists(), cycle  # nothing live is left to list
            assert not [p for p in started if processes.is_alive(p)], cycle
        log = (workdir / "logs" / "superlink.log").read_text()
        assert log.count("Deactivated node_id=") == 3 * len(SITES)  # every `down` deactivated every node
    finally:
        loopback.down(workdir)
        for pid in started:
            if processes.is_alive(pid):
                processes.stop_process(pid)
