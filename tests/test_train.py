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
    model = cfg.kind.build_model(cfg, data, None, None)
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
