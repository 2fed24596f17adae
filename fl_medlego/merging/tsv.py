"""TSV-Merge (Gargiulo et al., CVPR 2025, arXiv 2412.00081): task singular vectors, decorrelated.

Keep the top `keep` fraction of each task's singular triplets (default 1/N), concatenate
U = [U_1, ..., U_N], S and V = [V_1, ..., V_N], replace U and V by their nearest orthonormal
matrices (Procrustes: P Q^T from the SVD), and return lambda * U_perp S V_perp^T. Low-rank result.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..lora.factors import Factors
from ._lowrank import nearest_orthonormal, svd_of_sum
from ._options import check_fraction
from ._registry import register_merge


@dataclass
class TsvOptions:
    # Values tried on the sites' validation splits by `fl-medlego compare` (never on test).
    search_space: ClassVar[dict] = {"lam": [0.5, 1.0]}
    keep: float | None = None  # fraction of each task's triplets kept; None = 1/N as in the paper
    lam: float = 1.0

    def __post_init__(self) -> None:
        if self.keep is not None:
            check_fraction("tsv", "keep", self.keep, allow_zero=False)


@register_merge("tsv", TsvOptions)
def tsv(factors: list[Factors], weights: torch.Tensor, options: TsvOptions) -> Factors:
    """Concatenate each task's top singular vectors, orthogonalise them (Procrustes), recombine."""
    keep = options.keep if options.keep is not None else 1.0 / len(factors)
    Us, Ss, Vhs = [], [], []
    one = torch.ones(1, dtype=torch.float64)
    for f, w in zip(factors, weights):
        U, S, Vh = svd_of_sum([f], one)
        k = max(1, math.ceil(keep * f.rank - 1e-9))
        Us.append(U[:, :k])
        Ss.append(S[:k] * (len(weights) * w))
        Vhs.append(Vh[:k])
    U_perp = nearest_orthonormal(torch.cat(Us, dim=1))
    V_perp = nearest_orthonormal(torch.cat(Vhs, dim=0).T)
    dtype = factors[0].B.dtype
    return Factors(U_perp.to(dtype), (options.lam * torch.cat(Ss)).to(dtype), V_perp.T.to(dtype).contiguous())
