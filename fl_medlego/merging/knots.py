"""KnOTS (Stoica et al., ICLR 2025, arXiv 2410.19735): merge LoRA updates after aligning them by SVD.

Concatenate the updates side by side, [D_1, ..., D_N] = U S [V_1; ...; V_N]^T, so that every
D_i = U S V_i^T shares the basis U S. Merge the per-task coordinates V_i (TIES or linear), then
D = lambda * U S V_merged^T. Computed from the factors: a QR of the stacked B_i E_i and the SVD of
an R x (N d_in) matrix, never the d_out x d_in updates. Low-rank result (rank <= sum r_i).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..lora.factors import Factors
from ._dense import linear_combine, ties_combine, trim
from ._options import check_fraction, check_inner
from ._registry import register_merge


@dataclass
class KnotsOptions:
    # Values tried on the sites' validation splits by `fl-medlego compare` (never on test).
    search_space: ClassVar[dict] = {"density": [0.5, 1.0], "lam": [0.5, 1.0]}
    inner: str = "ties"  # how the aligned coordinates V_i are merged: "ties" or "linear"
    density: float = 1.0  # TIES trim of each V_i (inner="ties")
    lam: float = 1.0

    def __post_init__(self) -> None:
        check_inner("knots", self.inner)
        check_fraction("knots", "density", self.density)


@register_merge("knots", KnotsOptions)
def knots(factors: list[Factors], weights: torch.Tensor, options: KnotsOptions) -> Factors:
    """SVD-align the updates, merge their coordinates in the shared basis (TIES or linear)."""
    d_in = factors[0].A.shape[1]
    Q, R_u = torch.linalg.qr(torch.cat([f.B.double() * f.E.double() for f in factors], dim=1))
    blocks = torch.block_diag(*[f.A.double() for f in factors])  # R x (N d_in)
    P, S, Vt = torch.linalg.svd(R_u @ blocks, full_matrices=False)
    coords = Vt.reshape(Vt.shape[0], len(factors), d_in).permute(1, 0, 2)  # (N, k, d_in): D_i = U S coords_i
    if options.inner == "ties":
        merged = ties_combine(trim(coords, options.density), weights)
    else:
        merged = linear_combine(coords, weights)
    dtype = factors[0].B.dtype
    return Factors((Q @ P).to(dtype), (options.lam * S).to(dtype), merged.to(dtype).contiguous())
