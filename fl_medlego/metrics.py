"""Classification metrics: ACC and AUC exactly as MedMNIST's Evaluator computes them, macro-F1, loss."""

from __future__ import annotations

import logging
import math

import numpy as np

from .wire import MAJORITY_RATE

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
    return {"acc": acc, "auc": auc, "f1": float(f1), "loss": float(loss), MAJORITY_RATE: majority_rate(labels, task)}


# A model whose ACC is within this of its split's majority-class rate scores what a constant guess scores.
MAJORITY_MARGIN = 0.005


def majority_rate(labels: np.ndarray, task: str) -> float:
    """The ACC of always predicting the most frequent class (MedMNIST's ACC; per label for multi-label tasks):
    what a model that learned nothing scores on these labels."""
    labels = np.asarray(labels).reshape(len(labels), -1)
    if len(labels) == 0:
        return math.nan
    if task == MULTI_LABEL:
        positive = labels.mean(axis=0)
        return float(np.maximum(positive, 1 - positive).mean())
    return float(np.unique(labels[:, 0], return_counts=True)[1].max() / len(labels))


def at_majority_rate(metrics: dict) -> bool:
    """Whether these test metrics' ACC is within MAJORITY_MARGIN of the split's majority-class rate (False when
    either is unknown, e.g. a summary written before sites sent the rate)."""
    acc, rate = metrics.get("acc"), metrics.get(MAJORITY_RATE)
    if acc is None or rate is None or math.isnan(acc) or math.isnan(rate):
        return False
    return abs(acc - rate) <= MAJORITY_MARGIN + 1e-9  # 1e-9: the float error of two ratios of the same count


def normalized_accuracy(merged_acc: float, specialist_acc: float) -> float:
    """How much of the specialist's accuracy the merged model keeps (docs/method.md: mean about 0.85)."""
    return merged_acc / specialist_acc if specialist_acc > 0 else math.nan
