"""The full kind's guard: a whole backbone's size is its change from what the round started at (the base in
round 1, the previous combined update after that), and an over-bound change is clipped towards that
reference, not towards zero."""

import json
import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict

from fl_medlego import wire
from fl_medlego.cli.local_run import set_task_identity
from fl_medlego.config import GuardSettings, parse_run_config
from fl_medlego.kinds import get_kind
from fl_medlego.results import RunResults
from fl_medlego.server.guard import guard_updates
from fl_medlego.server.inprocess_grid import delivered_message as message
from fl_medlego.server.strategy import SiteMergeStrategy

TEMPLATE = {"w": (4, 3), "b": (3,)}
SITES = {"blood": 11, "breast": 12, "organa": 13}
BASE = {"w": torch.full((4, 3), 5.0), "b": torch.full((3,), -2.0)}  # far from zero: a norm of whole weights is ~18
ENTRIES = 15  # a step s on every entry changes the weights by s * sqrt(15)
STEPS = {"blood": 0.1, "breast": 0.2, "organa": 10.0}  # organa's change is 50x the lower median's


def stepped(reference: dict, step: float) -> dict:
    return {k: v + step for k, v in reference.items()}


def reply(site: str, weights: dict):
    content = RecordDict({
        wire.ARRAYS: ArrayRecord({k: v.clone() for k, v in weights.items()}),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 10.0, wire.VAL_ACC: 0.5, wire.TRAIN_LOSS: 1.0,
                                    wire.BEST_EPOCH: 1.0}),
        wire.SITE_INFO: ConfigRecord({wire.SITE: site, wire.BASE_FINGERPRINT: "abc", wire.DATA_SOURCE: "x"}),
    })
    return message(content, MessageType.TRAIN, src=SITES[site], dst=0)


def full_strategy(tmp_path, **run_config) -> SiteMergeStrategy:
    set_task_identity()
    cfg = parse_run_config({"strategy": "vit_avg", "min-sites": 1, **run_config})
    return SiteMergeStrategy(SITES, TEMPLATE, cfg, RunResults(tmp_path, {}), "abc", dict(BASE))


def guard_events(tmp_path) -> list[dict]:
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    return [e for e in events if e["event"] == "guard"]


def assert_weights(arrays: ArrayRecord, expected: dict) -> None:
    got = arrays.to_torch_state_dict()
    for k in expected:
        torch.testing.assert_close(got[k], expected[k])


def test_round_one_measures_changes_from_the_base_and_clips_towards_it(tmp_path):
    strategy = full_strategy(tmp_path)
    arrays, metrics = strategy.aggregate_train(1, [reply(s, stepped(BASE, step)) for s, step in STEPS.items()])
    (event,) = guard_events(tmp_path)
    # Measured from the base: organa's norm is its step's, not the size of its whole weights (~39).
    assert event["site"] == "organa" and event["action"] == "clipped"
    assert event["norm"] == pytest.approx(10.0 * math.sqrt(ENTRIES))
    assert event["bound"] == pytest.approx(3 * 0.2 * math.sqrt(ENTRIES))  # 3 x the lower median change
    # Clipped towards the base: organa counts as base + 0.6, so the average moves by (0.1 + 0.2 + 0.6) / 3.
    assert metrics[wire.SITES_MERGED] == 3
    assert_weights(arrays, stepped(BASE, 0.3))


def test_the_next_round_measures_changes_from_the_previous_combined_update(tmp_path):
    strategy = full_strategy(tmp_path)
    first, _ = strategy.aggregate_train(1, [reply(s, stepped(BASE, step)) for s, step in STEPS.items()])
    combined = first.to_torch_state_dict()
    assert all(torch.equal(strategy.reference[k], combined[k]) for k in combined)  # the reference moved
    # Round 2: each site changes the combined update by the same steps. Measured from the base they would be
    # 0.4, 0.5 and 10.3; measured from where the round started they are 0.1, 0.2 and 10 again.
    second, _ = strategy.aggregate_train(2, [reply(s, stepped(combined, step)) for s, step in STEPS.items()])
    round_two = [e for e in guard_events(tmp_path) if e["round"] == 2]
    assert [(e["site"], e["action"]) for e in round_two] == [("organa", "clipped")]
    assert round_two[0]["norm"] == pytest.approx(10.0 * math.sqrt(ENTRIES), rel=1e-5)
    assert round_two[0]["bound"] == pytest.approx(0.6 * math.sqrt(ENTRIES), rel=1e-5)
    assert_weights(second, stepped(combined, 0.3))  # clipped towards round 1's combined update, not the base


def test_reject_leaves_the_oversized_backbone_out(tmp_path):
    strategy = full_strategy(tmp_path, **{"guard.action": "reject"})
    arrays, metrics = strategy.aggregate_train(1, [reply(s, stepped(BASE, step)) for s, step in STEPS.items()])
    assert metrics[wire.SITES_MERGED] == 2 and strategy.status["organa"]["state"] == "rejected"
    assert_weights(arrays, stepped(BASE, 0.15))


def test_the_guard_clips_a_full_update_to_exactly_the_bound_from_its_reference():
    kind = get_kind("full").server(parse_run_config({"strategy": "vit_avg"}).kind_context())
    updates = {s: stepped(BASE, step) for s, step in STEPS.items()}
    kept, decisions = guard_updates(updates, kind, BASE, GuardSettings())
    bound = decisions[0].bound
    assert [d.action for d in decisions] == ["kept", "kept", "clipped"]
    assert kind.norm(kept["organa"], BASE) == pytest.approx(bound, rel=1e-5)
    assert kind.norm(kept["blood"], BASE) == pytest.approx(0.1 * math.sqrt(ENTRIES), rel=1e-5)
    with pytest.raises(ValueError, match="measured against the weights the round started from"):
        guard_updates(updates, kind, None, GuardSettings())  # a coordinator that forgot the reference
