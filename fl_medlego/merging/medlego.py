"""Med-LEGO merge (Zhu et al. 2025, arXiv 2503.01164), method.md section 2.

D = sum_i w_i D_i; D = U S V^T; keep the top k triplets, k the smallest with
sum_{j<=k} sigma_j >= v * sum_j sigma_j (and k <= max_rank); the merged adapter is B' = U_k,
E' = sigma_1..k, A' = V_k^T. Computed through the small QR core, never forming D when R < min(d).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..lora.factors import Factors
from ._lowrank import dense_sum, energy_rank, is_dense_regime, stack_factors, svd_of_product, svd_of_sum
from ._registry import register_merge


@dataclass
class MedLegoOptions:
    # Values tried on the sites' validation splits by `fl-medlego compare` (never on test).
    search_space: ClassVar[dict] = {"energy": [0.8, 0.9, 0.95, 1.0]}
    energy: float = 0.9  # v in (0, 1]: fraction of the singular-value mass to keep
    max_rank: int | None = None  # optional cap on k; None keeps what the energy asks for

    def __post_init__(self) -> None:
        if not 0.0 < self.energy <= 1.0:
            raise ValueError(f"medlego energy must be in (0, 1], got {self.energy}")
        if self.max_rank is not None and self.max_rank < 1:
            raise ValueError(f"medlego max_rank must be >= 1 or None, got {self.max_rank}")


def _truncate(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, options: MedLegoOptions, dtype) -> Factors:
    k = energy_rank(S, options.energy, options.max_rank)
    return Factors(U[:, :k].to(dtype).contiguous(), S[:k].to(dtype).contiguous(), Vh[:k].to(dtype).contiguous())


def medlego_batched(matrices: list[list[Factors]], weights: torch.Tensor, options: MedLegoOptions) -> list[Factors]:
    """The same merge for many matrices of one shape and rank pattern at once (batched QR and SVD)."""
    d_out, d_in = matrices[0][0].shape
    if is_dense_regime(d_out, d_in, sum(f.rank for f in matrices[0])):
        # Form each d_out x d_in sum chunk by chunk (never the N per-site updates), SVD them together.
        dense = torch.stack([dense_sum(factors, weights) for factors in matrices])
        U, S, Vh = torch.linalg.svd(dense, full_matrices=False)
    else:
        stacked = [stack_factors(factors, weights) for factors in matrices]
        U, S, Vh = svd_of_product(torch.stack([u for u, _ in stacked]), torch.stack([v for _, v in stacked]))
    dtype = matrices[0][0].B.dtype
    return [_truncate(U[i], S[i], Vh[i], options, dtype) for i in range(len(matrices))]


@register_merge("medlego", MedLegoOptions, batched=medlego_batched)
def medlego(factors: list[Factors], weights: torch.Tensor, options: MedLegoOptions) -> Factors:
    """Exact SVD of the weighted mean update, truncated by the energy threshold v."""
    return _truncate(*svd_of_sum(factors, weights), options, factors[0].B.dtype)
