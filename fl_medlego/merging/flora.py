"""FLoRA (Wang et al., NeurIPS 2024, arXiv 2409.05976): aggregate by stacking the factors.

B' = [B_1, ..., B_N], E' = [w_1 E_1, ..., w_N E_N], A' = [A_1; ...; A_N], so B' E' A' is exactly
sum_i w_i D_i, with rank sum r_i (no SVD, no truncation). The rank grows with every site.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..lora.factors import Factors
from ._registry import register_merge


@dataclass
class FloraOptions:
    pass


@register_merge("flora", FloraOptions)
def flora(factors: list[Factors], weights: torch.Tensor, options: FloraOptions) -> Factors:
    """Stack the sites' factors: exact weighted sum, rank = sum of the ranks."""
    dtype = factors[0].B.dtype
    return Factors(torch.cat([f.B for f in factors], dim=1),
                   torch.cat([(w * f.E.double()).to(dtype) for w, f in zip(weights, factors)]),
                   torch.cat([f.A for f in factors], dim=0))
