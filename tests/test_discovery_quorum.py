"""A run whose connected sites cannot reach min-sites fails before round 1 (no site trains for a round that
cannot count), and while it waits the coordinator names the sites it waits for, in Flower's log."""

import logging

import pytest

from fl_medlego.cli.local_run import run_local_federation
from fl_medlego.clients.app import app as site_app
from fl_medlego.errors import UserError
from fl_medlego.results import read_events
from fl_medlego.server.app import run_federation
from fl_medlego.server.discovery import require_quorum

FAST = {"num-rounds": 1, "train.local-epochs": 1, "data.max-train": 16, "data.max-eval": 16, "lora.rank": 2,
        "node-wait-timeout": 3}


class WithoutNodes:
    """A grid on which some nodes never connected: the coordinator does not see them."""

    def __init__(self, grid, absent: set[int]) -> None:
        self.grid, self.absent = grid, absent

    def get_node_ids(self):
        return [n for n in self.grid.get_node_ids() if n not in self.absent]

    def __getattr__(self, name):
        return getattr(self.grid, name)


def run_without(sites: str, absent_site: str, tmp_path, **run_config):
    """Run the federation over one in-process node per site of `sites` but `absent_site`'s; returns
    (what was raised, the message types each node received, the run folder)."""
    received: list[tuple[str, str]] = []

    def recording_app(msg, context):
        received.append((context.node_config["site"], msg.metadata.message_type))
        return site_app(msg, context)

    def coordinator(grid, context):
        hosted = {n: c.node_config["site"] for n, c in grid.nodes.items()}
        absent = {n for n, site in hosted.items() if site == absent_site}
        return run_federation(WithoutNodes(grid, absent), context)

    config = {**FAST, "sites": sites, "output-dir": str(tmp_path / "runs"), **run_config}
    with pytest.raises(UserError) as refused:
        run_local_federation(config, tmp_path / "state", client_app=recording_app, main=coordinator)
    (run_dir,) = (tmp_path / "runs").iterdir()
    return refused.value, received, run_dir


def test_a_run_that_cannot_reach_min_sites_fails_before_any_site_trains_and_says_why(tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="flwr"):
        error, received, run_dir = run_without("blood,breast,pneumonia", "pneumonia", tmp_path)
    message = str(error)
    assert "round 1 needs 3 of the 3 declared sites" in message and "no node hosts pneumonia" in message
    assert "sites='blood,breast'" in message and "min-sites=2" in message  # the two ways out
    assert {kind for _, kind in received} == {"query"}  # the nodes were asked who they host, nothing else
    assert not [e for e in read_events(run_dir / "metrics.jsonl") if e["event"] == "train"]
    waits = [r.getMessage() for r in caplog.records if "waiting for the nodes of sites" in r.getMessage()]
    assert waits and "['pneumonia']" in waits[0] and "node-wait-timeout" in waits[0]
    assert "connected: ['blood', 'breast']" in waits[-1]


def test_an_explicit_min_sites_above_the_hosted_sites_fails_the_same_way(tmp_path):
    error, received, _ = run_without("blood,breast,pneumonia", "breast", tmp_path, **{"min-sites": 3})
    assert "round 1 needs 3 of the 3 declared sites" in str(error) and "no node hosts breast" in str(error)
    assert {kind for _, kind in received} == {"query"}


def test_the_quorum_check_passes_exactly_when_the_hosted_sites_reach_the_requirement():
    declared = ["blood", "breast", "pneumonia"]
    require_quorum({"blood": 1, "breast": 2}, declared, required=2)  # enough: no refusal
    with pytest.raises(UserError, match="round 2 needs 3 .* only 2 have a connected node"):
        require_quorum({"blood": 1, "breast": 2}, declared, required=3, server_round=2)
