"""PEM composition (Zhang et al., NeurIPS 2023, arXiv 2306.14870): arithmetic on the LoRA factors.

PEM adds parameter-efficient modules parameter by parameter: for LoRA, the B factors and the A
factors are combined separately, B' = sum_i w_i B_i, A' = sum_i |w_i| A_i. Here each site's singular
values are first folded into its B (the plain-LoRA form PEM works on), so unlike `lora_avg` the E
vectors are not averaged on their own; the product is scaled by lambda. Approximate; equal ranks.
A negative weight negates B alone, as PEM's negation operator does for LoRA: negating both factors
would leave their product, the update, unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..lora.factors import Factors
from ._options import require_equal_ranks
from ._registry import register_merge


@dataclass
class PemOptions:
    # Values tried on the sites' validation splits by `fl-medlego compare` (never on test).
    search_space: ClassVar[dict] = {"lam": [0.5, 1.0, 2.0]}
    lam: float = 1.0  # scale of the composed update; tuned on validation data by `fl-medlego compare`


@register_merge("pem", PemOptions)
def pem(factors: list[Factors], weights: torch.Tensor, options: PemOptions) -> Factors:
    """Weighted sums of the plain-LoRA factors B_i E_i and A_i, scaled by lambda."""
    rank = require_equal_ranks("pem", [f.rank for f in factors])
    dtype = factors[0].B.dtype
    B = sum(w * f.B.double() * f.E.double() for w, f in zip(weights, factors))
    A = sum(w.abs() * f.A.double() for w, f in zip(weights, factors))  # the sign lives in B
    return Factors(B.to(dtype), torch.full((rank,), options.lam, dtype=dtype), A.to(dtype))
