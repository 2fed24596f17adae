"""Post-merge averaging: the weighted mean of the products, D = sum_i w_i B_i diag(E_i) A_i.

Exact. The mean has rank at most R = sum r_i, so it is kept exactly as R triplets (computed through
the QR core, never dense), or truncated to `rank` when asked.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lora.factors import Factors
from ._lowrank import svd_of_sum, truncate
from ._options import check_rank
from ._registry import register_merge


@dataclass
class PostAvgOptions:
    rank: int | None = None  # truncate the exact mean to this rank; None keeps all R triplets

    def __post_init__(self) -> None:
        check_rank("post_avg", self.rank)


@register_merge("post_avg", PostAvgOptions)
def post_avg(factors: list[Factors], weights: torch.Tensor, options: PostAvgOptions) -> Factors:
    """Weighted mean of the products B_i E_i A_i (exact, rank <= sum r_i)."""
    return truncate(*svd_of_sum(factors, weights), options.rank, factors[0].B.dtype)
