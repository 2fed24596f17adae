"""Classification metrics: ACC and AUC exactly as MedMNIST's Evaluator computes them, macro-F1, loss."""

from __future__ import annotations

import logging
import math

import numpy as np

log = logging.getLogger(__name__)

MULTI_LABEL = "multi-label, binary-class"


def classification_metrics(labels: np.ndarray, scores: np.ndarray, task: str, loss: float) -> dict[str, float]:
    """labels (N, L) ints; scores (N, C) probabilities (softmax, or sigmoid for multi-label tasks)."""
    # Imported on first use: they bring pandas and scikit-learn, which a coordinator never needs.
    from medmnist.evaluator import getACC, getAUC
    from sklearn.metrics import f1_score

    acc = float(getACC(labels, scores, task))
    try:
        auc = float(getAUC(labels, scores, task))
    except ValueError as err:  # a class missing from a small test shard: AUC is undefined, say so
        log.warning("AUC undefined on this split (%s); reporting NaN", err)
        auc = math.nan
    if task == MULTI_LABEL:
        predicted = (scores > 0.5).astype(int)
        f1 = f1_score(labels, predicted, average="macro", zero_division=0)
    else:
        f1 = f1_score(labels[:, 0], scores.argmax(axis=1), average="macro", zero_division=0)
    return {"acc": acc, "auc": auc, "f1": float(f1), "loss": float(loss)}


def normalized_accuracy(merged_acc: float, specialist_acc: float) -> float:
    """How much of the specialist's accuracy the merged model keeps (docs/method.md: mean about 0.85)."""
    return merged_acc / specialist_acc if specialist_acc > 0 else math.nan
