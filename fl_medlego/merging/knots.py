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
from ._dense import combine
from ._options import InnerMergeOptions
from ._registry import register_merge


@dataclass
class KnotsOptions(InnerMergeOptions):
    method: ClassVar[str] = "knots"


@register_merge("knots", KnotsOptions)
def knots(factors: list[Factors], weights: torch.Tensor, options: KnotsOptions) -> Factors:
    """SVD-align the updates, merge their coordinates in the shared basis (TIES or linear)."""
    d_in = factors[0].A.shape[1]
    Q, R_u = torch.linalg.qr(torch.cat([f.B.double() * f.E.double() for f in factors], dim=1))
    blocks = torch.block_diag(*[f.A.double() for f in factors])  # R x (N d_in)
    P, S, Vt = torch.linalg.svd(R_u @ blocks, full_matrices=False)
    coords = Vt.reshape(Vt.shape[0], len(factors), d_in).permute(1, 0, 2)  # (N, k, d_in): D_i = U S coords_i
    merged = combine(coords, weights, options.inner, options.density)
    dtype = factors[0].B.dtype
    return Factors((Q @ P).to(dtype), (options.lam * S).to(dtype), merged.to(dtype).contiguous())
