"""new_task's own app pair: learning curves come back through the trust boundary (server/replies.py)."""

import json
import math

import pytest
from flwr.app import ConfigRecord, MessageType, MetricRecord, RecordDict
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.hostile_replies import forged_record
from fl_medlego import wire
from fl_medlego.cli.local_run import run_local_federation, site_nodes
from fl_medlego.clients.new_task_app import app as new_task_site
from fl_medlego.errors import UserError
from fl_medlego.results import RunResults
from fl_medlego.server.inprocess_grid import delivered_message as message
from fl_medlego.server.new_task_app import main as new_task_main
from fl_medlego.server.replies import read_curve_reply

CURVE = f"{MessageType.TRAIN}.{wire.CURVE_ACTION}"
NODES = {"breast": 11}


def curve_reply(metrics, site="breast", node=11, error=""):
    record = forged_record(MetricRecord, metrics) if isinstance(metrics, dict) else metrics
    content = None if error else RecordDict({wire.METRICS: record, wire.SITE_INFO: ConfigRecord({wire.SITE: site})})
    return message(content, CURVE, src=node, dst=0, error=error)


def honest(epochs=3):
    return {wire.VAL_ACC: [0.5] * epochs, wire.TEST_ACC: [0.25] * epochs, wire.NUM_EXAMPLES: 40.0}


def test_an_honest_curve_is_read_as_it_was_sent():
    reply = read_curve_reply(curve_reply(honest()), NODES, epochs=3)
    assert reply.site == "breast" and reply.curve == {wire.VAL_ACC: [0.5] * 3, wire.TEST_ACC: [0.25] * 3}


@pytest.mark.parametrize("metrics,reason", [
    ({wire.VAL_ACC: [0.5] * 3, wire.NUM_EXAMPLES: 40.0}, "'test-acc' must be a list of 3"),
    ({**honest(), wire.TEST_ACC: [0.2] * 2}, "list of 3 ACC values.*of 2"),
    ({**honest(), wire.TEST_ACC: [0.2, float("nan"), 0.3]}, "not an ACC"),
    ({**honest(), wire.VAL_ACC: [0.2, 1.5, 0.3]}, "not an ACC"),
    ({**honest(), wire.VAL_ACC: 0.5}, "must be a list"),
    ({**honest(), wire.VAL_ACC: ["a", "b", "c"]}, "must be a list|not an ACC"),
])
def test_a_malformed_curve_is_a_rejection_with_its_reason(metrics, reason):
    with pytest.raises(wire.InvalidUpdate, match=reason) as caught:
        read_curve_reply(curve_reply(metrics), NODES, epochs=3)
    assert caught.value.site == "breast"


def test_a_reply_without_metrics_an_error_reply_and_a_stranger_are_rejections():
    no_metrics = message(RecordDict({wire.SITE_INFO: ConfigRecord({wire.SITE: "breast"})}), CURVE, src=11, dst=0)
    for reply, reason in ((no_metrics, "no 'metrics' record"), (curve_reply({}, error="boom"), "reported an error"),
                          (curve_reply(honest(), node=99), "does not host")):
        with pytest.raises(wire.InvalidUpdate, match=reason):
            read_curve_reply(reply, NODES, epochs=3)


VALUES = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-10**12, 10**12), st.text(max_size=5),
                   st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=5),
                   st.lists(st.integers(-5, 5), max_size=5), st.booleans())


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from([wire.VAL_ACC, wire.TEST_ACC, wire.NUM_EXAMPLES, "other"]), VALUES))
def test_whatever_a_curve_reply_holds_only_a_rejection_escapes(metrics):
    try:  # past Flower's own checks, as a forged message decodes
        reply = read_curve_reply(curve_reply(metrics), NODES, epochs=3)
    except wire.InvalidUpdate:
        return
    for values in reply.curve.values():  # accepted: exactly what a curve must be
        assert len(values) == 3 and all(isinstance(v, float) and math.isfinite(v) and 0 <= v <= 1 for v in values)


TINY = {"sites": "breast,pneumonia,blood", "num-rounds": 1, "train.local-epochs": 1, "data.max-train": 40,
        "data.max-eval": 40, "lora.rank": 2, "new-task.site": "breast", "new-task.epochs": 2}


def _run(tmp_path, tamper=None):
    config = {**TINY, "output-dir": str(tmp_path / "out")}
    return run_local_federation(config, tmp_path / "state", client_app=new_task_site, main=new_task_main,
                                tamper=tamper)


def test_the_new_task_apps_write_both_learning_curves(tmp_path):
    _run(tmp_path)
    (run_dir,) = (tmp_path / "out").iterdir()
    curves = json.loads((run_dir / "new_task.json").read_text())
    assert curves["site"] == "breast" and set(curves["curves"]) == {"from merged adapter", "from base model"}
    assert all(len(c[wire.TEST_ACC]) == 2 for c in curves["curves"].values())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary["sites"]) == {"pneumonia", "blood"}  # the held-out site is not merged


def _shortened_curve(reply):
    if reply.has_error() or reply.metadata.message_type != CURVE:
        return reply
    metrics = {**reply.content[wire.METRICS], wire.TEST_ACC: [0.5]}
    forged = message(RecordDict({**reply.content, wire.METRICS: MetricRecord(metrics)}), CURVE,
                     src=reply.metadata.src_node_id, dst=0)
    forged.metadata.__dict__["_reply_to_message_id"] = reply.metadata.reply_to_message_id
    return forged


def test_a_malformed_curve_fails_the_run_with_its_reason_not_a_key_error(tmp_path):
    with pytest.raises(RuntimeError, match=r"learning curve .* is not usable: .*'test-acc' must be a list of 2"):
        _run(tmp_path, tamper={"breast": _shortened_curve})


def test_the_curves_are_written_while_the_run_still_holds_its_folder(tmp_path, monkeypatch):
    from fl_medlego.server import new_task_app

    held = []

    def figure_while_locked(site, curves, path):
        with pytest.raises(UserError, match="is in use by a live run"):  # a second run is refused: still held
            RunResults(path.parent, {}, resume=True)
        held.append(path.name)
        return draw(site, curves, path)

    draw = new_task_app.learning_curve_figure
    monkeypatch.setattr(new_task_app, "learning_curve_figure", figure_while_locked)
    _run(tmp_path)
    assert held == ["new_task.png"]
    (run_dir,) = (tmp_path / "out").iterdir()
    assert (run_dir / "new_task.json").is_file()
    settings = json.loads((run_dir / "settings.json").read_text())
    RunResults(run_dir, settings, resume=True).release()  # released once the run ended


def test_a_held_out_site_without_a_node_fails_before_any_round(tmp_path):
    config = {**TINY, "output-dir": str(tmp_path / "out"), "node-wait-timeout": 0.1}
    unhosted = site_nodes(config)["breast"]

    def without_the_held_out_node(grid, context):
        del grid.nodes[unhosted]
        return new_task_main(grid, context)

    with pytest.raises(UserError, match=r"no node hosts the held-out site\(s\) \['breast'\]"):
        run_local_federation(config, tmp_path / "state", client_app=new_task_site, main=without_the_held_out_node)
    (run_dir,) = (tmp_path / "out").iterdir()
    assert not list(run_dir.glob("round-*")) and not (tmp_path / "state").exists()  # no site trained
