"""LoRA averaging ("pre-merge", FedIT: Zhang et al. 2024): average each factor separately.

B' = sum_i w_i B_i, E' = sum_i w_i E_i, A' = sum_i w_i A_i. Approximate (the mean of products is
not the product of means) and keeps rank r, so every site must have the same rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lora.factors import Factors
from ._options import require_equal_ranks
from ._registry import register_merge


@dataclass
class LoraAvgOptions:
    pass


@register_merge("lora_avg", LoraAvgOptions)
def lora_avg(factors: list[Factors], weights: torch.Tensor, options: LoraAvgOptions) -> Factors:
    """Average B, E and A separately (FedIT); needs equal ranks."""
    require_equal_ranks("lora_avg", [f.rank for f in factors])
    dtype = factors[0].B.dtype

    def mean(tensors: list[torch.Tensor]) -> torch.Tensor:
        return sum(w * t.double() for w, t in zip(weights.double(), tensors)).to(dtype)

    return Factors(mean([f.B for f in factors]), mean([f.E for f in factors]), mean([f.A for f in factors]))
