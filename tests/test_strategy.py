"""The server strategy on mock replies: invalid ones are dropped with a reason, the rest are merged."""

import json

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict

from fl_medlego import wire
from fl_medlego.cli.local_run import set_task_identity
from fl_medlego.config import parse_run_config
from fl_medlego.lora import Adapter
from fl_medlego.merging import merge_adapters
from fl_medlego.results import RunResults
from fl_medlego.server.inprocess_grid import delivered_message as message
from fl_medlego.server.strategy import SiteMergeStrategy

from conftest import random_factors

TEMPLATE = {"blocks.0.attn.qkv.q": (8, 6), "blocks.0.attn.qkv.v": (8, 6)}
SITES = {"blood": 11, "breast": 12, "organa": 13}


@pytest.fixture
def strategy(tmp_path):
    set_task_identity()
    cfg = parse_run_config({"merge.energy": 1.0, "merge.max-rank": 0, "min-sites": 1})
    return SiteMergeStrategy(SITES, TEMPLATE, cfg, RunResults(tmp_path, {"strategy": "medlego"}), "abc")


def adapter(seed):
    gen = torch.Generator().manual_seed(seed)
    return Adapter({n: random_factors(*s, 2, gen) for n, s in TEMPLATE.items()}, scale=2.0)


def train_reply(site, node, a, base="abc", examples=100.0):
    content = RecordDict({
        wire.ARRAYS: ArrayRecord(wire.encode_adapter(a)),
        wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: examples, wire.VAL_ACC: 0.5, wire.TRAIN_LOSS: 1.0,
                                    wire.BEST_EPOCH: 2.0}),
        wire.SITE_INFO: ConfigRecord({wire.SITE: site, wire.BASE_FINGERPRINT: base, wire.DATA_SOURCE: "test"}),
    })
    return message(content, MessageType.TRAIN, src=node, dst=0)


def eval_reply(site, node, acc=0.5, specialist_acc=None):
    own = {} if specialist_acc is None else {"specialist-acc": specialist_acc, "specialist-auc": 0.95}
    metrics = MetricRecord({"acc": acc, "auc": 0.9, "f1": 0.5, "loss": 0.3, wire.NUM_EXAMPLES: 10.0, **own})
    return message(RecordDict({wire.METRICS: metrics, wire.SITE_INFO: ConfigRecord({wire.SITE: site})}),
                   MessageType.EVALUATE, src=node, dst=0)


def test_configure_train_addresses_each_site_on_its_node(strategy):
    messages = list(strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid=None))
    assert {(m.metadata.dst_node_id, m.content[wire.CONFIG][wire.SITE]) for m in messages} == {
        (11, "blood"), (12, "breast"), (13, "organa")}
    assert all(m.content[wire.CONFIG][wire.SERVER_ROUND] == 1 for m in messages)


def test_valid_replies_are_merged_exactly(strategy, tmp_path):
    a, b = adapter(1), adapter(2)
    arrays, metrics = strategy.aggregate_train(1, [train_reply("blood", 11, a), train_reply("breast", 12, b)])
    merged = wire.decode_adapter(arrays.to_torch_state_dict(), TEMPLATE)
    expected = merge_adapters([a, b], "medlego", energy=1.0)
    for name in TEMPLATE:
        torch.testing.assert_close(merged.factors[name].delta(), expected.factors[name].delta())
    assert metrics[wire.SITES_MERGED] == 2
    # Written under a temporary name until the round is evaluated, then moved into place with its state.
    assert (tmp_path / "round-001.tmp" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "round-001").exists()
    strategy.aggregate_evaluate(1, [eval_reply("blood", 11), eval_reply("breast", 12)])
    assert not (tmp_path / "round-001").exists()  # committed by Strategy.start's evaluate_fn, after evaluation
    strategy.commit_round(1, arrays)
    assert (tmp_path / "round-001" / "adapter" / "adapter_model.safetensors").is_file()
    assert json.loads((tmp_path / "round-001" / "round.json").read_text())["status"]["blood"]["state"] == "merged"
    assert not (tmp_path / "round-001.tmp").exists()


def test_invalid_replies_are_rejected_and_the_round_goes_on(strategy, tmp_path):
    good = adapter(1)
    nan = adapter(2)
    nan.factors["blocks.0.attn.qkv.q"].A[0, 0] = float("nan")
    missing = Adapter({"blocks.0.attn.qkv.q": adapter(3).factors["blocks.0.attn.qkv.q"]})
    replies = [
        train_reply("blood", 11, good),
        train_reply("breast", 12, nan),
        train_reply("organa", 13, missing),
        train_reply("organa", 12, good),  # node 12 does not host organa
        message(None, MessageType.TRAIN, src=13, dst=0, error="out of memory"),
        train_reply("blood", 11, good, examples=0.0),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert metrics[wire.SITES_MERGED] == 1
    merged = wire.decode_adapter(arrays.to_torch_state_dict(), TEMPLATE)
    torch.testing.assert_close(merged.factors["blocks.0.attn.qkv.v"].delta(),
                               good.folded()["blocks.0.attn.qkv.v"].delta(), rtol=1e-5, atol=1e-5)
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    rejected = [(e["node"], e["site"], e["reason"]) for e in events if e["event"] == "rejected"]
    # Each rejection names the node and, once the reply is attributed to a site it hosts, that site.
    expected = [(12, "breast", "NaN or Inf"), (13, "organa", "one per adapted matrix"),
                (12, None, "does not host"), (13, None, "out of memory"), (11, "blood", "outside [1")]
    assert len(rejected) == len(expected)
    for (node, site, reason), (want_node, want_site, want_reason) in zip(rejected, expected):
        assert (node, site) == (want_node, want_site) and want_reason in reason, (node, site, reason)


def test_a_reply_without_a_declared_metric_is_rejected(strategy, tmp_path):
    bad = train_reply("breast", 12, adapter(2))
    del bad.content[wire.METRICS][wire.TRAIN_LOSS]
    _, metrics = strategy.aggregate_train(1, [train_reply("blood", 11, adapter(1)), bad])
    assert metrics[wire.SITES_MERGED] == 1
    assert f"metric '{wire.TRAIN_LOSS}'" in (tmp_path / "metrics.jsonl").read_text()


def test_a_site_on_another_base_model_is_rejected(strategy):
    replies = [train_reply("blood", 11, adapter(1)), train_reply("breast", 12, adapter(2)),
               train_reply("organa", 13, adapter(3), base="ffff")]
    _, metrics = strategy.aggregate_train(1, replies)
    assert metrics[wire.SITES_MERGED] == 2


def test_a_round_below_min_sites_fails_and_says_why(strategy, tmp_path):
    from fl_medlego.server.strategy import RoundFailed

    with pytest.raises(RoundFailed, match=r"combined 0 of 3 sites.*blood: missing \(no reply"):
        strategy.aggregate_train(1, [message(None, MessageType.TRAIN, src=11, dst=0, error="x")])
    assert list(strategy.configure_evaluate(1, ArrayRecord(), ConfigRecord(), grid=None)) == []
    assert "round-failed" in (tmp_path / "metrics.jsonl").read_text()


def test_round_one_needs_every_declared_site_by_default(tmp_path):
    from fl_medlego.server.strategy import RoundFailed

    set_task_identity()
    strategy = SiteMergeStrategy(SITES, TEMPLATE, parse_run_config({}), RunResults(tmp_path, {}), "abc",
                                 declared=[*SITES, "pneumonia"])
    with pytest.raises(RoundFailed, match=r"fewer than min-sites requires \(4\).*pneumonia: missing \(no node"):
        strategy.aggregate_train(1, [train_reply(s, n, adapter(n)) for s, n in SITES.items()])
    assert strategy.status["blood"]["state"] == "accepted" and strategy.status["pneumonia"]["state"] == "missing"
    # After round 1, half of the declared sites (rounded up) are enough.
    _, metrics = strategy.aggregate_train(2, [train_reply("blood", 11, adapter(1)), train_reply("breast", 12,
                                                                                                adapter(2))])
    assert metrics[wire.SITES_MERGED] == 2 and strategy.status["blood"]["state"] == "merged"


def test_a_second_reply_for_a_site_is_rejected(strategy, tmp_path):
    a, b = adapter(1), adapter(2)
    arrays, metrics = strategy.aggregate_train(1, [train_reply("blood", 11, a), train_reply("blood", 11, b)])
    assert metrics[wire.SITES_MERGED] == 1
    merged = wire.decode_adapter(arrays.to_torch_state_dict(), TEMPLATE)
    torch.testing.assert_close(merged.factors["blocks.0.attn.qkv.q"].delta(), a.folded()["blocks.0.attn.qkv.q"].delta(),
                               rtol=1e-5, atol=1e-5)  # the first reply is the one merged
    assert "a second reply in round 1" in (tmp_path / "metrics.jsonl").read_text()


def test_evaluation_collects_specialist_and_merged_metrics(strategy):
    def reply(site, node, acc, own):
        metrics = MetricRecord({"acc": acc, "auc": 0.9, "f1": 0.5, "loss": 0.3, wire.NUM_EXAMPLES: 10.0,
                                "specialist-acc": own, "specialist-auc": 0.95})
        return message(RecordDict({wire.METRICS: metrics, wire.SITE_INFO: ConfigRecord({wire.SITE: site})}),
                       MessageType.EVALUATE, src=node, dst=0)

    mean = strategy.aggregate_evaluate(2, [reply("blood", 11, 0.6, 0.8), reply("breast", 12, 0.7, 0.7)])
    assert mean["acc"] == pytest.approx(0.65)
    assert strategy.specialist["blood"]["acc"] == 0.8 and strategy.merged["blood"]["acc"] == 0.6
    summary = strategy.results.write_summary(strategy.specialist, strategy.merged)
    assert summary["sites"]["blood"]["normalized_acc"] == pytest.approx(0.75)
    assert summary["mean_normalized_acc"] == pytest.approx((0.75 + 1.0) / 2)


def test_each_specialist_is_evaluated_once(strategy):
    """A specialist does not change after its site's first training: evaluation asks for it until it came."""
    def asked(server_round):
        arrays = ArrayRecord(wire.encode_adapter(adapter(1)))
        messages = strategy.configure_evaluate(server_round, arrays, ConfigRecord(), grid=None)
        return {m.content[wire.CONFIG][wire.SITE]: m.content[wire.CONFIG][wire.WITH_SPECIALIST] for m in messages}

    assert asked(1) == {"blood": True, "breast": True, "organa": True}
    strategy.aggregate_evaluate(1, [eval_reply("blood", 11, 0.6, specialist_acc=0.8), eval_reply("breast", 12, 0.7)])
    assert asked(2) == {"blood": False, "breast": True, "organa": True}
    # Specialist numbers a site sends unasked do not replace the ones it gave when asked.
    strategy.aggregate_evaluate(2, [eval_reply("blood", 11, 0.6, specialist_acc=0.1)])
    assert strategy.specialist["blood"]["acc"] == 0.8


def test_the_same_strategy_averages_full_backbones_and_rejects_bad_ones(tmp_path):
    set_task_identity()
    template = {"w": (2, 3), "b": (3,)}
    cfg = parse_run_config({"strategy": "vit_avg", "min-sites": 1})
    reference = {"w": torch.zeros(2, 3), "b": torch.zeros(3)}
    strategy = SiteMergeStrategy(SITES, template, cfg, RunResults(tmp_path, {}), "abc", reference)

    def reply(site, node, value):
        state = {"w": torch.full((2, 3), value), "b": torch.full((3,), value)}
        content = RecordDict({
            wire.ARRAYS: ArrayRecord(state),
            wire.METRICS: MetricRecord({wire.NUM_EXAMPLES: 10.0, wire.VAL_ACC: 0.5, wire.TRAIN_LOSS: 1.0,
                                        wire.BEST_EPOCH: 1.0}),
            wire.SITE_INFO: ConfigRecord({wire.SITE: site, wire.BASE_FINGERPRINT: "abc", wire.DATA_SOURCE: "x"}),
        })
        return message(content, MessageType.TRAIN, src=node, dst=0)

    arrays, metrics = strategy.aggregate_train(1, [reply("blood", 11, 1.0), reply("breast", 12, 3.0),
                                                   reply("organa", 13, float("nan"))])
    assert metrics[wire.SITES_MERGED] == 2
    averaged = arrays.to_torch_state_dict()
    assert torch.equal(averaged["w"], torch.full((2, 3), 2.0)) and torch.equal(averaged["b"], torch.full((3,), 2.0))
    assert (tmp_path / "round-001.tmp" / "backbone.safetensors").is_file()
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(e["site"], "NaN or Inf" in e["reason"]) for e in events if e["event"] == "rejected"] == [("organa", True)]


def test_an_error_reply_from_the_superlink_is_attributed_to_its_site(strategy, tmp_path):
    from flwr.app import Error
    from flwr.app.message.message import make_message

    messages = strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid=None)
    for i, msg in enumerate(messages):  # what Flower does when it pushes them
        msg.metadata.__dict__["_message_id"] = f"id-{i}"
    breast = next(i for i, m in enumerate(messages) if m.content[wire.CONFIG][wire.SITE] == "breast")
    dead = message(None, MessageType.TRAIN, src=0, dst=0, error="x").metadata
    dead.__dict__["_reply_to_message_id"] = f"id-{breast}"
    unavailable = make_message(dead, error=Error(code=5, reason="Error: Node Unavailable - no heartbeat"))
    strategy.aggregate_train(1, [train_reply("blood", 11, adapter(1)), unavailable])
    assert strategy.status["breast"] == {"state": "rejected", "round": 1, "reason": strategy.status["breast"]["reason"]}
    assert "Node Unavailable" in strategy.status["breast"]["reason"]
    assert strategy.status["organa"]["state"] == "missing"


def test_a_resumed_strategy_goes_on_counting_rounds(tmp_path):
    set_task_identity()
    cfg = parse_run_config({"min-sites": 1})
    state = {"status": {"blood": {"state": "merged", "round": 2, "reason": ""}},
             "specialist": {"blood": {"acc": 0.5}}, "merged": {"blood": {"acc": 0.4, "round": 2}}}
    strategy = SiteMergeStrategy(SITES, TEMPLATE, cfg, RunResults(tmp_path, {}), "abc", resumed=(2, state))
    (first, *_) = strategy.configure_train(1, ArrayRecord(), ConfigRecord(), grid=None)
    assert first.content[wire.CONFIG][wire.SERVER_ROUND] == 3
    strategy.aggregate_train(1, [train_reply("blood", 11, adapter(1))])
    strategy.aggregate_evaluate(1, [eval_reply("blood", 11)])
    strategy.commit_round(1, ArrayRecord())  # Strategy.start's evaluate_fn, after the round's evaluation
    assert (tmp_path / "round-003" / "round.json").is_file() and strategy.specialist["blood"]["acc"] == 0.5


def test_a_run_folder_resumes_only_with_its_own_settings(tmp_path):
    results = RunResults(tmp_path, {"seed": 0})
    (tmp_path / "round-002.tmp").mkdir()  # a round that was being written when the run was killed
    results.finish_round(1, {"round": 1})
    results.release()  # the run ended: its folder is free
    with pytest.raises(ValueError, match="other settings"):
        RunResults(tmp_path, {"seed": 1}, resume=True)
    again = RunResults(tmp_path, {"seed": 0}, resume=True)
    assert again.last_complete_round() == (1, {"round": 1}) and not (tmp_path / "round-002.tmp").exists()
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        RunResults(tmp_path / "nothing", {"seed": 0}, resume=True)


def test_claimed_example_counts_are_capped_before_weighting(tmp_path):
    set_task_identity()
    cfg = parse_run_config({"merge.weighting": "examples", "merge.energy": 1.0, "merge.max-rank": 0,
                            "min-sites": 1})
    strategy = SiteMergeStrategy(SITES, TEMPLATE, cfg, RunResults(tmp_path, {}), "abc")
    replies = [train_reply("blood", 11, adapter(1), examples=100.0), train_reply("breast", 12, adapter(2),
                                                                                examples=100.0),
               train_reply("organa", 13, adapter(3), examples=1e8)]  # the most the schema allows
    arrays, _ = strategy.aggregate_train(1, replies)
    merged = json.loads((tmp_path / "round-001.tmp" / "adapter" / "adapter_config.json").read_text())
    weights = merged["metadata"]["merge"]["weights"]
    assert weights[2] == pytest.approx(200 / 400)  # capped at 2 x the lower median claim, not 1e8 / (1e8 + 200)


def test_the_base_comes_from_the_run_not_from_a_majority_of_replies(strategy):
    from fl_medlego.server.strategy import RoundFailed

    replies = [train_reply(s, n, adapter(n), base="ffff") for s, n in SITES.items()]  # everyone agrees, wrongly
    with pytest.raises(RoundFailed, match="differs from the federation's abc"):
        strategy.aggregate_train(1, replies)


def test_evaluation_replies_with_impossible_metrics_are_dropped(strategy):
    def reply(site, node, acc):
        metrics = MetricRecord({"acc": acc, "auc": 0.9, "f1": 0.5, "loss": 0.3, wire.NUM_EXAMPLES: 10.0})
        return message(RecordDict({wire.METRICS: metrics, wire.SITE_INFO: ConfigRecord({wire.SITE: site})}),
                       MessageType.EVALUATE, src=node, dst=0)

    mean = strategy.aggregate_evaluate(1, [reply("blood", 11, 0.6), reply("breast", 12, 1e9)])
    assert mean["acc"] == pytest.approx(0.6) and "breast" not in strategy.merged


class FakeGrid:
    """Nodes that answer the site query with the given site lists."""

    def __init__(self, claims: dict[int, str]) -> None:
        self.claims = claims

    def get_node_ids(self):
        return list(self.claims)

    def send_and_receive(self, messages, timeout):
        replies = []
        for msg in messages:
            node = msg.metadata.dst_node_id
            content = RecordDict({wire.SITE_INFO: ConfigRecord({wire.SITES: self.claims[node]})})
            replies.append(message(content, MessageType.QUERY, src=node, dst=0))
        return replies


def test_two_nodes_claiming_one_site_is_an_error_unless_the_coordinator_binds_it():
    from fl_medlego.server.discovery import discover_sites

    set_task_identity()
    grid = FakeGrid({1: "blood,breast", 2: "blood"})  # node 2 claims blood too
    with pytest.raises(RuntimeError, match="'blood' is claimed by nodes 1 and 2"):
        discover_sites(grid, ["blood", "breast"], wait_s=0)
    assert discover_sites(grid, ["blood", "breast"], wait_s=0, pinned={"blood": 2}) == {"blood": 2, "breast": 1}


def test_a_round_whose_update_too_few_sites_evaluate_fails(strategy):
    from fl_medlego.server.strategy import RoundFailed

    strategy.cfg = parse_run_config({"merge.energy": 1.0, "merge.max-rank": 0, "min-sites": 2})
    strategy.aggregate_train(1, [train_reply("blood", 11, adapter(1)), train_reply("breast", 12, adapter(2))])
    with pytest.raises(RoundFailed, match="only 1 sites evaluated"):
        strategy.aggregate_evaluate(1, [eval_reply("blood", 11), eval_reply("breast", 12, acc=7.0)])
    assert strategy.status["breast"]["reason"].startswith("evaluation:")


def test_unbalanced_factors_cannot_blow_up_a_factor_merge(tmp_path):
    from fl_medlego.lora import Factors
    from fl_medlego.server.strategy import RoundFailed

    set_task_identity()
    cfg = parse_run_config({"strategy": "lora_avg", "lora.rank": 2, "min-sites": 1})
    strategy = SiteMergeStrategy(SITES, TEMPLATE, cfg, RunResults(tmp_path, {}), "abc")
    honest = [adapter(1), adapter(2)]
    same = adapter(3)
    tilted = Adapter({n: Factors(f.B * 1e18, f.E, f.A * 1e-18) for n, f in same.factors.items()}, scale=same.scale)
    replies = [train_reply("blood", 11, honest[0]), train_reply("breast", 12, honest[1]),
               train_reply("organa", 13, tilted)]  # the same update as `same`: it passes the norm guard
    with pytest.raises(RoundFailed, match="unbalanced"):
        strategy.aggregate_train(1, replies)


def test_an_undefined_auc_is_an_honest_answer_an_undefined_acc_is_not(strategy):
    def reply(site, node, acc, auc):
        metrics = MetricRecord({"acc": acc, "auc": auc, "f1": 0.5, "loss": 0.3, wire.NUM_EXAMPLES: 10.0})
        return message(RecordDict({wire.METRICS: metrics, wire.SITE_INFO: ConfigRecord({wire.SITE: site})}),
                       MessageType.EVALUATE, src=node, dst=0)

    strategy.aggregate_evaluate(1, [reply("blood", 11, 0.6, float("nan")), reply("breast", 12, float("nan"), 0.5)])
    assert "blood" in strategy.merged and "breast" not in strategy.merged  # a one-class test split has no AUC


def test_settings_json_holds_every_setting_and_a_resume_may_change_only_where_and_how_long_it_waits(tmp_path):
    from fl_medlego.config import settings_table
    from fl_medlego.errors import ConfigError
    from fl_medlego.server.app import RESUMABLE_CHANGES

    table = settings_table(parse_run_config({}))
    RunResults(tmp_path, table)
    assert json.loads((tmp_path / "settings.json").read_text()) == json.loads(json.dumps(table, default=str))
    assert set(RESUMABLE_CHANGES) <= set(table)  # none is dropped: the file says what the run used
    RunResults(tmp_path, {**table, "round-timeout": 60, "min-sites": 2}, resume=True, may_change=RESUMABLE_CHANGES)
    with pytest.raises(ConfigError, match=r"\(num-rounds differ\)"):
        RunResults(tmp_path, {**table, "num-rounds": 9}, resume=True, may_change=RESUMABLE_CHANGES)
