"""The ClientApp handlers on mock messages: training, evaluation, site checks, state between rounds."""

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MessageType, RecordDict
from safetensors.torch import save_file

from fl_medlego import wire
from fl_medlego.clients.app import evaluate, open_site, query, train
from fl_medlego.clients.new_task_app import learning_curve
from fl_medlego.clients.state import save_state
from fl_medlego.config import parse_run_config
from fl_medlego.files import read_tensors
from fl_medlego.kinds import SiteState
from fl_medlego.server.inprocess_grid import delivered_message as message

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


def saved(root, site, server_round, part):
    from safetensors.torch import load_file

    folder = "specialist" if part.startswith("specialist") else f"round-{server_round:03d}"
    return load_file(str(root / "run-1" / site / folder / f"{part}.safetensors"))


def specialist_val_acc(root, cfg, site):
    """The validation accuracy of the specialist the site kept (its best epoch), recomputed from its files."""
    from fl_medlego.site import load_site_data
    from fl_medlego.train import evaluate as evaluate_model

    data = load_site_data(cfg, site)
    specialist = cfg.kind_server().decode(saved(root, site, 1, "specialist"), cfg.kind_server().template())
    model = cfg.kind_site().build_model(data, specialist, saved(root, site, 1, "specialist-head"))
    return evaluate_model(model, data.val, data.task, cfg.image_size)["acc"]


def test_train_then_evaluate_keeps_head_and_data_at_the_site(site_state_in_tmp):
    ctx = context(0)
    reply = train(request(MessageType.TRAIN, "breast"), ctx)
    tensors = reply.content[wire.ARRAYS].to_torch_state_dict()
    cfg = parse_run_config(RUN_CONFIG)
    adapter = wire.decode_adapter(tensors, cfg.kind_server().template())  # only factors
    assert all(f.rank == 2 for f in adapter.factors.values())
    metrics = reply.content[wire.METRICS]
    assert metrics[wire.NUM_EXAMPLES] == 32
    assert metrics[wire.VAL_ACC] == pytest.approx(specialist_val_acc(site_state_in_tmp, cfg, "breast"))
    assert "bundled sample" in reply.content[wire.SITE_INFO][wire.DATA_SOURCE]
    assert len(ctx.state) == 0  # nothing in the node's context: the state is in node-local files
    site_folder = site_state_in_tmp / "run-1" / "breast"
    # The round's head and adapter folder, and the specialist (also as an adapter folder for merge / edit).
    assert {p.name for p in (site_folder / "round-001").iterdir()} == {"head.safetensors", "adapter"}
    assert {p.name for p in (site_folder / "specialist").iterdir()} == {"specialist.safetensors",
                                                                        "specialist-head.safetensors", "adapter"}

    ev = evaluate(request(MessageType.EVALUATE, "breast", reply.content[wire.ARRAYS],
                          **{wire.WITH_SPECIALIST: True}), ctx)
    m = ev.content[wire.METRICS]
    # The merged adapter here is the site's own, evaluated with its own head: same numbers as the specialist.
    assert m["acc"] == pytest.approx(m["specialist-acc"]) and m[wire.NUM_EXAMPLES] == 32

    # Round 2 starts from a "merged" adapter (here: the site's own) and keeps the round-1 specialist.
    root = site_state_in_tmp
    specialist = saved(root, "breast", 1, "specialist")
    reply2 = train(request(MessageType.TRAIN, "breast", reply.content[wire.ARRAYS], **{wire.SERVER_ROUND: 2}), ctx)
    assert reply2.content[wire.METRICS][wire.NUM_EXAMPLES] == 32
    kept = saved(root, "breast", 2, "specialist")
    assert all(torch.equal(kept[k], specialist[k]) for k in specialist)  # the specialist is round 1's
    round2 = reply2.content[wire.ARRAYS].to_torch_state_dict()
    assert not torch.equal(round2[wire.PACKED], specialist[wire.PACKED])  # while the site trained on
    head, specialist_head = saved(root, "breast", 2, "head"), saved(root, "breast", 2, "specialist-head")
    assert not torch.equal(head["weight"], specialist_head["weight"])
    # A site that missed round 3 trains round 4 from its round-2 head, with its round-1 specialist.
    reply4 = train(request(MessageType.TRAIN, "breast", reply.content[wire.ARRAYS], **{wire.SERVER_ROUND: 4}), ctx)
    assert reply4.content[wire.METRICS][wire.NUM_EXAMPLES] == 32
    assert all(torch.equal(saved(root, "breast", 4, "specialist")[k], specialist[k]) for k in specialist)


@pytest.mark.parametrize("handler,kind", [(train, MessageType.TRAIN), (evaluate, MessageType.EVALUATE),
                                          (learning_curve, f"{MessageType.TRAIN}.{wire.CURVE_ACTION}")])
def test_a_node_refuses_a_site_it_does_not_host(handler, kind):
    with pytest.raises(ValueError, match="this node hosts sites \\['breast', 'blood'\\], not 'pneumonia'"):
        handler(request(kind, "pneumonia", **{wire.CURVE_EPOCHS: 1}), context(0))


def test_every_handler_opens_its_message_with_the_sites_own_data_and_the_runs_kind():
    call = open_site(request(MessageType.TRAIN, "breast"), context(0))
    assert call.site == "breast" and call.data.site.name == "breast" and len(call.data.train) == 32
    assert call.cfg.site_names == ["breast", "pneumonia", "blood"] and call.trainer.kind is call.cfg.kind
    assert call.codec.template().keys() == call.template.keys()


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


def test_full_weight_mode_sends_the_backbone_and_keeps_its_specialist(site_state_in_tmp):
    ctx = Context(run_id=1, node_id=5, node_config={"partition-id": 0, "num-partitions": 2}, state=RecordDict(),
                  run_config={**RUN_CONFIG, "strategy": "vit_avg"})
    reply = train(request(MessageType.TRAIN, "breast"), ctx)
    backbone = reply.content[wire.ARRAYS].to_torch_state_dict()
    cfg = parse_run_config({**RUN_CONFIG, "strategy": "vit_avg"})
    assert cfg.kind.name == "full"
    assert {k: tuple(v.shape) for k, v in backbone.items()} == cfg.kind_server().template()
    assert set(saved(site_state_in_tmp, "breast", 1, "specialist")) == set(backbone)
    ev = evaluate(request(MessageType.EVALUATE, "breast", reply.content[wire.ARRAYS], **{wire.WITH_SPECIALIST: True}),
                  ctx)
    assert ev.content[wire.METRICS]["acc"] == pytest.approx(ev.content[wire.METRICS]["specialist-acc"])


def _small_breast_files(folder, n=24):
    """A MedMNIST-format breastmnist.npz, smaller than the bundled sample, so the two are told apart."""
    import numpy as np

    from fl_medlego.data.medmnist_source import BUNDLED_ROOT

    folder.mkdir(parents=True, exist_ok=True)
    with np.load(BUNDLED_ROOT / "breastmnist.npz") as sample:
        np.savez(folder / "breastmnist.npz", **{k: v[:n] for k, v in sample.items()})
    return folder


@pytest.mark.parametrize("node_root", ["", "files"])
def test_the_nodes_data_root_wins_even_when_empty(tmp_path, monkeypatch, node_root):
    """data-root='' on a node means $MEDMNIST_ROOT / ~/.medmnist / download, never the scenario's data.root."""
    from fl_medlego.clients.site_node import SiteNodeConfig, check_site

    files = _small_breast_files(tmp_path / "files")
    monkeypatch.setenv("MEDMNIST_ROOT", str(files))
    root = "" if node_root == "" else str(files)
    run_config = {**RUN_CONFIG, "data.max-train": 0, "data.max-eval": 0}  # scenario: data.root='bundled'
    ctx = Context(run_id=1, node_id=5, node_config={"site": "breast", "data-root": root}, state=RecordDict(),
                  run_config=run_config)
    reply = train(request(MessageType.TRAIN, "breast"), ctx)
    assert reply.content[wire.SITE_INFO][wire.DATA_SOURCE] == "breastmnist from local files"  # no path leaves
    assert reply.content[wire.METRICS][wire.NUM_EXAMPLES] == 24  # our small file, not the bundled sample
    # The start-up check of a real site resolves its data the same way as training does.
    key = tmp_path / "key"
    key.write_text("x")
    site = SiteNodeConfig(site="breast", data_root=root, superlink="127.0.0.1:1", root_certificates=str(key),
                          private_key=str(key))
    assert check_site(site) == f"breastmnist from {files}"  # the site's own check names the folder


def test_a_node_without_data_root_reads_the_scenarios():
    ctx = Context(run_id=1, node_id=5, node_config={"site": "breast"}, state=RecordDict(), run_config=RUN_CONFIG)
    reply = train(request(MessageType.TRAIN, "breast"), ctx)
    assert "bundled sample" in reply.content[wire.SITE_INFO][wire.DATA_SOURCE]


def test_a_node_process_parses_the_run_and_builds_the_template_once(site_state_in_tmp, monkeypatch):
    """Per message they cost more than the message with many sites: a simulated node's process keeps them."""
    from fl_medlego.clients import app as client_app
    from fl_medlego.kinds.adapter import AdapterServer

    built = []
    original = AdapterServer.template
    monkeypatch.setattr(AdapterServer, "template", lambda self: built.append(self.context) or original(self))
    client_app._parsed.cache_clear()
    ctx = context(0)
    for site in ("breast", "blood"):
        reply = train(request(MessageType.TRAIN, site), ctx)
        assert reply.content[wire.ARRAYS]
    query(message(RecordDict(), MessageType.QUERY, dst=5), ctx)
    assert len(built) == 1
    other = Context(run_id=2, node_id=5, node_config=ctx.node_config, state=RecordDict(),
                    run_config={**RUN_CONFIG, "lora.rank": 4})
    train(request(MessageType.TRAIN, "breast"), other)  # another run config is parsed on its own
    assert len(built) == 2


class _Codec:
    """A kind's codec that writes its adapter folder, or fails doing so (a full disk)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def encode(self, update):
        return {"w": torch.full((2,), float(update))}

    def save(self, update, folder, base_fingerprint):
        if self.fail:
            raise OSError("no space left on device")
        (folder / "adapter").mkdir()
        (folder / "adapter" / "adapter_config.json").write_text(f'{{"base": "{base_fingerprint}"}}')


def _site_state(value: float) -> SiteState:
    return SiteState(head={"h": torch.full((1,), value)}, specialist=value, specialist_head={"h": torch.zeros(1)})


def test_a_state_write_that_fails_leaves_no_folder_and_no_temporary(tmp_path):
    with pytest.raises(OSError, match="no space left"):
        save_state(tmp_path, "breast", 1, _Codec(fail=True), _site_state(1.0), update=1.0, base_fingerprint="00aa")
    assert list((tmp_path / "breast").iterdir()) == []
    save_state(tmp_path, "breast", 1, _Codec(), _site_state(1.0), update=1.0, base_fingerprint="00aa")
    assert sorted(p.name for p in (tmp_path / "breast").iterdir()) == ["round-001", "specialist"]
    assert sorted(p.name for p in (tmp_path / "breast" / "round-001").iterdir()) == ["adapter", "head.safetensors"]


def test_an_old_specialist_folder_gets_its_adapter_whole_or_not_at_all(tmp_path):
    specialist = tmp_path / "breast" / "specialist"
    specialist.mkdir(parents=True)  # as sites wrote it before adapters were kept
    save_file({"w": torch.ones(2)}, str(specialist / "specialist.safetensors"))
    save_file({"h": torch.zeros(1)}, str(specialist / "specialist-head.safetensors"))
    before = sorted(p.name for p in specialist.iterdir())
    with pytest.raises(OSError, match="no space left"):
        save_state(tmp_path, "breast", 2, _Codec(fail=True), _site_state(2.0), base_fingerprint="00aa")
    assert sorted(p.name for p in specialist.iterdir()) == before
    assert sorted(p.name for p in (tmp_path / "breast").iterdir()) == ["specialist"]  # no temporary left
    save_state(tmp_path, "breast", 2, _Codec(), _site_state(2.0), base_fingerprint="00aa")
    assert sorted(p.name for p in specialist.iterdir()) == ["adapter", *before]
    assert torch.equal(read_tensors(specialist / "specialist.safetensors")["w"], torch.ones(2))  # kept, not rewritten


def test_the_state_folder_is_the_nodes_state_dir_else_the_machines_shared_folder_else_the_cache(
        tmp_path, monkeypatch, site_state_in_tmp):
    from fl_medlego.clients.state import STATE_DIR_ENV, state_folder

    monkeypatch.delenv(STATE_DIR_ENV, raising=False)
    assert state_folder({}, "run-1") == site_state_in_tmp / "run-1"
    monkeypatch.setenv(STATE_DIR_ENV, str(tmp_path / "shared"))  # a Ray worker started with it
    assert state_folder({}, "run-1") == tmp_path / "shared" / "run-1"
    assert state_folder({"state-dir": str(tmp_path / "node")}, "run-1") == tmp_path / "node" / "run-1"
