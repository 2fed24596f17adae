"""The shared low-rank core: the SVD of a weighted sum of low-rank updates without the dense matrix.

Stack U = [w_1 B_1 diag(E_1), ..., w_N B_N diag(E_N)] (d_out x R) and V = [A_1; ...; A_N] (R x d_in),
so that sum_i w_i D_i = U V. With thin QRs U = Q_u R_u and V^T = Q_v R_v, the SVD of the small core
R_u R_v^T = P S T^T gives U V = (Q_u P) S (Q_v T)^T exactly, in O((d_out + d_in) R^2 + R^3) time
and O((d_out + d_in) R) memory (docs/method.md section 2). Everything runs in float64.

When R >= min(d_out, d_in) the stacked factors are larger than the matrix itself: there the sum is
accumulated from chunks of sites (memory of the matrix plus one chunk) and decomposed densely.
"""

from __future__ import annotations

import torch

from ..lora.factors import Factors


def stack_factors(factors: list[Factors], weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """U (d_out x R) and V (R x d_in), float64, with sum_i w_i D_i = U V."""
    # One concatenation, then one conversion and one column scaling: per-site work stays O(1) calls,
    # which matters with a thousand sites.
    ranks = torch.tensor([f.rank for f in factors])
    column_scale = torch.cat([f.E for f in factors]).double() * weights.double().repeat_interleave(ranks)
    U = torch.cat([f.B for f in factors], dim=1).double() * column_scale
    V = torch.cat([f.A for f in factors], dim=0).double()
    return U, V


def is_dense_regime(d_out: int, d_in: int, stacked_rank: int) -> bool:
    """The stacked rank is no smaller than the matrix: forming it and a dense SVD cost no more."""
    return stacked_rank >= min(d_out, d_in)


def dense_sum(factors: list[Factors], weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i D_i as a float64 d_out x d_in matrix, stacking a chunk of sites at a time.

    A chunk's stacked rank stays near min(d_out, d_in) / 4, so its factors take at most half the
    memory of the result: the peak is about the matrix, whatever the number of sites.
    """
    d_out, d_in = factors[0].shape
    chunk_rank = max(min(d_out, d_in) // 4, 1)
    total = torch.zeros(d_out, d_in, dtype=torch.float64)
    start = 0
    while start < len(factors):
        stop, rank = start, 0
        while stop < len(factors) and (stop == start or rank + factors[stop].rank <= chunk_rank):
            rank += factors[stop].rank
            stop += 1
        U, V = stack_factors(factors[start:stop], weights[start:stop])
        total.addmm_(U, V)
        start = stop
    return total


def svd_of_sum(factors: list[Factors], weights: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD (U, S, Vh) of sum_i w_i D_i, float64, with at most min(R, d_out, d_in) triplets."""
    d_out, d_in = factors[0].shape
    if is_dense_regime(d_out, d_in, sum(f.rank for f in factors)):
        return torch.linalg.svd(dense_sum(factors, weights), full_matrices=False)
    return svd_of_product(*stack_factors(factors, weights))


def svd_of_product(U: torch.Tensor, V: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of U V for U (..., d_out, R) and V (..., R, d_in) through the QR core; leading dimensions
    batch matrices. Exact for any R, but only cheaper than a dense SVD below the dense regime, which the
    callers route to `dense_sum` instead."""
    Q_u, R_u = torch.linalg.qr(U)
    Q_v, R_v = torch.linalg.qr(V.mT)
    P, S, Th = torch.linalg.svd(R_u @ R_v.mT, full_matrices=False)  # R_u @ R_v.mT is not square past a side
    return Q_u @ P, S, Th @ Q_v.mT


def energy_rank(singular_values: torch.Tensor, energy: float, max_rank: int | None = None) -> int:
    """Smallest k with sum_{j<=k} sigma_j >= energy * sum_j sigma_j, capped by max_rank, at least 1."""
    total = singular_values.sum()
    cumulative = torch.cumsum(singular_values, dim=0)
    # Relative slack of a few ulps so that energy = 1.0 does not demand the last rounding error.
    k = int((cumulative < energy * total * (1 - 1e-12)).sum().item()) + 1
    k = min(k, singular_values.numel())
    if max_rank is not None:
        k = min(k, max_rank)
    return max(k, 1)


def truncate(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, k: int | None, dtype: torch.dtype) -> Factors:
    """The top-k singular triplets (all of them for k=None) as factors of the given dtype."""
    k = S.numel() if k is None else min(k, S.numel())
    return Factors(U[:, :k].to(dtype).contiguous(), S[:k].to(dtype).contiguous(), Vh[:k].to(dtype).contiguous())


def nearest_orthonormal(M: torch.Tensor) -> torch.Tensor:
    """The matrix with orthonormal columns closest to M in Frobenius norm (orthogonal Procrustes: P Q^T)."""
    P, _, Qh = torch.linalg.svd(M, full_matrices=False)
    return P @ Qh


def frobenius_norm(f: Factors) -> float:
    """||B diag(E) A||_F from the r x r Gram matrices of B and A, never forming the d_out x d_in update."""
    B, E, A = f.B.double(), f.E.double(), f.A.double()
    squared = (E[:, None] * E[None, :] * (B.T @ B) * (A @ A.T)).sum()
    return float(squared.clamp_min(0).sqrt())
