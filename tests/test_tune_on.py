"""`cross-modal.tune-on`: choosing a generalist's merge options on validation union ACC, which sees the routing."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from fl_medlego.compare import Comparison
from fl_medlego.compare.cache import settings_hash
from fl_medlego.config import parse_run_config, settings_table, with_new_defaults
from fl_medlego.crossmodal import metrics as metrics_of
from fl_medlego.crossmodal.scoring import union_acc
from fl_medlego.data import SiteData, SiteSpec, Split
from fl_medlego.errors import ConfigError
from fl_medlego.kinds.cross_modal import CrossModalSite
from fl_medlego.lora import Adapter, Factors
from fl_medlego.metrics import MULTI_LABEL
from fl_medlego.site import load_site_data

TINY = {"kind": "cross-modal", "sites": "blood,pneumonia", "data.max-train": 24, "data.max-eval": 24,
        "train.local-epochs": 1, "train.batch-size": 12, "lora.rank": 2}
UNION = {**TINY, "cross-modal.tune-on": "union-acc"}


def _random_update(cfg, seed: int) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    template = cfg.kind_server().template()
    return Adapter({name: Factors(torch.randn(o, 2, generator=g), torch.rand(2, generator=g),
                                  torch.randn(2, i, generator=g)) for name, (o, i) in template.items()})


@pytest.fixture(scope="module")
def pneumonia():
    return load_site_data(parse_run_config(TINY), "pneumonia")


def test_union_acc_on_validation_is_the_union_test_of_the_full_evaluation(pneumonia):
    union_cfg, acc_cfg = parse_run_config(UNION), parse_run_config(TINY)
    update = _random_update(union_cfg, 1)  # routes most pneumonia images to blood's prompts
    # The full evaluation, run on the validation images as if they were the test split.
    full = union_cfg.kind_site().evaluate(dataclasses.replace(pneumonia, test=pneumonia.val), update, {})
    assert full[metrics_of.UNION_ACC] < full["acc"]  # the two criteria differ here, so the test can tell them apart
    assert union_cfg.kind_site().tuning_score(pneumonia, update, {}) == pytest.approx(full[metrics_of.UNION_ACC])
    assert acc_cfg.kind_site().tuning_score(pneumonia, update, {}) == pytest.approx(full["acc"])
    assert (union_cfg.kind_site().tuning_metric, acc_cfg.kind_site().tuning_metric) == ("union-acc", "acc")


def test_a_site_without_a_union_test_scores_its_own_prompt_acc():
    """ChestMNIST is not downloadable here: a small synthetic multi-label set takes the same path."""
    cfg = parse_run_config({**UNION, "sites": "blood,chest"})
    g = torch.Generator().manual_seed(0)

    def split(n):
        return Split(torch.randint(0, 256, (n, 28, 28, 1), generator=g, dtype=torch.uint8),
                     torch.randint(0, 2, (n, 14), generator=g))

    chest = SiteData(SiteSpec("chest", "chestmnist", 1, 2), MULTI_LABEL, 14, "synthetic", "synthetic", split(8),
                     split(16), split(8))
    update = _random_update(cfg, 2)
    assert cfg.kind_site().tuning_score(chest, update, {}) == cfg.kind_site().evaluate(chest, update, {}, "val")["acc"]
    assert union_acc(cfg.kind_site().build_model(chest, update, {}), chest.val, MULTI_LABEL, "chestmnist",
                     ["bloodmnist", "chestmnist"]) is None


def test_an_unknown_criterion_is_refused_with_the_choices():
    with pytest.raises(ConfigError, match="union-acc"):
        parse_run_config({**TINY, "cross-modal.tune-on": "auc"})


def test_the_criterion_keeps_the_cached_specialists():
    """It is read after training: specialists cached under either criterion serve the other."""
    assert settings_hash(parse_run_config(UNION)) == settings_hash(parse_run_config(TINY))


def test_results_written_before_the_criterion_existed_read_it_as_acc():
    for kind in ("cross-modal", "adapter"):  # every run's settings hold every kind's group
        today = json.loads(json.dumps(settings_table(parse_run_config({**TINY, "kind": kind})), default=str))
        older = {k: v for k, v in today.items() if k != "cross-modal.tune-on"}
        assert with_new_defaults(older) == today


def test_compare_chooses_the_options_with_the_best_mean_validation_union_acc(tmp_path, monkeypatch):
    scored = []  # (options, site, score) of every validation scoring
    real = CrossModalSite.tuning_score

    def spy(self, data, update, head):
        score = real(self, data, update, head)
        scored.append((str(update.metadata["merge"]["options"]), data.site.name, score))
        return score

    monkeypatch.setattr(CrossModalSite, "tuning_score", spy)
    results = Comparison(UNION, ["medlego"], [0], tmp_path / "out", tmp_path / "cache").run()
    row = results["rows"]["medlego"]["0"]
    means = {}
    for options, _, score in scored:
        means.setdefault(options, []).append(score)
    means = {options: sum(s) / len(s) for options, s in means.items()}
    assert len(means) == len(parse_run_config(UNION).kind.option_grid("medlego"))
    assert all(len({site for o, site, _ in scored if o == options}) == 2 for options in means)  # both sites
    assert row["val_mean_union_acc"] == pytest.approx(max(means.values()))
    assert "val_mean_acc" not in row
    assert str(row["options"]) in {options for options, mean in means.items() if mean == max(means.values())}
