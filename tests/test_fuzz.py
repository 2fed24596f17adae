"""Fuzzed train replies through the strategy: nothing raises, nothing invalid is merged, no merged model is
non-finite, every rejection has a bounded reason, and an oversized update is clipped to the bound."""

import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.hostile_replies import BASE, HOSTILE, INVALID, SITES, VALID, honest_messages, hostile_message
from fl_medlego import wire
from fl_medlego.cli.local_run import set_task_identity
from fl_medlego.config import parse_run_config
from fl_medlego.merging import adapter_norm
from fl_medlego.results import RunResults
from fl_medlego.server.strategy import SiteMergeStrategy

TEMPLATE = {f"blocks.{b}.attn.qkv.{p}": (16, 16) for b in range(2) for p in "qv"}


def run_round(tmp_path, name: str, seed: int, **run_config):
    set_task_identity()
    cfg = parse_run_config({"merge.energy": 1.0, "merge.max-rank": 0, "min-sites": 1, **run_config})
    results = RunResults(tmp_path, {})
    strategy = SiteMergeStrategy(SITES, TEMPLATE, cfg, results, BASE)
    replies = [*honest_messages(TEMPLATE, seed), hostile_message(name, TEMPLATE, seed)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return strategy, arrays, metrics, events


def check_invariants(strategy, arrays, metrics, events, name):
    merged = wire.decode_adapter(arrays.to_torch_state_dict(), TEMPLATE)  # a valid, finite adapter
    assert all(torch.isfinite(f.delta()).all() for f in merged.factors.values())
    rejected = [e for e in events if e["event"] == "rejected"]
    assert all(e["reason"] and len(e["reason"]) <= 400 and "/hospital" not in e["reason"] for e in rejected)
    assert all(len(line) < 4000 for line in map(json.dumps, events))  # no reply can flood the log
    assert not any("/hospital" in json.dumps(e) for e in events)  # nor write a site's paths into it
    honest = len(SITES) - 1
    if name in INVALID:
        assert metrics[wire.SITES_MERGED] == honest and strategy.status.get(HOSTILE, {}).get("state") != "merged"
        assert len(rejected) == 1
    else:
        assert metrics[wire.SITES_MERGED] == honest + 1 and strategy.status[HOSTILE]["state"] == "merged", name


@pytest.mark.parametrize("name", sorted(INVALID) + sorted(VALID))
def test_every_family_of_hostile_reply_is_handled(tmp_path, name):
    check_invariants(*run_round(tmp_path, name, seed=0), name)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.sampled_from(sorted(INVALID) + sorted(VALID)), seed=st.integers(0, 2**31 - 1))
def test_fuzzed_replies_never_escape_the_strategy(tmp_path_factory, name, seed):
    check_invariants(*run_round(tmp_path_factory.mktemp("fuzz"), name, seed), name)


def test_one_oversized_update_among_five_moves_the_merge_by_at_most_the_bound(tmp_path):
    _, arrays, _, events = run_round(tmp_path / "attacked", "update x1e6", seed=1)
    (guard,) = [e for e in events if e["event"] == "guard"]
    assert guard["site"] == HOSTILE and guard["action"] == "clipped" and guard["norm"] > 1e5 * guard["bound"]
    _, honest_arrays, _, _ = run_round(tmp_path / "honest", "no arrays", seed=1)  # the hostile reply left out
    merged = wire.decode_adapter(arrays.to_torch_state_dict(), TEMPLATE)
    honest = wire.decode_adapter(honest_arrays.to_torch_state_dict(), TEMPLATE)
    # The mean of five updates, one of them at most the bound (3 x the lower median norm): the clipped site
    # can add at most bound / 5 to the merge's norm.
    shift = adapter_norm(merged) - adapter_norm(honest) * 4 / 5
    assert shift <= guard["bound"] / 5 * (1 + 1e-6), (shift, guard["bound"])
    ratio = adapter_norm(merged) / adapter_norm(honest)
    print(f"merged norm with one x1e6 site among five / honest-only merged norm: {ratio:.3f}")
    assert ratio < 3.0


def test_reject_action_leaves_the_oversized_update_out(tmp_path):
    strategy, arrays, metrics, events = run_round(tmp_path, "update x1e6", seed=2, **{"guard.action": "reject"})
    assert metrics[wire.SITES_MERGED] == len(SITES) - 1 and strategy.status[HOSTILE]["state"] == "rejected"
