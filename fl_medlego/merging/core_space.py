"""Core-space merging (Panariello et al., NeurIPS 2025): merge in the span of all sites' factors.

Orthonormal bases Q_B of span[B_1 E_1, ..., B_N E_N] and Q_A of span[A_1^T, ..., A_N^T] hold every
update exactly: D_i = Q_B M_i Q_A^T with the small R x R core M_i = (Q_B^T B_i E_i)(A_i Q_A).
Merge the cores (TIES or linear, lambda) and map back: D = Q_B M Q_A^T. With inner="linear" this is
exactly task arithmetic, at the cost of R x R matrices instead of d_out x d_in ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..lora.factors import Factors
from ._dense import combine
from ._options import InnerMergeOptions
from ._registry import register_merge


@dataclass
class CoreSpaceOptions(InnerMergeOptions):
    method: ClassVar[str] = "core_space"


@register_merge("core_space", CoreSpaceOptions)
def core_space(factors: list[Factors], weights: torch.Tensor, options: CoreSpaceOptions) -> Factors:
    """Project every update into the shared core space, merge the small cores there, map back."""
    Bs = [f.B.double() * f.E.double() for f in factors]
    Q_b, _ = torch.linalg.qr(torch.cat(Bs, dim=1))
    Q_a, _ = torch.linalg.qr(torch.cat([f.A.double() for f in factors], dim=0).T)
    cores = torch.stack([(Q_b.T @ B) @ (f.A.double() @ Q_a) for B, f in zip(Bs, factors)])
    merged = combine(cores, weights, options.inner, options.density)
    # Thin SVD: past a matrix's smaller side the core is not square (min(d_out, R) x min(d_in, R))
    P, S, Th = torch.linalg.svd(options.lam * merged, full_matrices=False)
    dtype = factors[0].B.dtype
    return Factors((Q_b @ P).to(dtype), S.to(dtype), (Th @ Q_a.T).to(dtype).contiguous())
