"""Membership inference: how well an attacker who holds a trained adapter (and the site's head) tells the
images it was trained on from images it was not. The measure of what leaks, with or without DP-SGD.

Two attacks, both on the model's output for one image:
- loss threshold (Yeom et al., CSF 2018): a member has a lower loss. Score: -loss.
- offline LiRA (Carlini et al., "Membership Inference Attacks From First Principles", S&P 2022): each
  image's logit-scaled confidence phi = log(p_y / (1 - p_y)) is compared with the same image's phi under
  shadow models trained on disjoint data (none saw it). Score: (phi - mean_shadows) / std, with the
  std pooled over all images (their recommendation for few shadows). It calibrates away how easy each
  image is, which the loss threshold cannot.
The attack's quality: ROC AUC, and the true-positive rate at 1 % false positives (what matters for the
few patients an attacker can be confident about).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.sites import Split
from ..metrics import MULTI_LABEL
from ..train import to_model_input


@torch.no_grad()
def per_example_outputs(model: nn.Module, split: Split, task: str, image_size: int,
                        batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Per image: the loss and the logit-scaled confidence in its true label(s) (mean over labels if multi-label)."""
    if task == MULTI_LABEL:
        raise ValueError("the membership audit reads single-label tasks (multi-class or binary) only")
    model.eval()
    losses, confidences = [], []
    for start in range(0, len(split), batch_size):
        logits = model(to_model_input(split.images[start:start + batch_size], image_size)).double()
        labels = split.labels[start:start + batch_size, 0].long()
        losses.append(F.cross_entropy(logits, labels, reduction="none"))
        true = logits.gather(1, labels[:, None])[:, 0]
        others = logits.scatter(1, labels[:, None], float("-inf")).logsumexp(1)
        confidences.append(true - others)  # log p_y - log(1 - p_y), without forming p_y
    return torch.cat(losses).numpy(), torch.cat(confidences).numpy()


def loss_attack_scores(losses: np.ndarray) -> np.ndarray:
    return -np.asarray(losses)


def lira_offline_scores(target_confidence: np.ndarray, shadow_confidence: np.ndarray) -> np.ndarray:
    """Offline LiRA scores: target phi against the same images' phi under K shadow models (K x n), none of
    which trained on them. Larger = more likely a member."""
    shadow = np.asarray(shadow_confidence, dtype=np.float64)
    if shadow.ndim != 2 or shadow.shape[1] != len(target_confidence) or shadow.shape[0] < 2:
        raise ValueError(f"need at least 2 shadow models' confidences for the {len(target_confidence)} images, got "
                         f"shape {shadow.shape}")
    spread = shadow.std(axis=0, ddof=1).mean()  # pooled over images
    return (np.asarray(target_confidence) - shadow.mean(axis=0)) / max(spread, 1e-12)


def attack_quality(scores: np.ndarray, is_member: np.ndarray, fpr_at: float = 0.01) -> dict[str, float]:
    """ROC AUC and the true-positive rate at `fpr_at` false positives (the largest TPR with FPR <= fpr_at)."""
    from sklearn.metrics import roc_auc_score, roc_curve

    is_member = np.asarray(is_member, dtype=bool)
    if is_member.all() or not is_member.any():
        raise ValueError("the audit needs both members and non-members")
    fpr, tpr, _ = roc_curve(is_member, scores)
    return {"auc": float(roc_auc_score(is_member, scores)), "tpr_at_fpr": float(tpr[fpr <= fpr_at].max()),
            "fpr_at": fpr_at}


def roc_points(scores: np.ndarray, is_member: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(np.asarray(is_member, dtype=bool), scores)
    return fpr, tpr


def stratified_order(labels: np.ndarray, seed: int) -> np.ndarray:
    """A random order of the images in which every stretch holds the classes in their overall proportions.

    Each image's key is its (random) rank within its class divided by the class size; sorting by it
    interleaves the classes evenly. Member and non-member sets cut from it have the same class mix, so
    that a model reflecting its training label distribution is not mistaken for one memorising images.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels).reshape(len(labels), -1)[:, 0]
    key = np.empty(len(labels))
    for value in np.unique(labels):
        where = rng.permutation(np.flatnonzero(labels == value))
        key[where] = (np.arange(len(where)) + rng.random()) / len(where)
    return np.argsort(key, kind="stable")


def audit_splits(labels: np.ndarray, members: int, shadows: int, seed: int) -> dict:
    """Indices into a training split: members, as many non-members (to one) with the same class mix
    (to one image a class), and one set of as many per shadow model from the rest (disjoint from the
    candidates; from each other when the rest is large enough). Members are at most a quarter of the
    split, to leave room for the others."""
    labels = np.asarray(labels).reshape(len(labels), -1)[:, 0]
    order = stratified_order(labels, seed)
    members = min(members, len(order) // 4)
    candidates, pool = order[:2 * members], order[2 * members:]
    inside, outside, extra_inside = [], [], True
    for value in np.unique(labels[candidates]):  # each class dealt alternately; an odd one out alternates too
        same = candidates[labels[candidates] == value]
        first, second = same[0::2], same[1::2]
        if len(same) % 2:
            first, second = (first, second) if extra_inside else (second, first)
            extra_inside = not extra_inside
        inside.append(first)
        outside.append(second)
    rng = np.random.default_rng(seed + 1)
    sets = [pool[k * members:(k + 1) * members] if len(pool) >= shadows * members
            else rng.choice(pool, size=members, replace=False) for k in range(shadows)]
    return {"members": np.concatenate(inside), "non_members": np.concatenate(outside), "shadows": sets}
