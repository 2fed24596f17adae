"""The `full` kind: sites fine-tune every backbone weight and a head; whole backbones travel, and the
server averages them (FedAvg of full models, a model soup). The paper's "ViT averaging" row, run as
strategy `vit_avg`, with the same site addressing, reply checks and summary as the adapter kind."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import torch
from safetensors.torch import save_file

from .. import wire
from ..files import atomic_path, read_tensors
from ..models import SiteModel, create_backbone, shared_base
from ..seeds import site_seed
from ..settings import check_group, setting
from ..train import TrainConfig
from ._registry import SiteKind, register_kind
from ._server import KindServer, MergeChoice
from ._site import KindSite

if TYPE_CHECKING:
    from ..data import SiteData

WEIGHT_AVERAGING = "vit_avg"  # the strategy name users know from the paper's table
WEIGHTS_FILE = "backbone.safetensors"


def average_backbones(states: Sequence[dict[str, torch.Tensor]], weights: torch.Tensor | None = None
                      ) -> dict[str, torch.Tensor]:
    """Weighted (default: uniform) average of full backbone weights, in float64."""
    w = torch.full((len(states),), 1.0 / len(states), dtype=torch.float64) if weights is None else weights.double()
    return {k: torch.einsum("n,n...->...", w, torch.stack([s[k].double() for s in states])).to(states[0][k].dtype)
            for k in states[0]}


@dataclass(frozen=True)
class FullSettings:
    """Settings of the full kind (run config `full.*`)."""

    PREFIX: ClassVar[str] = "full."

    lr: float = setting(0.001, "full fine-tuning (`vit_avg` sites, the multi-task reference of `fl-medlego "
                        "compare`): AdamW at 1e-3 as usual for ViTs", above=0)

    def __post_init__(self) -> None:
        check_group(self)


class FullServer(KindServer):
    """Whole backbones on the wire and on disk, averaged; an update's size is its change from the round's start."""

    keeps_reference = True

    def template(self) -> dict[str, tuple[int, ...]]:
        """Tensor name -> shape of the shared backbone's state dict."""
        with torch.device("meta"):
            backbone = create_backbone(self.context.model_name, num_classes=0)
        return {k: tuple(v.shape) for k, v in backbone.state_dict().items()}

    def reference_of(self, base: torch.nn.Module) -> dict[str, torch.Tensor]:
        return base.state_dict()  # whole weights are not small: the first round's changes are from the base

    def size_bound(self, template: dict) -> int:
        return sum(math.prod(shape) for shape in template.values())

    def norm(self, update: dict[str, torch.Tensor], reference: dict[str, torch.Tensor] | None) -> float:
        """Of the change from `reference` (the weights the round started from): whole weights are not small."""
        if reference is None:
            raise ValueError("a full-weight update's size is measured against the weights the round started from")
        return math.sqrt(sum(float((update[k].double() - reference[k].double()).square().sum()) for k in update))

    def scaled(self, update: dict[str, torch.Tensor], factor: float,
               reference: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        return {k: (reference[k].double() + factor * (update[k].double() - reference[k].double())).to(update[k].dtype)
                for k in update}

    def encode(self, update: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return wire.encode_backbone(update)

    def decode(self, tensors: dict[str, torch.Tensor], template: dict) -> dict[str, torch.Tensor]:
        return wire.decode_backbone(tensors, template)

    def save(self, update: dict[str, torch.Tensor], directory: Path, base_fingerprint: str | None) -> Path:
        path = Path(directory) / WEIGHTS_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        about = {"base_model": self.context.model_name,
                 **({"base_fingerprint": base_fingerprint} if base_fingerprint else {})}
        with atomic_path(path) as tmp:
            save_file({k: v.contiguous() for k, v in update.items()}, str(tmp), metadata=about)
        return path

    def load(self, directory: Path, base_fingerprint: str | None) -> dict[str, torch.Tensor]:
        """A saved backbone; its shapes must fit the configured model (an averaged backbone replaces the base
        as a whole, so it is not tied to the base's fingerprint the way an adapter is)."""
        return self.decode(read_tensors(Path(directory) / WEIGHTS_FILE), self.template())

    def combine(self, updates: Sequence[dict[str, torch.Tensor]], weights: torch.Tensor | None,
                merge: MergeChoice) -> dict[str, torch.Tensor]:
        return average_backbones(updates, weights)


class FullSite(KindSite):
    """Every backbone weight and a head fine-tuned (AdamW at full.lr, no orthogonality term)."""

    def build_model(self, data: SiteData, update: dict[str, torch.Tensor] | None,
                    head: dict[str, torch.Tensor] | None) -> SiteModel:
        c = self.context
        backbone, base_fingerprint = shared_base(c.model_name, c.pretrained, c.seed)
        with torch.random.fork_rng(devices=[]):  # the head differs by site, reproducibly
            torch.manual_seed(site_seed(c.seed, data.site.name))
            model = SiteModel(backbone, data.num_classes, c.image_size, base_fingerprint)
        if update is not None:
            model.backbone.load_state_dict(update)
        if head is not None:
            model.head.load_state_dict(head)
        return model  # every weight trainable: shared_base hands out an unfrozen copy

    def extract(self, model: SiteModel) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in model.backbone.state_dict().items()}

    def train_config(self) -> TrainConfig:
        own: FullSettings = self.context.settings
        return dataclasses.replace(self.context.train, lr=own.lr, orth_weight=0.0)


@register_kind
class FullWeightKind(SiteKind):
    name = "full"
    settings_type = FullSettings
    summary = "every backbone weight + head fine-tuned; whole backbones are averaged (ViT averaging)"
    specialist_label = "full fine-tune"
    saves_adapters = False  # its updates are whole backbones
    site_type = FullSite
    server_type = FullServer

    def strategies(self) -> list[str]:
        return [WEIGHT_AVERAGING]

    def merge_options(self, strategy: str, shared: dict, options: dict) -> None:
        if options:
            raise ValueError(f"strategy {strategy!r} averages whole backbones and takes no merge.options, "
                             f"got {sorted(options)}: set merge.options=''")
        return None
