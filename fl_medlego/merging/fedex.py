"""FedEx-LoRA (Singhal et al., ACL 2025, arXiv 2410.09432): FedIT averaging plus the exact residual.

Averaging B and A separately (`lora_avg`) misses sum_i w_i B_i A_i - mean(B) mean(A); FedEx-LoRA
adds that residual to the frozen weights so the aggregate is exact. Here the merged adapter carries
both: its first r triplets are the averaged factors, the remaining ones the residual (kept exactly
through the QR core). Our sites currently continue training every triplet, residual included,
where FedEx-LoRA freezes the residual into the base weights. Equal ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lora.factors import Factors
from ._lowrank import svd_of_sum
from ._options import require_equal_ranks
from ._registry import register_merge
from .lora_avg import LoraAvgOptions, lora_avg


@dataclass
class FedExOptions:
    pass


@register_merge("fedex", FedExOptions)
def fedex(factors: list[Factors], weights: torch.Tensor, options: FedExOptions) -> Factors:
    """lora_avg factors plus the exact residual sum_i w_i D_i - B_avg E_avg A_avg."""
    require_equal_ranks("fedex", [f.rank for f in factors])  # its own name in the refusal, not lora_avg's
    avg = lora_avg(factors, weights, LoraAvgOptions())
    residual_terms = factors + [avg]
    residual_weights = torch.cat([weights, torch.tensor([-1.0], dtype=torch.float64)])
    U, S, Vh = svd_of_sum(residual_terms, residual_weights)
    dtype = avg.B.dtype
    return Factors(torch.cat([avg.B, U.to(dtype)], dim=1), torch.cat([avg.E, S.to(dtype)]),
                   torch.cat([avg.A, Vh.to(dtype)], dim=0))
