"""A simulated federation on an existing Ray cluster (docs/ray-cluster.md): which Ray node served each site's round
reaches metrics.jsonl, bounded whatever a site sends; and a real two-node cluster on loopback runs many_sites
across both nodes, every process it started stopped by pid."""

import json
import socket
import sys
import time
from pathlib import Path

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MessageType, MetricRecord, RecordDict

from fl_medlego import wire
from fl_medlego.cli import ray_cluster
from fl_medlego.cli.flower_run import flwr_run, local_flower, superlink_pids
from fl_medlego.cli.local_run import set_task_identity
from fl_medlego.clients import app as site_app
from fl_medlego.config import parse_run_config
from fl_medlego.lora import Adapter
from fl_medlego.results import RunResults
from fl_medlego.server.inprocess_grid import delivered_message as message
from fl_medlego.server.replies import MAX_SERVED_BY, read_train_reply
from fl_medlego.server.strategy import SiteMergeStrategy

from conftest import random_factors

NODE_ID = "9f" * 28  # a Ray node id: 56 hex digits
TEMPLATE = {"blocks.0.attn.qkv.q": (8, 6), "blocks.0.attn.qkv.v": (8, 6)}
SITES = {"blood": 11, "breast": 12}


class FakeRay:
    """What clients.app asks of Ray: whether this process is one of its workers, and on which node."""

    def __init__(self, initialized: bool) -> None:
        self.initialized = initialized

    def is_initialized(self) -> bool:
        return self.initialized

    def get_runtime_context(self):
        return type("Context", (), {"get_node_id": lambda _self: NODE_ID})()


def test_a_site_under_ray_says_which_node_and_machine_serve_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", FakeRay(initialized=True))
    assert site_app.served_by() == f"{NODE_ID}@{socket.gethostname()}"
    monkeypatch.setitem(sys.modules, "ray", FakeRay(initialized=False))  # imported, but not a Ray worker
    assert site_app.served_by() == ""
    monkeypatch.delitem(sys.modules, "ray")  # a deployment's SuperNode: Ray never imported
    assert site_app.served_by() == ""
    assert "ray" not in sys.modules  # and asking did not import it


def _train_request(site: str) -> tuple:
    run_config = {"sites": "blood", "train.local-epochs": 1, "data.max-train": 16, "data.max-eval": 16,
                  "lora.rank": 2}
    context = Context(run_id=1, node_id=5, node_config={"partition-id": 0, "num-partitions": 1}, state=RecordDict(),
                      run_config=run_config)
    content = RecordDict({wire.ARRAYS: ArrayRecord(),
                          wire.CONFIG: ConfigRecord({wire.SITE: site, wire.SERVER_ROUND: 1})})
    return message(content, MessageType.TRAIN, src=0, dst=5), context


def test_the_train_reply_names_the_ray_node_only_under_ray(site_state_in_tmp, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", FakeRay(initialized=True))
    reply = site_app.train(*_train_request("blood"))
    assert reply.content[wire.SITE_INFO][wire.SERVED_BY] == f"{NODE_ID}@{socket.gethostname()}"
    monkeypatch.delitem(sys.modules, "ray")
    reply = site_app.train(*_train_request("blood"))
    assert wire.SERVED_BY not in reply.content[wire.SITE_INFO]


def _adapter(seed: int) -> Adapter:
    gen = torch.Generator().manual_seed(seed)
    return Adapter({n: random_factors(*s, 2, gen) for n, s in TEMPLATE.items()}, scale=2.0)


def _reply(site: str, node: int, served_by: object = None):
    info = {wire.SITE: site, wire.BASE_FINGERPRINT: "abc", wire.DATA_SOURCE: "test"}
    if served_by is not None:
        info[wire.SERVED_BY] = served_by
    content = RecordDict({
        wire.ARRAYS: ArrayRecord(wire.encode_adapter(_adapter(node))),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 100.0, wire.VAL_ACC: 0.5, wire.TRAIN_LOSS: 1.0,
                                    wire.BEST_EPOCH: 2.0}),
        wire.SITE_INFO: ConfigRecord(info),
    })
    return message(content, MessageType.TRAIN, src=node, dst=0)


@pytest.fixture
def strategy(tmp_path):
    set_task_identity()
    cfg = parse_run_config({"merge.energy": 1.0, "merge.max-rank": 0, "min-sites": 1})
    return SiteMergeStrategy(SITES, TEMPLATE, cfg, RunResults(tmp_path, {"strategy": "medlego"}), "abc")


@pytest.mark.parametrize("sent, kept", [
    (f"{NODE_ID}@gpu-box-2", f"{NODE_ID}@gpu-box-2"),
    (None, ""),  # not under Ray: nothing said
    (42, ""),  # not text: dropped
    (["a", "b"], ""),
    ("n" * 1_000_000, "n" * (MAX_SERVED_BY - 1) + "…"),  # a hostile site's megabyte: bounded
    ("\x1b[31mnode\x1b[0m\r\nsecond line", "node"),  # escape codes and further lines: gone
    ("node on /hospital/secret/host", "node on <path…>"),  # a path: masked
])
def test_a_reply_says_what_served_it_bounded_whatever_a_site_sends(strategy, sent, kept):
    reply = read_train_reply(_reply("blood", 11, sent), SITES, strategy.kind, TEMPLATE)
    assert reply.served_by == kept


def test_the_rounds_train_event_records_which_node_served_each_site(strategy, tmp_path):
    strategy.aggregate_train(1, [_reply("blood", 11, f"{NODE_ID}@head"), _reply("breast", 12)])
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    train = {e["site"]: e for e in events if e["event"] == "train"}
    assert train["blood"]["served_by"] == f"{NODE_ID}@head" and train["blood"]["data_source"] == "test"
    assert "served_by" not in train["breast"]  # a site outside Ray says nothing, and nothing is made up


def _running(pid: int) -> bool:
    """Alive and not a zombie (a daemon's exit is collected by init a moment later)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _leftovers(cluster: ray_cluster.RayCluster, flwr_home) -> list[int]:
    return [*ray_cluster.node_pids(cluster), *superlink_pids(flwr_home)]


def _live_nodes_once_settled(cluster: ray_cluster.RayCluster, count: int, timeout_s: float = 60.0) -> list[str]:
    """Ray's live nodes once there are `count` (the GCS marks a stopped node dead within seconds), or as they are
    at the deadline."""
    deadline = time.monotonic() + timeout_s
    while True:
        nodes = list(ray_cluster.alive_nodes(cluster).values())
        if len(nodes) == count or time.monotonic() > deadline:
            return nodes
        time.sleep(2.0)


@pytest.mark.flower
def test_many_sites_run_across_a_two_node_ray_cluster_on_loopback(tmp_path):
    """The SuperLink joins the cluster through RAY_ADDRESS (and its token); one site actor fits each one-CPU node
    (client-resources-num-cpus=1), so sites run on both nodes; then one node leaves, and everything started here is
    stopped by pid, pass or fail."""
    out, flwr_home = tmp_path / "outputs", tmp_path / "flwr-home"
    config = (f"sites='blood:4' num-rounds=1 train.local-epochs=1 data.max-train=32 data.max-eval=32 "
              f"output-dir='{out}'")
    cluster = ray_cluster.start_cluster(nodes=2, num_cpus=1, log_dir=tmp_path / "ray")
    started = ray_cluster.node_pids(cluster)
    try:
        assert len(cluster.node_ids) == 2 and all(cluster.node_ids)
        assert ray_cluster.node_pids(cluster, 0) and ray_cluster.node_pids(cluster, 1)
        with local_flower(tmp_path) as env:
            result = flwr_run(cluster.env(env), "many_sites", config, timeout_s=420,
                              federation_config="num-supernodes=4 client-resources-num-cpus=1")
        assert result["run"].get("status") == "finished:completed", result["log"][-3000:]
        (run_dir,) = out.iterdir()
        events = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        served = {e["site"]: e["served_by"] for e in events if e["event"] == "train"}
        assert set(served) == {"blood-1", "blood-2", "blood-3", "blood-4"}
        nodes = {value.split("@")[0] for value in served.values()}
        assert nodes == set(cluster.node_ids), served  # both nodes served sites, and no Ray of its own did
        assert all(value.endswith(f"@{socket.gethostname()}") for value in served.values())
        assert json.loads((run_dir / "summary.json").read_text())["status"] == "completed"

        # A worker machine leaving: its processes stop, the head's go on, and Ray lists the head alone.
        assert ray_cluster.stop_node(cluster, 1) == []
        assert ray_cluster.node_pids(cluster, 1) == [] and ray_cluster.node_pids(cluster, 0)
        assert _live_nodes_once_settled(cluster, 1) == [cluster.node_ids[0]]
    finally:
        left = ray_cluster.stop(cluster)
    assert left == [] and _leftovers(cluster, flwr_home) == []
    assert not [pid for pid in started if _running(pid)]
    assert not cluster.temp_dir.exists()
