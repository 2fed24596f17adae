"""Local training: several epochs, best checkpoint by validation accuracy, metrics as MedMNIST computes them."""

import numpy as np
import pytest
import torch
from medmnist import Evaluator  # noqa: F401  (the reference our metrics follow)
from medmnist.evaluator import getACC, getAUC

from fl_medlego.config import parse_run_config
from fl_medlego.lora import get_adapter
from fl_medlego.metrics import classification_metrics, normalized_accuracy
from fl_medlego.site import load_site_data
from fl_medlego.train import TrainConfig, evaluate, fit


def test_fit_keeps_the_best_validation_epoch():
    cfg = parse_run_config({"sites": "breast", "data.max-train": 64, "data.max-eval": 48})
    data = load_site_data(cfg, "breast")
    model = cfg.kind_site().build_model(data, None, None)
    result = fit(model, data.train, data.val, data.task, 28, TrainConfig(epochs=3, batch_size=32, lr=5e-3))
    assert len(result.history) == 3
    best = max(h["val_acc"] for h in result.history)
    assert result.best_val_acc == best
    assert result.history[result.best_epoch - 1]["val_acc"] == best
    assert evaluate(model, data.val, data.task, 28)["acc"] == pytest.approx(best)  # the best state was restored
    assert any(f.E.abs().sum() > 0 for f in get_adapter(model.backbone).factors.values())  # the adapter trained


def test_metrics_follow_medmnist():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=(50, 1))
    scores = rng.dirichlet(np.ones(3), size=50)
    m = classification_metrics(labels, scores, "multi-class", 0.5)
    assert m["acc"] == getACC(labels, scores, "multi-class") and m["auc"] == getAUC(labels, scores, "multi-class")
    binary = rng.dirichlet(np.ones(2), size=50)
    blabels = rng.integers(0, 2, size=(50, 1))
    assert classification_metrics(blabels, binary, "binary-class", 0.1)["acc"] == getACC(blabels, binary,
                                                                                        "binary-class")


def test_auc_is_nan_not_a_crash_when_a_class_is_missing():
    labels = np.zeros((10, 1), dtype=int)
    scores = np.tile([0.7, 0.3], (10, 1))
    assert np.isnan(classification_metrics(labels, scores, "binary-class", 0.0)["auc"])


def test_normalized_accuracy():
    assert normalized_accuracy(0.8, 1.0) == pytest.approx(0.8)
    assert np.isnan(normalized_accuracy(0.5, 0.0))


def test_multilabel_task_trains_with_bce():
    from fl_medlego.data.sites import Split
    from fl_medlego.train import task_loss

    logits = torch.zeros(4, 3)
    labels = torch.tensor([[1, 0, 1]] * 4)
    assert task_loss(logits, labels, "multi-label, binary-class").item() == pytest.approx(np.log(2))
    assert Split(torch.zeros(2, 28, 28, 1, dtype=torch.uint8), labels[:2]).__len__() == 2


def test_the_cosine_schedule_warms_up_then_decays_to_zero():
    from fl_medlego.train import learning_rate_factor

    cfg = TrainConfig(schedule="cosine", warmup=0.1)
    factors = [learning_rate_factor(step, 100, cfg) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)  # linear over the first 10 %
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))  # then never rises
    assert factors[-1] < 0.01
    assert {learning_rate_factor(s, 100, TrainConfig()) for s in range(100)} == {1.0}  # the default: constant


def test_class_weights_are_inverse_frequencies_that_keep_the_loss_scale():
    from fl_medlego.train import class_weights

    labels = torch.tensor([[0]] * 6 + [[1]] * 2)
    weights = class_weights(labels, "binary-class", 2)
    assert weights.tolist() == pytest.approx([8 / 12, 8 / 4])
    assert weights[labels[:, 0]].mean() == pytest.approx(1.0)  # mean 1 per image: the lr keeps its meaning
    assert class_weights(torch.tensor([[0], [0], [2]]), "multi-class", 3)[1] == 1.0  # an absent class
    multi = class_weights(torch.tensor([[1, 0], [0, 0], [0, 1], [0, 1]]), "multi-label, binary-class", 2)
    assert multi.tolist() == pytest.approx([3.0, 1.0])  # negatives / positives per finding


def test_light_augmentation_never_mirrors_a_left_right_data_set():
    from fl_medlego.augment import AugmentConfig, augment_floats, flips_keep_labels

    assert not flips_keep_labels("organamnist") and flips_keep_labels("bloodmnist")
    image = torch.zeros(64, 3, 8, 8)
    image[..., :4] = 1.0  # bright left half: a mirror would put it on the right
    frozen = AugmentConfig(min_scale=1.0, colour=0.0, grey=0.0, rotate=False, flip=False)
    out = augment_floats(image, 8, frozen, torch.Generator().manual_seed(0))
    assert torch.allclose(out, image * 2 - 1, atol=1e-5)  # without flips the identity crop changes nothing
    flipping = augment_floats(image, 8, AugmentConfig(min_scale=1.0, colour=0.0, grey=0.0, rotate=False),
                              torch.Generator().manual_seed(0))
    mirrored = (flipping[..., 4:].mean((1, 2, 3)) > 0).sum()
    assert 10 < mirrored < 54  # about half the images are mirrored when flips are allowed


def test_recipe_options_change_training_and_organa_is_not_flipped(monkeypatch):
    import fl_medlego.train as train_module

    base = {"sites": "organa", "data.max-train": 64, "data.max-eval": 32, "train.local-epochs": 1,
            "train.batch-size": 32, "lora.rank": 2}
    seen = []
    original = train_module.augment_floats
    monkeypatch.setattr(train_module, "augment_floats",
                        lambda x, out, cfg, g: seen.append(cfg) or original(x, out, cfg, g))
    updates = {}
    for name, extra in {"plain": {}, "recipe": {"train.schedule": "cosine", "train.augment": "light",
                                               "train.class-balance": "loss"}}.items():
        cfg = parse_run_config({**base, **extra})
        data = load_site_data(cfg, "organa")
        updates[name] = cfg.kind_site().train(data, None, None).update.to_tensors()
    assert seen and all(not c.flip and not c.rotate for c in seen)  # organA: left/right classes, never mirrored
    assert any(not torch.equal(updates["plain"][k], updates["recipe"][k]) for k in updates["plain"])


def test_class_weights_fit_logits_wider_than_the_classes_a_site_has():
    """A shard without its highest class, or a cross-modal site's negative prompts: the extra columns are
    never targets, weigh 1, and the loss is the same as without them."""
    from fl_medlego.train import StepPlan

    cfg = TrainConfig(class_balance="loss")
    labels = torch.tensor([[0]] * 6 + [[1]] * 2)  # class 2 of 3 absent from this shard
    from fl_medlego.data import Split

    plan = StepPlan.for_training(cfg, Split(torch.zeros(8, 4, 4, 3, dtype=torch.uint8), labels), "multi-class")
    weight = plan.weight_for(5)
    assert weight.tolist() == pytest.approx([8 / 12, 8 / 4, 1.0, 1.0, 1.0])
    from fl_medlego.train import task_loss

    logits = torch.randn(8, 2, generator=torch.Generator().manual_seed(0))
    never_chosen = torch.cat([logits, torch.full((8, 3), -1e4)], dim=1)  # extra columns with no probability
    narrow = task_loss(logits, labels, "multi-class", plan.weight_for(2))
    assert task_loss(never_chosen, labels, "multi-class", weight) == pytest.approx(narrow.item(), rel=1e-6)
    # With live extra columns the loss is still the weighted mean over the real classes' targets.
    wide = torch.cat([logits, torch.randn(8, 3, generator=torch.Generator().manual_seed(1))], dim=1)
    per_image = -torch.log_softmax(wide, dim=1)[torch.arange(8), labels[:, 0]]
    expected = (weight[labels[:, 0]] * per_image).sum() / weight[labels[:, 0]].sum()
    assert task_loss(wide, labels, "multi-class", weight) == pytest.approx(expected.item(), rel=1e-6)
