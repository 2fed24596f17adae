"""The `cross-modal` kind: SVD-LoRA in both towers of a CLIP-style pair, classes read from text prompts.

The MedCT-VLM idea (docs/method.md) in the federation: each site adapts the image tower (the shared
base, Q and V as the adapter kind), a fixed projection into the text space, and the MiniLM text tower
(query and value), all as one adapter; the server merges every matrix of it with any registered merge,
no special case. A site scores its images against prompts of its own classes: there is no head, so
the merged model is one model for every site. Runs with `kind = "cross-modal"` in the run config and a
merge method as the strategy (scenarios/cross_modal).
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..crossmodal import metrics
from ..crossmodal.anchors import load_anchors, modality_spans
from ..crossmodal.model import PROJECTION, CrossModalModel, FixedProjection
from ..crossmodal.prompts import is_multi_label, own_prompts, site_prompts, vocabulary
from ..crossmodal.scoring import evaluate_cross_modal, union_acc
from ..crossmodal.settings import CrossModalSettings
from ..crossmodal.text_tower import load_text_tower, text_tower_on_meta
from ..lora import (
    Adapter,
    SVDLoRAConfig,
    adapter_updates,
    get_adapter,
    inject_svd_lora,
    set_adapter,
)
from ..metrics import MULTI_LABEL
from ..models import create_backbone, shared_base
from ..seeds import name_offset, site_seed
from ._context import KindContext
from ._registry import ReportColumns, register_kind
from .adapter import AdapterKind, AdapterServer, AdapterSite

if TYPE_CHECKING:
    from ..data import SiteData

TEXT_TOWER_NAME = "all-MiniLM-L6-v2"
UNTRAINED = "untrained pair (zero-shot)"  # the model before any training: classes from prompts alone


def _projection_seed(context: KindContext) -> int:
    return context.seed + name_offset(PROJECTION)


def _inject(image: nn.Module, projection: nn.Module, text: nn.Module, context: KindContext, rank: int) -> None:
    """SVD-LoRA in the sides `cross-modal.towers` names; the others stay frozen (their matrices are not in the
    adapter, so neither the update nor the template holds them)."""
    lora = dataclasses.replace(context.lora, rank=rank)
    own: CrossModalSettings = context.settings
    if own.towers in ("both", "image"):
        inject_svd_lora(image, lora)
        inject_svd_lora(projection, SVDLoRAConfig(rank, lora.alpha, ("map",), lora.init_std, lora.orth_weight))
    if own.towers in ("both", "text"):
        inject_svd_lora(text, SVDLoRAConfig(rank, lora.alpha, own.text_targets, own.text_init_std,
                                            lora.orth_weight))
    for side in (image, projection, text):  # inject_svd_lora froze the sides it adapted; freeze the rest too
        if not adapter_updates(side):
            side.requires_grad_(False)


class _Towers(nn.Module):
    """The three adapted parts under the names their adapter matrices carry (image.*, projection, text.*)."""

    def __init__(self, image: nn.Module, projection: nn.Module, text: nn.Module) -> None:
        super().__init__()
        self.image, self.projection, self.text = image, projection, text


def _joint_base(context: KindContext) -> tuple[nn.Module, str]:
    """The image tower's shared base, and the fingerprint of the whole pair (image base, text tower, projection)."""
    image, image_print = shared_base(context.model_name, context.pretrained, context.seed)
    _, text_print = load_text_tower()
    joint = f"{image_print}:{TEXT_TOWER_NAME}:{text_print}:projection-{_projection_seed(context)}"
    return image, hashlib.sha256(joint.encode()).hexdigest()[:16]


class CrossModalServer(AdapterServer):
    """One adapter over both towers: merged as any adapter; saved with the text tower's name and targets."""

    def template(self) -> dict[str, tuple[int, int]]:
        # Everything on the meta device: building a template draws nothing from the global generator.
        with torch.device("meta"):
            image = create_backbone(self.context.model_name, num_classes=0)
            projection = FixedProjection(image.num_features, None)
            text = text_tower_on_meta()
            _inject(image, projection, text, self.context, self.context.lora.rank)
        towers = _Towers(image, projection, text)
        return {name: (u.lora_B.shape[0], u.lora_A.shape[1]) for name, u in adapter_updates(towers).items()}

    def shared_base(self) -> tuple[nn.Module, str]:
        return _joint_base(self.context)

    def base_name(self) -> str:
        return f"{self.context.model_name}+{TEXT_TOWER_NAME}"

    def save(self, update: Adapter, directory: Path, base_fingerprint: str | None) -> Path:
        own: CrossModalSettings = self.context.settings
        update = Adapter(update.factors, update.scale, {**update.metadata, "kind": self.kind.name,
                                                        "towers": own.towers, "text_targets": list(own.text_targets)})
        return super().save(update, directory, base_fingerprint)

    def load(self, directory: Path, base_fingerprint: str | None) -> Adapter:
        update = super().load(directory, base_fingerprint)
        saved, here = update.metadata.get("towers", "both"), self.context.settings.towers
        if saved != here:  # the matrix lists differ; say which setting, not only which matrices
            raise ValueError(f"the adapter in {directory} adapts cross-modal.towers={saved!r}, this run {here!r}: "
                             f"run with --run-config \"cross-modal.towers='{saved}'\"")
        return update


class CrossModalSite(AdapterSite):
    """Both towers adapted; a site scores its images against its own class prompts (no head)."""

    def build_model(self, data: SiteData, update: Adapter | None,
                    head: dict[str, torch.Tensor] | None) -> CrossModalModel:
        if head:
            raise ValueError("a cross-modal site has no head: its classes are text prompts")
        c = self.context
        image, base_fingerprint = _joint_base(c)
        text, _ = load_text_tower()
        projection = FixedProjection(image.num_features, _projection_seed(c))
        flag = data.site.flag
        own: CrossModalSettings = c.settings
        # A MedMNIST site reads its set's prompts; a site with its own images, its class names in its template.
        multi_label = is_multi_label(flag) if flag else data.task == MULTI_LABEL
        prompts = site_prompts(flag) if flag else own_prompts(data.class_names, multi_label, data.prompt_template)
        negatives = vocabulary(flag) if own.negatives != "none" and not multi_label else None
        anchors = load_anchors(own.anchors, flag, len(prompts)) if negatives else None
        spans = modality_spans(flag, len(prompts)) if negatives and own.negatives == "modality" else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(site_seed(c.seed, data.site.name))
            _inject(image, projection, text, c, c.rank_of(data.site.name))
        model = CrossModalModel(image, projection, text, prompts, own.logit_scale, multi_label, negatives,
                                c.image_size, base_fingerprint, anchors, own.anchor_weight, spans)
        if update is not None:
            set_adapter(model, update)
        return model

    def extract(self, model: CrossModalModel) -> Adapter:
        return get_adapter(model)

    def head_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {}

    def evaluate(self, data: SiteData, update: Adapter | None, head: dict[str, torch.Tensor] | None,
                 split: str = "test") -> dict[str, float]:
        model = self.build_model(data, update, head)
        # The generalist tests are for reports (test split); choosing options on validation needs ACC only.
        union = list(dict.fromkeys(self.context.site_flags))
        train = self.context.train
        return evaluate_cross_modal(model, getattr(data, split), data.task, data.site.flag, union,
                                    generalist=split == "test", calibration=data.val, device=train.device,
                                    precision=train.precision)

    @property
    def tuning_metric(self) -> str:
        return self.context.settings.tune_on

    def tuning_score(self, data: SiteData, update: Adapter | None, head: dict[str, torch.Tensor] | None) -> float:
        # A multi-label site has no union test: its own-prompt ACC is its part of the mean.
        if self.tuning_metric == "acc" or data.task == MULTI_LABEL:
            return super().tuning_score(data, update, head)
        train = self.context.train
        return union_acc(self.build_model(data, update, head), data.val, data.task, data.site.flag,
                         list(dict.fromkeys(self.context.site_flags)), device=train.device, precision=train.precision)


@register_kind
class CrossModalKind(AdapterKind):
    name = "cross-modal"
    summary = ("SVD-LoRA in a CLIP-style pair (the image side by default, cross-modal.towers); classes are text "
               "prompts, no head")
    specialist_label = "cross-modal SVD-LoRA"
    # A text tower's gradients are over prompts, not over a site's examples, and the anchors' term is over public
    # images: per-example clipping of a site's images would bound neither.
    supports_privacy = False
    # The union and unseen-prompt tests (crossmodal/scoring.py), and the test split's majority-class rate.
    evaluate_metrics = (*metrics.GENERALIST_METRICS, *AdapterKind.evaluate_metrics)
    metric_schema = metrics.SCHEMA
    undefined_metrics = metrics.MAY_BE_UNDEFINED
    report = ReportColumns(
        title="Cross-modal: macro-F1, unseen prompts, union of labels", columns=metrics.COLUMNS,
        summary_text=metrics.SUMMARY_TEXT, compare_text=metrics.COMPARE_TEXT,
        compare_first={"f1": "macro-F1"}, per_site=((metrics.MODALITY_SHARE, "right modality"),))
    untrained_rows = (UNTRAINED,)  # its untrained model classifies already (prompts): compare reports it
    settings_type = CrossModalSettings
    chosen_explicitly = True  # the merge names are the adapter kind's: `kind = "cross-modal"` selects this one
    site_type = CrossModalSite
    server_type = CrossModalServer
