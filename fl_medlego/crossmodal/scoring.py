"""Evaluation of a cross-modal model: its own prompts, held-out paraphrases, and the union of every site's labels.

The image embeddings of a split are computed once and scored against each prompt set, so the two
generalist tests cost a text encoding each, not another pass of the image tower.

- own prompts: the site's class prompts in its training template (acc, auc, f1, loss as everywhere);
- unseen prompts (MedCT-VLM's unseen text prompts): the same classes in held-out paraphrase templates,
  metrics averaged over the templates (unseen-acc, unseen-auc, unseen-f1);
- union of labels: every site's class prompts at once (23 for the four default sites); union-acc is the
  share of images whose top prompt is their own class, modality-share the share whose top prompt is one
  of their own modality's. Single-label sites only: a multi-label site's score is per finding. A site with
  its own images scores the run's MedMNIST blocks plus its own class prompts as one more block (another
  hospital's class names never leave that hospital, so no site sees them);
- centred scores (with a calibration split, the site's validation images): each class's logit minus its
  mean over those images, labels unused. A merge that shrinks every update moves all images towards the
  same prompt; centring undoes that shift at the site, with C numbers that never leave it;
- tempered scores (the same calibration split, labels used, two classes or more in it): the own-prompt logits
  times the factor (1 / temperature), from a fixed grid, that minimises the loss on it. ACC does not move (one
  factor for every class), nor does AUROC for two classes or per finding; the loss does, and a multi-class
  site's AUROC may;
- prompt ensembles (CLIP's practice): each class prompt's embedding averaged over every template of its set
  (the training one and the paraphrases), scored as the own prompts are;
- two-stage routing over the union: first the modality, then the class among that modality's prompts.
  "pooled": a modality scores the log-sum-exp of its class prompts' logits (the quantity anchors train);
  "named": the modality's public name as a prompt ("a pediatric chest x-ray."), MedMNIST sets only.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data.sites import Split
from ..device import autocast, placed, resolve_device, resolve_precision, to_device
from ..metrics import MULTI_LABEL, classification_metrics
from ..train import task_loss, to_model_input
from . import metrics as metric_names
from .metrics import CENTRED_PREFIX, ENSEMBLE_PREFIX, MODALITY_SHARE, TEMPERED_PREFIX, UNION_ACC, UNSEEN_PREFIX
from .model import CrossModalModel
from .prompts import class_prompts, ensemble_templates, modality_prompt, site_prompts, unseen_templates
from .text_tower import sentence_embeddings, tokenize

UNSEEN_METRICS = ("acc", "auc", "f1")  # each as UNSEEN_PREFIX + name
LOGIT_FACTORS = tuple(float(f) for f in np.geomspace(0.1, 10.0, 41))  # 1 / temperature; 1.0 is among them


@torch.no_grad()
def image_embeddings(model: CrossModalModel, split: Split, batch_size: int = 256) -> torch.Tensor:
    """Float32 embeddings of a split's images, on the device the model is on."""
    model.eval()
    device = next(model.parameters()).device
    parts = [model.embed_images(to_model_input(to_device(split.images[i:i + batch_size], device), model.image_size))
             for i in range(0, len(split), batch_size)]
    return torch.cat(parts).float()


@torch.no_grad()
def _text_embeddings(model: CrossModalModel, prompts: list[str]) -> torch.Tensor:
    return sentence_embeddings(model.text, tokenize(prompts)).float()


def _similarity(images: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """Cosine similarities in float32 whatever autocast the towers ran under (bf16 would tie the argmax and
    cannot become a numpy array)."""
    with torch.autocast(images.device.type, enabled=False):
        return images.float() @ texts.float().T


@torch.no_grad()
def _logits(model: CrossModalModel, images: torch.Tensor, prompts: list[str] | torch.Tensor) -> torch.Tensor:
    """(images, classes) float32 logits on the CPU, as the metrics want them; `prompts` may be their
    embeddings already (a calibration split scored against the same prompts)."""
    texts = prompts if isinstance(prompts, torch.Tensor) else _text_embeddings(model, prompts)
    similarity = _similarity(images, texts)
    if model.multi_label:
        return (model.logit_scale * (similarity[:, 0::2] - similarity[:, 1::2])).cpu()
    return (model.logit_scale * similarity).cpu()


def _metrics(logits: torch.Tensor, labels: torch.Tensor, task: str) -> dict[str, float]:
    loss = task_loss(logits, labels, task).item()
    scores = torch.sigmoid(logits) if task == MULTI_LABEL else torch.softmax(logits, dim=1)
    return classification_metrics(labels.numpy(), scores.numpy().astype(np.float64), task, loss)


def evaluate_cross_modal(model: CrossModalModel, split: Split, task: str, flag: str,
                         union_flags: list[str] | None = None, generalist: bool = True,
                         calibration: Split | None = None, device: str = "auto",
                         precision: str = "auto") -> dict[str, float]:
    """Own-prompt metrics, and with `generalist` the unseen-prompt test and the prompt ensemble (MedMNIST
    sets), (single-label sites) the union-of-labels test with two-stage routing and, given a non-empty
    `calibration` split, the centred and tempered scores.
    Runs on `device` in `precision` (fl_medlego.device); the model is put back where it was."""
    if len(split) == 0:
        raise ValueError("cannot evaluate on an empty split")
    on = resolve_device(device)
    with placed(model, on), autocast(on, resolve_precision(precision, on)):
        return _evaluate(model, split, task, flag, union_flags, generalist, calibration)


def _evaluate(model: CrossModalModel, split: Split, task: str, flag: str, union_flags: list[str] | None,
              generalist: bool, calibration: Split | None) -> dict[str, float]:
    # The model's own prompts: its set's (flag) or, for a site with its own images (flag ""), its class names'.
    images, own = image_embeddings(model, split), _text_embeddings(model, model.prompts)
    logits = _logits(model, images, own)
    out = _metrics(logits, split.labels, task)
    if not generalist:
        return out
    if calibration is not None and len(calibration) > 0:
        calibration_logits = _logits(model, image_embeddings(model, calibration), own)
        centred = _metrics(logits - calibration_logits.mean(dim=0), split.labels, task)
        out |= {CENTRED_PREFIX + name: centred[name] for name in ("acc", "auc", "f1")}
        if task == MULTI_LABEL or len(calibration.labels[:, 0].unique()) > 1:  # one class: any loss wants 0 or inf
            tempered = _metrics(logits * best_logit_factor(calibration_logits, calibration.labels, task),
                                split.labels, task)
            out |= {TEMPERED_PREFIX + name: tempered[name] for name in ("auc", "loss")}
    out |= _union_test(model, images, split, task, flag, union_flags)
    if not flag:  # a site's own classes have no held-out paraphrases
        return out
    unseen = [_metrics(_logits(model, images, site_prompts(flag, t)), split.labels, task)
              for t in unseen_templates(flag)]
    for name in UNSEEN_METRICS:
        out[UNSEEN_PREFIX + name] = float(np.nanmean([m[name] for m in unseen]))
    ensemble = _metrics(_logits(model, images, ensemble_embeddings(model, flag)), split.labels, task)
    out |= {ENSEMBLE_PREFIX + name: ensemble[name] for name in ("acc", "auc", "f1")}
    return out


def _union_test(model: CrossModalModel, images: torch.Tensor, split: Split, task: str, flag: str,
                union_flags: list[str] | None) -> dict[str, float]:
    """union_of_labels over the run's sets, or {} where it does not apply (a multi-label site, no union). A site
    with its own images (flag "") is one more block, last; a MedMNIST set's block has its public name too."""
    if not union_flags or task == MULTI_LABEL or (flag and flag not in union_flags):
        return {}
    if not flag:
        blocks = own_site_blocks(union_flags, model.prompts)
        return union_of_labels(model, images, split.labels[:, 0], blocks, len(blocks) - 1)
    blocks = [class_prompts(f) for f in union_flags]
    names = [modality_prompt(f) for f in union_flags]
    return union_of_labels(model, images, split.labels[:, 0], blocks, union_flags.index(flag), names)


def union_acc(model: CrossModalModel, split: Split, task: str, flag: str, union_flags: list[str],
              device: str = "auto", precision: str = "auto") -> float | None:
    """The union test's union-acc alone: the share of a split's images whose top prompt among the union's is their
    own class (what choosing a generalist's merge options on validation wants: it sees the routing), or None
    where the union test does not apply (a multi-label site)."""
    on = resolve_device(device)
    with placed(model, on), autocast(on, resolve_precision(precision, on)):
        union = _union_test(model, image_embeddings(model, split), split, task, flag, union_flags)
    return union.get(UNION_ACC)


def best_logit_factor(logits: torch.Tensor, labels: torch.Tensor, task: str) -> float:
    """The factor of LOGIT_FACTORS (1 / temperature) that minimises the loss of `logits` (a site's validation
    images); of equal losses, the one nearest 1, so a split that cannot tell them apart changes the least."""
    losses = [task_loss(logits * f, labels, task).item() for f in LOGIT_FACTORS]
    return min(zip(losses, LOGIT_FACTORS), key=lambda pair: (pair[0], abs(np.log(pair[1]))))[1]


@torch.no_grad()
def ensemble_embeddings(model: CrossModalModel, flag: str) -> torch.Tensor:
    """Each of the set's prompts averaged over every template of the set, unit length again."""
    stacked = torch.stack([_text_embeddings(model, site_prompts(flag, t)) for t in ensemble_templates(flag)])
    return torch.nn.functional.normalize(stacked.mean(dim=0), dim=-1)


def own_site_blocks(union_flags: list[str], prompts: list[str]) -> list[list[str]]:
    """The union's blocks for a site with its own class prompts: the run's MedMNIST sets', then its own, last.
    A prompt it shares word for word with a MedMNIST set (the same template and class name) counts as its own:
    left in both, the tie would go to the block scored first."""
    mine = set(prompts)
    return [*([p for p in class_prompts(f) if p not in mine] for f in union_flags), list(prompts)]


def union_of_labels(model: CrossModalModel, images: torch.Tensor, labels: torch.Tensor, blocks: list[list[str]],
                    own: int, names: list[str] | None = None) -> dict[str, float]:
    """Score every block's prompts at once; `own` is the block of the images' own modality (their labels index it).
    union-acc: the top prompt is the image's own class; modality-share: it is in the own block. Two-stage
    routing (pooled, and with `names`, one public name per block, named): the share whose chosen block is the
    own one, and the share whose chosen block is the own one and whose top prompt inside it is their class."""
    starts = np.cumsum([0, *(len(block) for block in blocks)])
    spans = list(zip(starts[:-1].tolist(), starts[1:].tolist()))
    prompts = [p for block in blocks for p in block]
    similarity = _similarity(images, _text_embeddings(model, prompts)).cpu()
    top = similarity.argmax(dim=1)
    a, b = spans[own]
    inside = (top >= a) & (top < b)
    out = {UNION_ACC: float((top == labels + a).float().mean()), MODALITY_SHARE: float(inside.float().mean())}
    right_class = similarity[:, a:b].argmax(dim=1) == labels
    pooled = torch.stack([(model.logit_scale * similarity[:, i:j]).logsumexp(dim=1) for i, j in spans], dim=1)
    out |= _routed(pooled.argmax(dim=1) == own, right_class, metric_names.POOLED_ROUTE)
    if names is not None:
        chosen = _similarity(images, _text_embeddings(model, names)).argmax(dim=1).cpu()
        out |= _routed(chosen == own, right_class, metric_names.NAMED_ROUTE)
    return out


def _routed(right_block: torch.Tensor, right_class: torch.Tensor, names: tuple[str, str]) -> dict[str, float]:
    acc, share = names
    return {acc: float((right_block & right_class).float().mean()), share: float(right_block.float().mean())}
