"""The cross-modal kind's own metrics: the two generalist tests (`scoring.py` says what they measure), as a
cross-modal site sends them beside the shared evaluation metrics. The kind declares them on the wire."""

from __future__ import annotations

from ..wire import MAX_LOSS

UNION_ACC = "union-acc"
MODALITY_SHARE = "modality-share"
UNSEEN_PREFIX = "unseen-"
UNSEEN_METRICS = tuple(UNSEEN_PREFIX + m for m in ("acc", "auc", "f1"))
CENTRED_PREFIX = "centred-"  # own prompts, each class's logit centred on its mean over the site's validation images
CENTRED_METRICS = tuple(CENTRED_PREFIX + m for m in ("acc", "auc", "f1"))
# Two-stage routing over the union: the modality first, then the class inside it. "pooled": each modality's
# score is the log-sum-exp of its class prompts' (what anchors train); "named": its public name as a prompt.
POOLED_ROUTE = ("pooled-route-acc", "pooled-route-share")
NAMED_ROUTE = ("named-route-acc", "named-route-share")
ENSEMBLE_PREFIX = "ensemble-"  # own classes, each prompt averaged over every template of its set (CLIP's ensembles)
ENSEMBLE_METRICS = tuple(ENSEMBLE_PREFIX + m for m in ("acc", "auc", "f1"))
TEMPERED_PREFIX = "tempered-"  # own prompts at the logit factor (1 / temperature) minimising the validation loss
TEMPERED_METRICS = (TEMPERED_PREFIX + "auc", TEMPERED_PREFIX + "loss")
GENERALIST_METRICS = (UNION_ACC, MODALITY_SHARE, *UNSEEN_METRICS, *CENTRED_METRICS, *POOLED_ROUTE, *NAMED_ROUTE,
                      *ENSEMBLE_METRICS, *TEMPERED_METRICS)

SCHEMA = {name: (0.0, MAX_LOSS if name.endswith("loss") else 1.0, False) for name in GENERALIST_METRICS}
# one class in a split: no AUC
MAY_BE_UNDEFINED = frozenset({UNSEEN_PREFIX + "auc", CENTRED_PREFIX + "auc", ENSEMBLE_PREFIX + "auc",
                              TEMPERED_PREFIX + "auc"})

# How summary.md and the comparison table label them, in order.
COLUMNS = {UNSEEN_METRICS[0]: "unseen-prompt ACC", UNSEEN_METRICS[1]: "unseen-prompt AUC",
           UNSEEN_METRICS[2]: "unseen-prompt F1", UNION_ACC: "union-of-labels ACC", MODALITY_SHARE: "right modality",
           CENTRED_PREFIX + "acc": "centred ACC", CENTRED_PREFIX + "f1": "centred F1",
           POOLED_ROUTE[1]: "right modality, pooled", POOLED_ROUTE[0]: "two-stage ACC, pooled",
           NAMED_ROUTE[1]: "right modality, named", NAMED_ROUTE[0]: "two-stage ACC, named",
           ENSEMBLE_PREFIX + "acc": "ensemble ACC", ENSEMBLE_PREFIX + "auc": "ensemble AUC",
           TEMPERED_PREFIX + "auc": "tempered AUC", TEMPERED_PREFIX + "loss": "tempered loss"}

# What the numbers mean: summary.md's lines before its table, and the comparison's paragraph.
SUMMARY_TEXT = ("Cross-modal generalist tests: held-out paraphrase prompts, and every site's class prompts at",
                "once (union of labels; right modality = top prompt from the image's own modality). Centred: each",
                "class's score minus its mean over the site's validation images (no labels used). Two-stage: the",
                "modality first (pooled over its class prompts, or named by a public prompt), then the class.",
                "Ensemble: each class prompt averaged over its set's templates. Tempered: the own-prompt scores at",
                "the logit factor that minimises the site's validation loss.")
COMPARE_TEXT = ("Means over the sites. Unseen prompts: the site's classes in held-out paraphrase templates. Union of "
                "labels: every site's class prompts at once; `right modality` = share of test images whose top prompt "
                "is one of their own modality's. Centred: each class's score minus its mean over the site's validation "
                "images (labels unused), the calibration a site can apply alone. Two-stage: the modality first "
                "(pooled: the log-sum-exp of its class prompts; named: its public name as a prompt), then the class "
                "inside it. Ensemble: each class prompt averaged over every template of its set. Tempered: the "
                "own-prompt scores at the temperature that minimises the validation loss (ACC does not change).")
