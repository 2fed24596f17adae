"""The cross-modal kind's own metrics: the two generalist tests (`scoring.py` says what they measure), as a
cross-modal site sends them beside the shared evaluation metrics. The kind declares them on the wire."""

from __future__ import annotations

UNION_ACC = "union-acc"
MODALITY_SHARE = "modality-share"
UNSEEN_PREFIX = "unseen-"
UNSEEN_METRICS = tuple(UNSEEN_PREFIX + m for m in ("acc", "auc", "f1"))
CENTRED_PREFIX = "centred-"  # own prompts, each class's logit centred on its mean over the site's validation images
CENTRED_METRICS = tuple(CENTRED_PREFIX + m for m in ("acc", "auc", "f1"))
GENERALIST_METRICS = (UNION_ACC, MODALITY_SHARE, *UNSEEN_METRICS, *CENTRED_METRICS)

SCHEMA = {name: (0.0, 1.0, False) for name in GENERALIST_METRICS}
MAY_BE_UNDEFINED = frozenset({UNSEEN_PREFIX + "auc", CENTRED_PREFIX + "auc"})  # one class in a split: no AUC

# How summary.md and the comparison table label them, in order.
COLUMNS = {UNSEEN_METRICS[0]: "unseen-prompt ACC", UNSEEN_METRICS[1]: "unseen-prompt AUC",
           UNSEEN_METRICS[2]: "unseen-prompt F1", UNION_ACC: "union-of-labels ACC", MODALITY_SHARE: "right modality",
           CENTRED_PREFIX + "acc": "centred ACC", CENTRED_PREFIX + "f1": "centred F1"}

# What the numbers mean: summary.md's lines before its table, and the comparison's paragraph.
SUMMARY_TEXT = ("Cross-modal generalist tests: held-out paraphrase prompts, and every site's class prompts at",
                "once (union of labels; right modality = top prompt from the image's own modality). Centred: each",
                "class's score minus its mean over the site's validation images (no labels used).")
COMPARE_TEXT = ("Means over the sites. Unseen prompts: the site's classes in held-out paraphrase templates. Union of "
                "labels: every site's class prompts at once; `right modality` = share of test images whose top prompt "
                "is one of their own modality's. Centred: each class's score minus its mean over the site's validation "
                "images (labels unused), the calibration a site can apply alone.")
