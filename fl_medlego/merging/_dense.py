"""Entry-wise machinery for methods that work on dense updates (TIES, DARE, MagMax) and back to factors."""

from __future__ import annotations

import torch

from ..lora.factors import Factors
from ._lowrank import truncate


def dense_updates(factors: list[Factors]) -> torch.Tensor:
    """(N, d_out, d_in) float64 stack of the sites' updates D_i."""
    return torch.stack([(f.B.double() * f.E.double()) @ f.A.double() for f in factors])


def to_factors(D: torch.Tensor, rank: int | None, dtype: torch.dtype) -> Factors:
    """Exact SVD factors of a dense update (every triplet), or its best rank-`rank` approximation if asked."""
    return truncate(*torch.linalg.svd(D.double(), full_matrices=False), rank, dtype)


def trim(updates: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the top `density` fraction of each update's entries by magnitude (per update, per matrix)."""
    if density >= 1.0:
        return updates
    flat = updates.reshape(updates.shape[0], -1)
    k = max(1, int(round(density * flat.shape[1]))) if density > 0 else 0
    if k == 0:
        return torch.zeros_like(updates)
    threshold = flat.abs().kthvalue(flat.shape[1] - k + 1, dim=1, keepdim=True).values
    return (flat * (flat.abs() >= threshold)).reshape(updates.shape)


def ties_combine(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """TIES' elect + disjoint mean on already trimmed updates (N, ...): per entry, the sign with the larger
    total (weighted) mass wins, and only the entries that agree with it are averaged."""
    weighted = weights.view(-1, *[1] * (updates.dim() - 1)) * updates
    elected = torch.sign(weighted.sum(dim=0))
    agree = (torch.sign(weighted) == elected) & (updates != 0)
    mass = (weighted * agree).sum(dim=0)
    share = (weights.abs().view(-1, *[1] * (updates.dim() - 1)) * agree).sum(dim=0)
    return torch.where(share > 0, mass / share.clamp_min(1e-300), torch.zeros_like(mass))


def linear_combine(updates: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Task arithmetic's sum: N * sum_i w_i D_i, which is sum_i D_i for uniform weights."""
    return len(weights) * torch.einsum("n,n...->...", weights, updates)


def combine(updates: torch.Tensor, weights: torch.Tensor, inner: str, density: float) -> torch.Tensor:
    """The inner merge of DARE, KnOTS and core space: TIES (trim to `density`, elect, disjoint mean) or linear."""
    if inner == "ties":
        return ties_combine(trim(updates, density), weights)
    return linear_combine(updates, weights)
