"""Iso-C and Iso-CTS (Marczak et al., "No Task Left Behind: Isotropic Model Merging with Common and
Task-Specific Subspaces", ICML 2025, arXiv 2502.04959).

Iso-C: take the task-arithmetic sum M = sum_i D_i, keep its singular vectors and replace every
singular value by their mean, so that no direction of the sum dominates: D = lam * mean(S) U V^T.
Iso-CTS: keep only the top `common` share of M's directions, give the rest of the budget to each
task's own top directions outside that common subspace (equal numbers per task), orthonormalise the
left and right vectors (Procrustes) and flatten the spectrum the same way.

Adapted to low-rank updates: the paper's matrices are full-rank, so its spectrum is all min(d_out, d_in)
values. A sum of N rank-r updates has rank R = sum r_i at most; flattening into its null space would
add directions no site trained (and singular vectors that are arbitrary there), so the spectrum and
the budget here are the sum's support: its non-zero singular values, at most R. The result is low-rank
(rank <= R) and computed through the QR core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..lora.factors import Factors
from ._lowrank import nearest_orthonormal, svd_of_sum
from ._options import check_fraction
from ._registry import register_merge

_SUPPORT_TOL = 1e-10  # singular values below this share of the largest are the sum's null space


def _support(S: torch.Tensor) -> int:
    return max(1, int((S > _SUPPORT_TOL * S[0].clamp_min(1e-300)).sum()))


@dataclass
class IsoCOptions:
    # Values tried on the sites' validation splits by `fl-medlego compare` (never on test).
    search_space: ClassVar[dict] = {"lam": [0.5, 1.0, 1.5, 2.0]}
    lam: float = 1.0  # the paper's scaling factor alpha, tuned on validation


@register_merge("iso_c", IsoCOptions)
def iso_c(factors: list[Factors], weights: torch.Tensor, options: IsoCOptions) -> Factors:
    """The task-arithmetic sum with a flat spectrum: its singular vectors, every singular value their mean."""
    U, S, Vh = svd_of_sum(factors, weights * len(weights))
    k = _support(S)
    flat = torch.full((k,), float(S[:k].mean()) * options.lam, dtype=torch.float64)
    dtype = factors[0].B.dtype
    return Factors(U[:, :k].to(dtype).contiguous(), flat.to(dtype), Vh[:k].to(dtype).contiguous())


@dataclass
class IsoCTSOptions:
    search_space: ClassVar[dict] = {"lam": [0.5, 1.0, 1.5, 2.0]}
    common: float = 0.8  # share of the budget kept for the sum's own top directions (the paper's 0.8)
    lam: float = 1.0

    def __post_init__(self) -> None:
        check_fraction("iso_cts", "common", self.common)


def _budget(support: int, tasks: int, common: float) -> tuple[int, int]:
    """(common directions, directions per task), the task part divisible by the number of tasks."""
    per_task = round((support - int(support * common)) / tasks)
    return max(support - per_task * tasks, 1), per_task


@register_merge("iso_cts", IsoCTSOptions)
def iso_cts(factors: list[Factors], weights: torch.Tensor, options: IsoCTSOptions) -> Factors:
    """Iso-C's common subspace, with each task's own top directions outside it in place of the weakest."""
    scaled = weights * len(weights)
    U, S, Vh = svd_of_sum(factors, scaled)
    support = _support(S)
    k, per_task = _budget(support, len(factors), options.common)
    U_common = U[:, :k]
    lefts, rights, values = [U_common], [Vh[:k]], [S[:k]]
    if per_task > 0:
        for f, w in zip(factors, scaled):
            B = f.B.double() * (f.E.double() * w)
            outside = Factors(B - U_common @ (U_common.T @ B), torch.ones(f.rank, dtype=torch.float64), f.A.double())
            U_t, S_t, Vh_t = svd_of_sum([outside], torch.ones(1, dtype=torch.float64))
            # A task (almost) inside the common subspace has nothing left: its vectors there are arbitrary.
            keep = min(per_task, int((S_t > _SUPPORT_TOL * S[0]).sum()))
            lefts.append(U_t[:, :keep])
            rights.append(Vh_t[:keep])
            values.append(S_t[:keep])
    left = nearest_orthonormal(torch.cat(lefts, dim=1))
    right = nearest_orthonormal(torch.cat(rights, dim=0).T).T
    spectrum = torch.cat(values)
    flat = torch.full((spectrum.numel(),), float(spectrum.mean()) * options.lam, dtype=torch.float64)
    dtype = factors[0].B.dtype
    return Factors(left.to(dtype).contiguous(), flat.to(dtype), right.to(dtype).contiguous())
