"""DARE (Yu et al., ICML 2024, arXiv 2311.03099): drop and rescale, then task arithmetic or TIES.

Each entry of each D_i is dropped with probability `drop` and the survivors are rescaled by
1 / (1 - drop), so the update is unbiased; then the updates are combined linearly (lambda * sum) or
with TIES (trim to `density`, elect, disjoint mean, lambda). Random but seeded. Dense result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..lora.factors import Factors
from ._dense import combine, dense_updates, to_factors
from ._options import check_fraction, check_inner, check_rank
from ._registry import register_merge


@dataclass
class DareOptions:
    # Values tried on the sites' validation splits by `fl-medlego compare` (never on test).
    search_space: ClassVar[dict] = {"drop": [0.3, 0.7], "lam": [0.3, 0.7, 1.0]}
    drop: float = 0.5  # probability p of dropping an entry, in [0, 1)
    inner: str = "linear"  # "linear" (task arithmetic) or "ties"
    density: float = 1.0  # TIES trim after the drop (inner="ties" only)
    lam: float = 0.3
    seed: int = 0
    rank: int | None = None

    def __post_init__(self) -> None:
        check_fraction("dare", "drop", self.drop, allow_one=False)
        check_fraction("dare", "density", self.density)
        check_inner("dare", self.inner)
        check_rank("dare", self.rank)


@register_merge("dare", DareOptions, dense=True)
def dare(factors: list[Factors], weights: torch.Tensor, options: DareOptions) -> Factors:
    """Drop entries with probability p, rescale by 1/(1-p), then task arithmetic or TIES (dense)."""
    updates = dense_updates(factors)
    generator = torch.Generator().manual_seed(options.seed)
    keep = torch.rand(updates.shape, generator=generator, dtype=torch.float64) >= options.drop
    updates = updates * keep / (1.0 - options.drop)
    merged = combine(updates, weights, options.inner, options.density)
    return to_factors(options.lam * merged, options.rank, factors[0].B.dtype)
