"""Site kinds: registered by name, each one's update survives its wire encoding and state, bad ones are refused."""

from types import SimpleNamespace

import pytest
import torch

from fl_medlego import wire
from fl_medlego.config import parse_run_config
from fl_medlego.errors import UnknownNameError
from fl_medlego.kinds import KindSite, all_strategies, get_kind, kind_for_strategy, list_kinds, register_kind
from fl_medlego.kinds import _site as site_half
from fl_medlego.merging import list_merges
from fl_medlego.site import load_site_data
from fl_medlego.train import TrainConfig

TINY = {"sites": "breast,pneumonia", "train.local-epochs": 1, "data.max-train": 24, "data.max-eval": 24,
        "lora.rank": 2}
# The run config that selects each kind: a strategy name alone, or (cross-modal) the kind named with a merge.
CONFIG_OF = {"adapter": {"strategy": "medlego"}, "full": {"strategy": "vit_avg"},
             "cross-modal": {"kind": "cross-modal", "strategy": "medlego"}}


def test_every_strategy_runs_exactly_one_kind():
    assert set(list_kinds()) == set(CONFIG_OF)
    assert sorted(all_strategies()) == sorted(set(all_strategies()))  # no strategy claimed twice
    assert get_kind("cross-modal").strategies() == list_merges()  # ... except by a kind that is named explicitly
    assert set(list_merges()) <= set(all_strategies())
    assert kind_for_strategy("vit_avg").name == "full" and kind_for_strategy("ties").name == "adapter"
    with pytest.raises(UnknownNameError, match="unknown strategy .fedprox.*vit_avg"):
        kind_for_strategy("fedprox")
    with pytest.raises(ValueError, match="unknown strategy 'fedprox'"):
        parse_run_config({"strategy": "fedprox"})


def test_merge_options_are_validated_once_at_parse_time():
    cfg = parse_run_config({"strategy": "ties", "merge.options": "density=0.5"})
    assert cfg.merge.options.density == 0.5 and cfg.kind.name == "adapter"
    with pytest.raises(ValueError, match="density must be a fraction"):
        parse_run_config({"strategy": "ties", "merge.options": "density=2.0"})
    with pytest.raises(ValueError, match="no option"):
        parse_run_config({"strategy": "medlego", "merge.options": "density=0.5"})
    with pytest.raises(ValueError, match="takes no merge.options"):
        parse_run_config({"strategy": "vit_avg", "merge.options": "lam=1.0"})
    assert parse_run_config({"strategy": "vit_avg"}).merge.options is None


@pytest.mark.parametrize("kind_name", sorted(CONFIG_OF))
def test_a_kind_trains_encodes_combines_and_evaluates(kind_name, tmp_path):
    cfg = parse_run_config({**TINY, **CONFIG_OF[kind_name]})
    kind = get_kind(kind_name)
    assert cfg.kind is kind
    trainer, server = cfg.kind_site(), cfg.kind_server()
    template = server.template()
    results = [trainer.train(load_site_data(cfg, site), None, None) for site in cfg.site_names]
    for result in results:
        assert set(result.metrics) == set(kind.train_metrics) and result.base_fingerprint
        assert result.state.specialist is result.update  # round 1 trains the specialist
    updates = [server.decode(server.encode(r.update), template) for r in results]
    combined = server.combine(updates, None, cfg.merge)
    path = server.save(combined, tmp_path, results[0].base_fingerprint)
    assert path.exists()
    loaded = server.load(tmp_path, results[0].base_fingerprint)
    again = server.decode(server.encode(loaded), template)
    data = load_site_data(cfg, "breast")
    metrics = trainer.evaluate(data, again, results[0].state.head)
    assert metrics == trainer.evaluate(data, combined, results[0].state.head)
    # Round 2 from the combined update keeps the specialist of round 1.
    round2 = trainer.train(data, combined, results[0].state)
    assert round2.state.specialist is results[0].state.specialist


@pytest.mark.parametrize("kind_name", sorted(CONFIG_OF))
def test_a_kind_refuses_updates_that_do_not_fit(kind_name):
    cfg = parse_run_config({**TINY, **CONFIG_OF[kind_name]})
    trainer, server = get_kind(kind_name).site(cfg.kind_context()), get_kind(kind_name).server(cfg.kind_context())
    template = server.template()
    with pytest.raises(wire.InvalidUpdate):
        server.decode({"weights": torch.zeros(3)}, template)
    good = server.encode(trainer.train(load_site_data(cfg, "breast"), None, None).update)
    key = sorted(good)[0]
    poisoned = {**good, key: good[key].clone().float()}
    poisoned[key].view(-1)[0] = float("nan")
    with pytest.raises(wire.InvalidUpdate, match="NaN or Inf"):
        server.decode(poisoned, template)


class _NoModelSite(KindSite):
    """The base class's train around a stand-in model, so that only the labelling of its metrics is tested."""

    def build_model(self, data, update, head):
        return SimpleNamespace(image_size=8, base_fingerprint="00aa", head=torch.nn.Identity())

    def extract(self, model):
        return "update"

    def head_state(self, model):
        return {}


def test_the_base_train_labels_its_metrics_by_name_whatever_the_kinds_order(monkeypatch):
    reordered = (wire.NUM_EXAMPLES, wire.BEST_EPOCH, wire.TRAIN_LOSS, wire.VAL_ACC)
    fitted = SimpleNamespace(history=[{"train_loss": 0.7}, {"train_loss": 0.4}], best_epoch=2, best_val_acc=0.9,
                             num_examples=50, steps=7)
    monkeypatch.setattr(site_half, "fit", lambda *args, **kwargs: fitted)
    site = _NoModelSite(SimpleNamespace(train_metrics=reordered), SimpleNamespace(train=TrainConfig(), seed=0))
    data = SimpleNamespace(site=SimpleNamespace(name="blood", flag="blood"), train=None, val=None, task="multi-class",
                           flips_keep_labels=True)
    result = site.train(data, None, None)
    assert result.metrics == {wire.NUM_EXAMPLES: 50.0, wire.BEST_EPOCH: 2.0, wire.TRAIN_LOSS: 0.4, wire.VAL_ACC: 0.9}
    assert list(result.metrics) == list(reordered) and result.steps == 7


@pytest.mark.parametrize("missing", [wire.VAL_ACC, wire.TRAIN_LOSS, wire.NUM_EXAMPLES])
def test_a_kind_without_the_metrics_every_round_needs_is_not_registered(missing):
    adapter = type(get_kind("adapter"))
    lacking = type("LackingKind", (adapter,), {"name": "lacking", "chosen_explicitly": True,
                                                "train_metrics": tuple(n for n in adapter.train_metrics
                                                                       if n != missing)})
    with pytest.raises(ValueError, match=rf"site kind 'lacking': its train_metrics lack \['{missing}'\]"):
        register_kind(lacking)
    assert "lacking" not in list_kinds()
