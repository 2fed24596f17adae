"""The ClientApp handlers on mock messages: training, evaluation, site checks, state between rounds."""

import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, MessageType, RecordDict

from fl_medlego import wire
from fl_medlego.clients.app import evaluate, query, train
from fl_medlego.config import parse_run_config
from fl_medlego.site import adapter_template

from flower_mocks import message

RUN_CONFIG = {"sites": "breast,pneumonia,blood", "train.local-epochs": 1, "data.max-train": 32,
              "data.max-eval": 32, "lora.rank": 2}


def context(partition_id=0, state=None):
    return Context(run_id=1, node_id=5, node_config={"partition-id": partition_id, "num-partitions": 2},
                   state=state if state is not None else RecordDict(), run_config=dict(RUN_CONFIG))


def request(kind, site, arrays=None, **config):
    content = RecordDict({wire.ARRAYS: arrays or ArrayRecord(),
                          wire.CONFIG: ConfigRecord({wire.SITE: site, wire.SERVER_ROUND: 1, **config})})
    return message(content, kind, src=0, dst=5)


def test_query_reports_the_sites_of_this_node():
    reply = query(message(RecordDict(), MessageType.QUERY, dst=5), context(0))
    assert reply.content[wire.SITE_INFO][wire.SITES] == "breast,blood"
    reply = query(message(RecordDict(), MessageType.QUERY, dst=5), context(1))
    assert reply.content[wire.SITE_INFO][wire.SITES] == "pneumonia"


def test_train_then_evaluate_keeps_head_and_data_at_the_site():
    ctx = context(0)
    reply = train(request(MessageType.TRAIN, "breast"), ctx)
    tensors = reply.content[wire.ARRAYS].to_torch_state_dict()
    adapter = wire.decode(tensors, adapter_template(parse_run_config(RUN_CONFIG)))  # only factors
    assert all(f.rank == 2 for f in adapter.factors.values())
    metrics = reply.content[wire.METRICS]
    assert metrics[wire.NUM_EXAMPLES] == 32 and 0 <= metrics["val-acc"] <= 1
    assert "bundled sample" in reply.content[wire.SITE_INFO][wire.DATA_SOURCE]
    assert {"breast.head", "breast.specialist", "breast.specialist-head"} <= set(ctx.state)

    ev = evaluate(request(MessageType.EVALUATE, "breast", reply.content[wire.ARRAYS],
                          **{wire.WITH_SPECIALIST: True}), ctx)
    m = ev.content[wire.METRICS]
    # The merged adapter here is the site's own, evaluated with its own head: same numbers as the specialist.
    assert m["acc"] == pytest.approx(m["specialist-acc"]) and m[wire.NUM_EXAMPLES] == 32

    # Round 2 starts from a "merged" adapter (here: the site's own) and keeps the round-1 specialist.
    reply2 = train(request(MessageType.TRAIN, "breast", reply.content[wire.ARRAYS]), ctx)
    assert reply2.content[wire.METRICS][wire.NUM_EXAMPLES] == 32


def test_a_node_refuses_a_site_it_does_not_host():
    with pytest.raises(ValueError, match="not 'pneumonia'"):
        train(request(MessageType.TRAIN, "pneumonia"), context(0))


def test_evaluate_before_training_is_a_clear_error():
    with pytest.raises(ValueError, match="has not trained yet"):
        evaluate(request(MessageType.EVALUATE, "breast"), context(0))


def test_deployment_node_names_its_site():
    ctx = Context(run_id=1, node_id=5, node_config={"site": "blood"}, state=RecordDict(), run_config=RUN_CONFIG)
    reply = query(message(RecordDict(), MessageType.QUERY, dst=5), ctx)
    assert reply.content[wire.SITE_INFO][wire.SITES] == "blood"
    bad = Context(run_id=1, node_id=5, node_config={"site": "derma"}, state=RecordDict(), run_config=RUN_CONFIG)
    with pytest.raises(ValueError, match="does not declare"):
        query(message(RecordDict(), MessageType.QUERY, dst=5), bad)


def test_full_weight_mode_sends_the_backbone_and_keeps_its_specialist():
    from fl_medlego.full_finetune import backbone_template

    ctx = Context(run_id=1, node_id=5, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                  run_config={**RUN_CONFIG, "strategy": "vit_avg"})
    reply = train(request(MessageType.TRAIN, "breast"), ctx)
    backbone = reply.content[wire.ARRAYS].to_torch_state_dict()
    template = backbone_template(parse_run_config({**RUN_CONFIG, "strategy": "vit_avg"}))
    assert {k: tuple(v.shape) for k, v in backbone.items()} == template
    assert "breast.specialist-backbone" in ctx.state
    ev = evaluate(request(MessageType.EVALUATE, "breast", reply.content[wire.ARRAYS], **{wire.WITH_SPECIALIST: True}),
                  ctx)
    assert ev.content[wire.METRICS]["acc"] == pytest.approx(ev.content[wire.METRICS]["specialist-acc"])
