"""LoRA-LEGO (Zhao et al., "Merging LoRAs like Playing LEGO: Enhancing the Modularity of LoRA with
Rank-Wise Clustering", ICLR 2025, arXiv 2409.16167).

Every rank of every site's adapter is a minimal semantic unit (MSU): a pair (b_j, a_j) whose outer
product is that rank's share of the update, D_i = sum_j b_j a_j. MSUs can be permuted and an adapter
is the sum of its units, so merging is regrouping: cluster all N x r units into k groups (k-means on the
concatenated [b; a]) and take each group's centroid as one rank of the merged adapter. Averaging inside
a group shrinks the centroid's norm; the norm calibration rescales each centroid's b and a parts to the
mean norms of its members (the paper's remedy for that decay). With k equal to the total rank every
unit is its own group and the result is the exact sum of the updates (task arithmetic at lambda = 1).

In this project's factors a unit is (sqrt|e_j| B[:, j], sign(e_j) sqrt|e_j| A[j]), with the site weight
N w_i on its a part. A unit and its negation (-b, -a) are the same update: each unit's sign is fixed
(largest |entry| of b positive) before clustering so that k-means does not see them as opposites.
Native to low-rank factors: the result has rank k, brought to SVD form through the QR core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..lora.factors import Factors
from ._lowrank import svd_of_product, truncate
from ._registry import register_merge


@dataclass
class LoraLegoOptions:
    # Values tried on the sites' validation splits by `fl-medlego compare` (never on test).
    search_space: ClassVar[dict] = {"lam": [0.5, 1.0, 2.0]}
    clusters: int | None = None  # k; None = the largest site rank (a merged adapter the size of one site's)
    lam: float = 1.0
    calibrate: bool = True  # rescale each centroid to its members' mean norms
    iterations: int = 50
    seed: int = 0  # k-means++ initialisation

    def __post_init__(self) -> None:
        if self.clusters is not None and self.clusters < 1:
            raise ValueError(f"lora_lego clusters must be >= 1 or None, got {self.clusters}")
        if self.iterations < 1:
            raise ValueError(f"lora_lego iterations must be >= 1, got {self.iterations}")


def units(factors: list[Factors], weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every site's rank-wise units, float64: b (R x d_out) and a (R x d_in) with sum_j b_j a_j^T = sum N w_i D_i."""
    bs, as_ = [], []
    for f, w in zip(factors, weights * len(weights)):
        root = f.E.double().abs().sqrt()
        b = f.B.double().T * root[:, None]
        a = f.A.double() * (torch.sign(f.E.double()) * root * w)[:, None]
        flip = torch.sign(b.gather(1, b.abs().argmax(dim=1, keepdim=True))).clamp_min(0) * 2 - 1
        bs.append(b * flip)
        as_.append(a * flip)
    return torch.cat(bs), torch.cat(as_)


def kmeans(points: torch.Tensor, k: int, iterations: int, seed: int) -> torch.Tensor:
    """Cluster index of each row (k-means++ start from a seeded generator, then Lloyd's iterations)."""
    n = len(points)
    if k >= n:
        return torch.arange(n)
    generator = torch.Generator().manual_seed(seed)
    centres = [points[torch.randint(n, (1,), generator=generator)].squeeze(0)]
    for _ in range(1, k):
        distance = torch.cdist(points, torch.stack(centres)).min(dim=1).values ** 2
        if distance.sum() <= 0:  # fewer distinct units than clusters
            centres.append(points[len(centres) % n])
            continue
        centres.append(points[torch.multinomial(distance / distance.sum(), 1, generator=generator)].squeeze(0))
    centre = torch.stack(centres)
    assign = torch.cdist(points, centre).argmin(dim=1)
    for _ in range(iterations):
        for c in range(k):
            members = assign == c
            if members.any():
                centre[c] = points[members].mean(dim=0)
        new = torch.cdist(points, centre).argmin(dim=1)
        if torch.equal(new, assign):
            break
        assign = new
    return assign


@register_merge("lora_lego", LoraLegoOptions)
def lora_lego(factors: list[Factors], weights: torch.Tensor, options: LoraLegoOptions) -> Factors:
    """Cluster all sites' rank-wise units into k groups; each group's (calibrated) centroid is one merged rank."""
    b, a = units(factors, weights)
    alive = (b.norm(dim=1) > 0) & (a.norm(dim=1) > 0)  # a rank with e_j = 0 (or weight 0) contributes nothing
    if alive.any():
        b, a = b[alive], a[alive]
    k = min(options.clusters or max(f.rank for f in factors), len(b))
    assign = kmeans(torch.cat([b, a], dim=1), k, options.iterations, options.seed)
    groups = [assign == c for c in range(int(assign.max()) + 1) if (assign == c).any()]
    merged_b = torch.stack([b[g].mean(dim=0) for g in groups])
    merged_a = torch.stack([a[g].mean(dim=0) for g in groups])
    if options.calibrate:
        for i, g in enumerate(groups):
            for merged, part in ((merged_b, b), (merged_a, a)):
                norm = merged[i].norm()
                if norm > 0:
                    merged[i] *= part[g].norm(dim=1).mean() / norm
    U, S, Vh = svd_of_product(merged_b.T, merged_a * options.lam)
    return truncate(U, S, Vh, None, factors[0].B.dtype)
