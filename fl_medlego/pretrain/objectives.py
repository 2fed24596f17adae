"""The pretraining objectives, by the name a recipe gives (`recipe.objective`): category supervision
(FractalDB), SimCLR's contrastive loss and SimMIM's masked-pixel loss.

Each one builds itself for a backbone and a recipe, and turns one step's batch into a loss; the runner
calls that interface and never asks which objective it holds.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnknownNameError

View = Callable[[], torch.Tensor]  # each call draws one augmented view of the step's batch (on the CPU)


class PretrainObjective(nn.Module):
    @classmethod
    def build(cls, backbone: nn.Module, recipe) -> PretrainObjective:
        raise NotImplementedError

    def step_loss(self, backbone: nn.Module, view: View, labels: torch.Tensor | None, generator: torch.Generator,
                  device: torch.device | str) -> torch.Tensor:
        raise NotImplementedError


class SupervisedObjective(PretrainObjective):
    """A linear classifier over the pooled features; cross-entropy with label smoothing (FractalDB's recipe)."""

    @classmethod
    def build(cls, backbone: nn.Module, recipe) -> SupervisedObjective:
        return cls(backbone.num_features, recipe.categories)

    def step_loss(self, backbone, view, labels, generator, device) -> torch.Tensor:
        return self(backbone(view().to(device)), labels.to(device))

    def __init__(self, width: int, num_classes: int, smoothing: float = 0.1) -> None:
        super().__init__()
        self.classifier = nn.Linear(width, num_classes)
        self.smoothing = smoothing

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.classifier(features), labels, label_smoothing=self.smoothing)


class SimCLRObjective(PretrainObjective):
    """NT-Xent over two views of each image (Chen et al., ICML 2020), through a small projection MLP.

    `features` holds the first views then the second views: rows i and i + B are a positive pair,
    every other row of the batch is a negative.
    """

    def __init__(self, width: int, projection: int = 128, temperature: float = 0.2) -> None:
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, projection))
        self.temperature = temperature

    @classmethod
    def build(cls, backbone: nn.Module, recipe) -> SimCLRObjective:
        return cls(backbone.num_features)

    def step_loss(self, backbone, view, labels, generator, device) -> torch.Tensor:
        return self(backbone(torch.cat([view(), view()]).to(device)))

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = F.normalize(self.projector(features), dim=1)
        n = len(z) // 2
        similarity = z @ z.T / self.temperature
        similarity.fill_diagonal_(float("-inf"))
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
        return F.cross_entropy(similarity, positives)


class MaskedImageObjective(PretrainObjective):
    """SimMIM (Xie et al., CVPR 2022): hide random patches behind a learnt mask token, predict their pixels.

    Unlike the two objectives above it asks the features to keep the image's content rather than to
    discard what augmentation changes (colour, position), which matters when the base stays frozen.
    """

    def __init__(self, backbone: nn.Module, mask_ratio: float = 0.6) -> None:
        super().__init__()
        self.patch = backbone.patch_embed.patch_size[0]
        width = backbone.num_features
        self.mask_token = nn.Parameter(torch.zeros(1, 1, width))
        nn.init.normal_(self.mask_token, std=0.02)
        self.decoder = nn.Linear(width, self.patch * self.patch * 3)
        self.mask_ratio = mask_ratio

    @classmethod
    def build(cls, backbone: nn.Module, recipe) -> MaskedImageObjective:
        return cls(backbone)

    def step_loss(self, backbone, view, labels, generator, device) -> torch.Tensor:
        return self(backbone, view().to(device), generator)

    def forward(self, backbone: nn.Module, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        tokens = backbone.patch_embed(images)  # (B, L, C)
        # Drawn on the CPU from the run's seeded generator, whatever device the model is on.
        masked = (torch.rand(tokens.shape[:2], generator=generator) < self.mask_ratio).to(tokens.device)
        tokens = torch.where(masked[..., None], self.mask_token.to(tokens.dtype), tokens)
        x = backbone.norm(backbone.blocks(backbone.norm_pre(backbone._pos_embed(tokens))))
        predicted = self.decoder(x[:, backbone.num_prefix_tokens:])
        p = self.patch
        target = F.unfold(images, kernel_size=p, stride=p).transpose(1, 2)  # (B, L, 3 * p * p), channel-major
        return (predicted - target).abs().mean(-1)[masked].mean()


OBJECTIVES: dict[str, type[PretrainObjective]] = {
    "supervised": SupervisedObjective, "simclr": SimCLRObjective, "mim": MaskedImageObjective,
}


def build_objective(name: str, backbone: nn.Module, recipe) -> PretrainObjective:
    if name not in OBJECTIVES:
        raise UnknownNameError("pretraining objective", name, OBJECTIVES)
    return OBJECTIVES[name].build(backbone, recipe)
