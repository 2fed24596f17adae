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

from .. import wire
from ..crossmodal.model import PROJECTION, CrossModalModel, FixedProjection
from ..crossmodal.prompts import is_multi_label, site_prompts, vocabulary
from ..crossmodal.scoring import evaluate_cross_modal
from ..crossmodal.settings import CrossModalSettings
from ..crossmodal.text_tower import load_text_tower, text_tower_on_meta
from ..lora import (
    Adapter,
    SVDLoRAConfig,
    adapter_updates,
    get_adapter,
    inject_svd_lora,
    load_adapter,
    save_adapter,
    set_adapter,
)
from ..models import create_backbone, shared_base
from ..seeds import name_offset, site_seed
from ._registry import register_kind
from .adapter import AdapterKind

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..data import SiteData

TEXT_TOWER_NAME = "all-MiniLM-L6-v2"


def _projection_seed(cfg: RunConfig) -> int:
    return cfg.seed + name_offset(PROJECTION)


def _inject(image: nn.Module, projection: nn.Module, text: nn.Module, cfg: RunConfig, rank: int) -> None:
    lora = dataclasses.replace(cfg.lora, rank=rank)
    inject_svd_lora(image, lora)
    inject_svd_lora(projection, SVDLoRAConfig(rank, lora.alpha, ("map",), lora.init_std, lora.orth_weight))
    own: CrossModalSettings = cfg.kind_settings
    inject_svd_lora(text, SVDLoRAConfig(rank, lora.alpha, own.text_targets, own.text_init_std, lora.orth_weight))


class _Towers(nn.Module):
    """The three adapted parts under the names their adapter matrices carry (image.*, projection, text.*)."""

    def __init__(self, image: nn.Module, projection: nn.Module, text: nn.Module) -> None:
        super().__init__()
        self.image, self.projection, self.text = image, projection, text


@register_kind
class CrossModalKind(AdapterKind):
    name = "cross-modal"
    summary = "SVD-LoRA in the image and the text tower of a CLIP-style pair; classes are text prompts, no head"
    specialist_label = "cross-modal SVD-LoRA"
    supports_privacy = False  # the text tower's gradients are over prompts, not over a site's examples
    zero_shot = True
    evaluate_metrics = wire.GENERALIST_METRICS  # the union and unseen-prompt tests (crossmodal/scoring.py)
    settings_type = CrossModalSettings
    chosen_explicitly = True  # the merge names are the adapter kind's: `kind = "cross-modal"` selects this one

    def template(self, cfg: RunConfig) -> dict[str, tuple[int, int]]:
        with torch.device("meta"):
            image = create_backbone(cfg.model_name, num_classes=0)
            projection = FixedProjection(image.num_features, None)
        text = text_tower_on_meta()
        _inject(image, projection, text, cfg, cfg.lora.rank)
        towers = _Towers(image, projection, text)
        return {name: (u.lora_B.shape[0], u.lora_A.shape[1]) for name, u in adapter_updates(towers).items()}

    def shared_base(self, cfg: RunConfig) -> tuple[nn.Module, str]:
        image, image_print = shared_base(cfg.model_name, cfg.pretrained, cfg.seed)
        _, text_print = load_text_tower()
        joint = f"{image_print}:{TEXT_TOWER_NAME}:{text_print}:projection-{_projection_seed(cfg)}"
        return image, hashlib.sha256(joint.encode()).hexdigest()[:16]

    def base_name(self, cfg: RunConfig) -> str:
        return f"{cfg.model_name}+{TEXT_TOWER_NAME}"

    def save(self, update: Adapter, directory: Path, cfg: RunConfig, base_fingerprint: str | None) -> Path:
        update = Adapter(update.factors, update.scale, {**update.metadata, "kind": self.name,
                                                        "text_targets": list(cfg.kind_settings.text_targets)})
        return save_adapter(update, Path(directory) / "adapter", cfg.lora, self.base_name(cfg), base_fingerprint)

    def load(self, directory: Path, cfg: RunConfig, base_fingerprint: str | None) -> Adapter:
        return load_adapter(Path(directory) / "adapter", expect_lora=cfg.lora, expect_base=self.base_name(cfg),
                            expect_fingerprint=base_fingerprint)

    def build_model(self, cfg: RunConfig, data: SiteData, update: Adapter | None,
                    head: dict[str, torch.Tensor] | None) -> CrossModalModel:
        if head:
            raise ValueError("a cross-modal site has no head: its classes are text prompts")
        image, base_fingerprint = self.shared_base(cfg)
        text, _ = load_text_tower()
        projection = FixedProjection(image.num_features, _projection_seed(cfg))
        flag = data.site.flag
        own: CrossModalSettings = cfg.kind_settings
        negatives = vocabulary(flag) if own.negatives == "vocabulary" and not is_multi_label(flag) else None
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(site_seed(cfg.seed, data.site.name))
            _inject(image, projection, text, cfg, cfg.rank_of(data.site.name))
        model = CrossModalModel(image, projection, text, site_prompts(flag), own.logit_scale,
                                is_multi_label(flag), negatives, cfg.image_size, base_fingerprint)
        if update is not None:
            set_adapter(model, update)
        return model

    def extract(self, model: CrossModalModel) -> Adapter:
        return get_adapter(model)

    def head_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {}

    def evaluate(self, cfg: RunConfig, data: SiteData, update: Adapter, head: dict[str, torch.Tensor],
                 split: str = "test") -> dict[str, float]:
        model = self.build_model(cfg, data, update, head)
        # The generalist tests are for reports (test split); choosing options on validation needs ACC only.
        union = list(dict.fromkeys(s.flag for s in cfg.sites))
        return evaluate_cross_modal(model, getattr(data, split), data.task, data.site.flag, union,
                                    generalist=split == "test", calibration=data.val, device=cfg.train.device,
                                    precision=cfg.train.precision)
