"""Anchors: public images of other modalities that a cross-modal site trains towards their own modality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fl_medlego.config import parse_run_config
from fl_medlego.crossmodal import anchors as anchors_of
from fl_medlego.crossmodal.prompts import class_prompts, vocabulary
from fl_medlego.crossmodal.scoring import _text_embeddings
from fl_medlego.errors import ConfigError
from fl_medlego.site import load_site_data
from fl_medlego.train import to_model_input

TINY = {"kind": "cross-modal", "sites": "blood,pneumonia", "data.max-train": 24, "data.max-eval": 24,
        "train.local-epochs": 1, "train.batch-size": 12, "lora.rank": 2, "cross-modal.towers": "image",
        "cross-modal.anchors": "bundled"}


def test_each_anchor_points_at_its_own_modalitys_prompts_among_the_training_logits():
    anchors = anchors_of.load_anchors("bundled", "organamnist", 11)
    spans = anchors_of.training_spans("organamnist", 11)
    # the site's own prompts first, then the vocabulary in its order: the spans tile the training logits
    assert list(spans)[0] == "organamnist" and spans["organamnist"] == (0, 11)
    assert max(end for _, end in spans.values()) == 11 + len(vocabulary("organamnist"))
    order = list(spans)
    counts = {order[t]: n for t, n in enumerate(torch.bincount(anchors.targets, minlength=len(order)).tolist()) if n}
    assert counts == {"bloodmnist": 128, "breastmnist": 128, "pneumoniamnist": 128}  # never its own modality
    for flag in counts:
        start, end = anchors.spans[order.index(flag)]
        assert vocabulary("organamnist")[start - 11:end - 11] == class_prompts(flag)
    assert anchors.images.dtype == torch.uint8 and anchors.images.shape[1:] == (28, 28, 3)  # grey repeated


def test_no_anchors_when_off_or_for_a_site_with_its_own_images():
    assert anchors_of.load_anchors("none", "bloodmnist", 8) is None
    assert anchors_of.load_anchors("bundled", "", 3) is None


def test_a_named_folder_is_read_and_a_wrong_one_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "dermamnist.npz", train_images=rng.integers(0, 255, (300, 28, 28, 3), dtype=np.uint8))
    np.savez(tmp_path / "notes.npz", train_images=np.zeros((2, 28, 28), np.uint8))  # not a supported set: ignored
    anchors = anchors_of.load_anchors(str(tmp_path), "bloodmnist", 8)
    assert len(anchors.targets) == anchors_of.PER_MODALITY  # 300 drawn down to 128
    with pytest.raises(ValueError, match="no such folder"):
        anchors_of.load_anchors(str(tmp_path / "missing"), "bloodmnist", 8)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no <flag>.npz of a supported set"):
        anchors_of.load_anchors(str(empty), "bloodmnist", 8)


def test_anchors_need_negatives_to_be_scored_against():
    with pytest.raises(ConfigError, match="cross-modal.negatives='vocabulary'"):
        parse_run_config({**TINY, "cross-modal.negatives": "none"})
    assert parse_run_config({**TINY, "cross-modal.negatives": "modality"}).kind_settings.anchors == "bundled"


def test_the_modality_term_replaces_the_negatives_in_the_logits_with_a_pooled_cross_entropy():
    """negatives='modality': the site's cross-entropy is over its own prompts only, and its images add a
    cross-entropy over modalities (log-sum-exp of each modality's prompts), towards their own."""
    cfg = parse_run_config({**TINY, "cross-modal.negatives": "modality", "cross-modal.anchors": "none"})
    blood = load_site_data(cfg, "blood")
    model = cfg.kind_site().build_model(blood, None, None)
    model.train()
    x = torch.rand(5, 3, 28, 28)
    logits = model(x)
    assert logits.shape == (5, 8)  # own prompts only: no negative columns
    term = model.take_auxiliary_loss()
    with torch.no_grad():
        images = model.embed_images(x)
        prompts = class_prompts("bloodmnist") + vocabulary("bloodmnist")
        scored = model.logit_scale * images @ _text_embeddings(model, prompts).T
        spans = anchors_of.training_spans("bloodmnist", 8).values()
        pooled = torch.stack([scored[:, a:b].logsumexp(dim=1) for a, b in spans], dim=1)
        expected = torch.nn.functional.cross_entropy(pooled, torch.zeros(5, dtype=torch.long))
    assert term is not None and torch.isclose(term, expected, atol=1e-4)
    vocabulary_model = parse_run_config({**TINY, "cross-modal.anchors": "none"}).kind_site().build_model(
        blood, None, None)
    vocabulary_model.train()
    assert vocabulary_model(x).shape == (5, 8 + len(vocabulary("bloodmnist")))
    assert vocabulary_model.take_auxiliary_loss() is None
    # with anchors, both terms: the modality term plus the anchor term of the same anchor draw
    both = parse_run_config({**TINY, "cross-modal.negatives": "modality"}).kind_site().build_model(blood, None, None)
    both.train()
    torch.manual_seed(3)
    both(x)
    total = both.take_auxiliary_loss()
    torch.manual_seed(3)
    with torch.no_grad():
        anchor = both._anchor_term(len(x), x.device)
    assert torch.isclose(total, term + both.anchor_weight * anchor, atol=1e-4)


def test_the_modality_term_leaves_out_sets_of_the_sites_own_modality():
    from fl_medlego.crossmodal.anchors import modality_spans

    spans = anchors_of.training_spans("organamnist", 11)
    kept = modality_spans("organa", 11)
    assert kept[0] == (0, 11) and len(kept) == len(spans) - 2  # organC and organS are not pushed away
    assert spans["organcmnist"] not in kept and spans["organsmnist"] not in kept and spans["bloodmnist"] in kept
    own = modality_spans("", 3)  # a site with its own images: every supported set after its block
    assert own[0] == (0, 3) and len(own) == 1 + len(anchors_of.supported_flags())


def test_the_anchor_term_trains_the_image_side_and_is_taken_once():
    cfg = parse_run_config(TINY)
    blood = load_site_data(cfg, "blood")
    model = cfg.kind_site().build_model(blood, None, None)
    assert model.anchors is not None and len(model.anchors.targets) == 3 * 128
    model.train()
    x = torch.zeros(4, 3, 28, 28)
    model(x)
    term = model.take_auxiliary_loss()
    assert term is not None and term.ndim == 0 and torch.isfinite(term) and term > 0
    assert model.take_auxiliary_loss() is None  # one step adds it once
    term.backward()
    grads = [p.grad for n, p in model.named_parameters() if p.requires_grad]
    assert any(g is not None and torch.count_nonzero(g) for g in grads)
    model.eval()
    model(x)
    assert model.take_auxiliary_loss() is None  # evaluation never scores anchors
    off = parse_run_config({**TINY, "cross-modal.anchors": "none"}).kind_site().build_model(blood, None, None)
    off.train()
    off(x)
    assert off.anchors is None and off.take_auxiliary_loss() is None


@pytest.mark.training
def test_a_site_trained_with_anchors_claims_fewer_foreign_images():
    """The point of anchors, on a small scale: a blood site trained with them sends fewer of the other
    modalities' anchor images to its own prompts than one trained without (same seed, same data)."""
    shares = {}
    for source in ("none", "bundled"):
        cfg = parse_run_config({**TINY, "cross-modal.anchors": source, "data.max-train": 96,
                                "train.local-epochs": 2, "train.batch-size": 16, "lora.rank": 4})
        blood = load_site_data(cfg, "blood")
        site = cfg.kind_site()
        model = site.build_model(blood, site.train(blood, None, None).update, None)
        foreign = anchors_of.load_anchors("bundled", "bloodmnist", 8)
        model.eval()
        with torch.no_grad():
            embedded = model.embed_images(to_model_input(foreign.images, 28))
            prompts = class_prompts("bloodmnist") + vocabulary("bloodmnist")
            top = (embedded @ _text_embeddings(model, prompts).T).argmax(dim=1)
        shares[source] = float((top < 8).float().mean())
    assert shares["bundled"] < shares["none"] - 0.2, shares


def test_sets_of_the_same_modality_are_never_a_sites_anchors(tmp_path):
    """organA/C/S are views of the same CT volumes, chest and pneumonia both chest x-rays: a site of one must not
    learn to disown the others' images."""
    rng = np.random.default_rng(0)
    for flag in ("organcmnist", "organsmnist", "chestmnist", "bloodmnist"):
        np.savez(tmp_path / f"{flag}.npz", train_images=rng.integers(0, 255, (8, 28, 28), dtype=np.uint8))
    order = list(anchors_of.training_spans("organamnist", 11))
    anchors = anchors_of.load_anchors(str(tmp_path), "organamnist", 11)
    assert {order[t] for t in anchors.targets.tolist()} == {"chestmnist", "bloodmnist"}
    order = list(anchors_of.training_spans("pneumoniamnist", 2))
    anchors = anchors_of.load_anchors(str(tmp_path), "pneumonia", 2)
    assert {order[t] for t in anchors.targets.tolist()} == {"organcmnist", "organsmnist", "bloodmnist"}


def test_a_blank_anchor_source_is_refused():
    with pytest.raises(ConfigError, match="cross-modal.anchors"):
        parse_run_config({**TINY, "cross-modal.anchors": " "})


def test_dp_sgd_steps_refuse_a_model_with_an_auxiliary_loss():
    from fl_medlego.privacy.dpsgd import PrivateSteps

    class WithTerm(torch.nn.Module):
        def take_auxiliary_loss(self):
            return torch.tensor(1.0)

    steps = PrivateSteps.__new__(PrivateSteps)  # only the check before any Opacus state is reached
    steps.model = WithTerm()
    with pytest.raises(ValueError, match="auxiliary loss"):
        steps.step(torch.tensor(0.0))
