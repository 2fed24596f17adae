"""The two pretraining objectives: category supervision (FractalDB) and SimCLR's contrastive loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SupervisedObjective(nn.Module):
    """A linear classifier over the pooled features; cross-entropy with label smoothing (FractalDB's recipe)."""

    def __init__(self, width: int, num_classes: int, smoothing: float = 0.1) -> None:
        super().__init__()
        self.classifier = nn.Linear(width, num_classes)
        self.smoothing = smoothing

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.classifier(features), labels, label_smoothing=self.smoothing)


class SimCLRObjective(nn.Module):
    """NT-Xent over two views of each image (Chen et al., ICML 2020), through a small projection MLP.

    `features` holds the first views then the second views: rows i and i + B are a positive pair,
    every other row of the batch is a negative.
    """

    def __init__(self, width: int, projection: int = 128, temperature: float = 0.2) -> None:
        super().__init__()
        self.projector = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, projection))
        self.temperature = temperature

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        z = F.normalize(self.projector(features), dim=1)
        n = len(z) // 2
        similarity = z @ z.T / self.temperature
        similarity.fill_diagonal_(float("-inf"))
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        return F.cross_entropy(similarity, positives)
