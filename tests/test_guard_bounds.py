"""guard.max-norm (an absolute bound on every site's update) and guard.norm-factor = 0 (the relative bound
off): through server/guard.py's functions, the strategy on mock replies, and a real run in this process."""

import json
import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict

from fl_medlego import wire
from fl_medlego.cli.local_run import set_task_identity
from fl_medlego.config import GuardSettings, parse_run_config
from fl_medlego.kinds import get_kind
from fl_medlego.lora import Adapter, Factors
from fl_medlego.merging import adapter_norm
from fl_medlego.results import RunResults
from fl_medlego.server.guard import guard_updates, norm_bound
from fl_medlego.server.inprocess_grid import delivered_message as message
from fl_medlego.server.strategy import SiteMergeStrategy

TEMPLATE = {f"blocks.{b}.attn.qkv.{p}": (16, 16) for b in range(2) for p in "qv"}
NORMS = {"blood": 1.0, "breast": 2.0, "organa": 4.0, "retina": 100.0}
SITES = {"blood": 11, "breast": 12, "organa": 13, "retina": 15, "pneumonia": 14}
HOSTILE = "pneumonia"  # sends its update x1e6
BASE = "abc123"


def honest_adapter(seed: int, scale: float = 2.0) -> Adapter:
    gen = torch.Generator().manual_seed(seed)
    factors = {n: Factors(torch.randn(o, 4, generator=gen) * 0.1, torch.rand(4, generator=gen) + 0.5,
                          torch.randn(4, i, generator=gen) * 0.1) for n, (o, i) in TEMPLATE.items()}
    return Adapter(factors, scale=scale)


def train_reply(site: str, adapter: Adapter):
    content = RecordDict({
        wire.ARRAYS: ArrayRecord(wire.encode_adapter(adapter)),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 100.0, wire.VAL_ACC: 0.5, wire.TRAIN_LOSS: 1.0,
                                    wire.BEST_EPOCH: 2.0}),
        wire.SITE_INFO: ConfigRecord({wire.SITE: site, wire.BASE_FINGERPRINT: BASE, wire.DATA_SOURCE: "test"}),
    })
    return message(content, MessageType.TRAIN, src=SITES[site], dst=0)


def test_the_bound_is_the_tighter_of_norm_factor_times_the_lower_median_and_max_norm():
    assert norm_bound(NORMS, GuardSettings()) == 3 * 2.0  # lower median of four: the second smallest
    assert norm_bound(NORMS, GuardSettings(max_norm=5.0)) == 5.0  # max-norm tighter
    assert norm_bound(NORMS, GuardSettings(max_norm=50.0)) == 6.0  # max-norm looser: the relative bound holds
    assert norm_bound(NORMS, GuardSettings(norm_factor=0, max_norm=50.0)) == 50.0  # relative bound off
    assert norm_bound(NORMS, GuardSettings(norm_factor=0)) == math.inf  # both off: nothing is bounded
    assert norm_bound({"blood": 1.0, "breast": 9.0}, GuardSettings()) == 3.0  # two sites: the smaller sets it


def test_max_norm_is_absolute_whatever_the_sites_send():
    """Every site over max-norm is clipped to exactly it, even when all are (no median can lift it)."""
    kind = get_kind("adapter").server(parse_run_config({}).kind_context())
    updates = {site: honest_adapter(seed=i, scale=20.0) for i, site in enumerate(NORMS)}
    smallest = min(kind.norm(u, None) for u in updates.values())
    kept, decisions = guard_updates(updates, kind, None, GuardSettings(norm_factor=0, max_norm=smallest / 2))
    assert {d.action for d in decisions} == {"clipped"} and {d.bound for d in decisions} == {smallest / 2}
    assert all(kind.norm(u, None) == pytest.approx(smallest / 2, rel=1e-5) for u in kept.values())


@pytest.mark.parametrize("bad, key", [({"guard.norm-factor": 0.5}, "guard.norm-factor"),
                                      ({"guard.norm-factor": -1.0}, "guard.norm-factor"),
                                      ({"guard.max-norm": -1.0}, "guard.max-norm")])
def test_bounds_that_cannot_work_are_refused_naming_the_setting(bad, key):
    with pytest.raises(ValueError, match=key):
        parse_run_config(bad)


def honest_norms() -> dict[str, float]:
    """The four honest sites' update norms, as round_of_five sends them."""
    return {site: adapter_norm(honest_adapter(i)) for i, site in enumerate(s for s in SITES if s != HOSTILE)}


def round_of_five(tmp_path, **guard) -> tuple[SiteMergeStrategy, list[dict]]:
    """Four honest adapters and the hostile site's x1e6 one through the strategy:
    (strategy, guard events)."""
    set_task_identity()
    cfg = parse_run_config({"merge.energy": 1.0, "merge.max-rank": 0, "min-sites": 1, **guard})
    strategy = SiteMergeStrategy(SITES, TEMPLATE, cfg, RunResults(tmp_path, {}), BASE)
    replies = [train_reply(site, honest_adapter(i)) for i, site in enumerate(honest_norms())]
    replies.append(train_reply(HOSTILE, honest_adapter(7, scale=2e6)))
    strategy.aggregate_train(1, replies)
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return strategy, [e for e in events if e["event"] == "guard"]


def test_norm_factor_zero_without_max_norm_lets_any_update_through(tmp_path):
    strategy, guard = round_of_five(tmp_path, **{"guard.norm-factor": 0})
    assert guard == [] and strategy.status[HOSTILE]["state"] == "merged"  # the oversized update is merged as sent
    assert {s["state"] for s in strategy.status.values()} == {"merged"}


def test_norm_factor_zero_with_max_norm_bounds_by_max_norm_alone(tmp_path):
    """max-norm between the honest norms: exactly the sites above it are clipped, to it (with the relative
    bound on, 3 x the lower median would clip none of the honest ones)."""
    sent = honest_norms()
    honest = sorted(sent.values())
    limit = (honest[1] + honest[2]) / 2
    assert 3 * honest[1] > honest[-1]  # the relative bound would have let every honest site through
    _, guard = round_of_five(tmp_path, **{"guard.norm-factor": 0, "guard.max-norm": limit})
    assert {e["site"] for e in guard} == {s for s, n in sent.items() if n > limit} | {HOSTILE}
    assert len(guard) == 3 and all(e["bound"] == limit and e["action"] == "clipped" for e in guard)
    assert all(e["norm"] == pytest.approx(sent[e["site"]], rel=1e-5) for e in guard if e["site"] != HOSTILE)
    hostile = adapter_norm(honest_adapter(7, scale=2e6))
    assert [e["norm"] for e in guard if e["site"] == HOSTILE] == [pytest.approx(hostile, rel=1e-5)]


def test_a_real_run_clips_every_site_to_max_norm(tmp_path):
    """Two sites training for real in this process: each update is over the tiny absolute bound, so each is
    clipped to it, and the run still completes (the sites evaluate the combined update)."""
    from message_federation import run

    config = {"sites": "breast,pneumonia", "num-rounds": 1, "train.local-epochs": 1, "data.max-train": 32,
              "data.max-eval": 32, "lora.rank": 2, "guard.norm-factor": 0, "guard.max-norm": 0.01}
    strategy = run(config, tmp_path)
    events = [json.loads(line) for line in (strategy.results.run_dir / "metrics.jsonl").read_text().splitlines()]
    guard = [e for e in events if e["event"] == "guard"]
    assert sorted(e["site"] for e in guard) == ["breast", "pneumonia"]
    assert all(e["bound"] == 0.01 and e["norm"] > 0.01 and e["action"] == "clipped" for e in guard)
    assert {s["state"] for s in strategy.status.values()} == {"merged"}
    assert set(strategy.merged) == {"breast", "pneumonia"}
    cfg = parse_run_config(config)
    combined = cfg.kind_server().load(strategy.results.round_dir(1), strategy.base_fingerprint)
    assert cfg.kind_server().norm(combined, None) <= 0.01 * (1 + 1e-4)  # a merge of two updates of norm 0.01
