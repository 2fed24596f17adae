"""Med-LEGO merge (Zhu et al. 2025, arXiv 2503.01164), docs/method.md section 2.

D = sum_i w_i D_i; D = U S V^T; keep the top k triplets, k the smallest with
sum_{j<=k} sigma_j >= v * sum_j sigma_j (and k <= max_rank); the merged adapter is B' = U_k,
E' = sigma_1..k, A' = V_k^T. Computed through the small QR core, never forming D when R < min(d).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..lora.factors import Factors
from ._lowrank import dense_sum, energy_rank, is_dense_regime, stack_factors, svd_of_product, svd_of_sum, truncate
from ._options import check_fraction, check_rank
from ._registry import register_merge


@dataclass
class MedLegoOptions:
    # Values tried on the sites' validation splits by `fl-medlego compare` (never on test).
    search_space: ClassVar[dict] = {"energy": [0.8, 0.9, 0.95, 1.0]}
    # v in (0, 1]: fraction of the singular-value mass to keep. 0.9 is the paper's setting.
    energy: float = 0.9
    # Cap on k (None: what the energy asks for). Not in the paper: without it the merged rank grows with
    # the number of sites (up to N x r), and so does what the server sends back every round. 16 keeps
    # the default federation uncapped in round 1 (4 sites x rank 4) and bounds it afterwards.
    max_rank: int | None = 16

    def __post_init__(self) -> None:
        check_fraction("medlego", "energy", self.energy, allow_zero=False)
        check_rank("medlego", self.max_rank)


def _truncate(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, options: MedLegoOptions, dtype) -> Factors:
    return truncate(U, S, Vh, energy_rank(S, options.energy, options.max_rank), dtype)


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
