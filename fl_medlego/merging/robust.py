"""Robust combinations for federations with untrusted sites: the entry-wise median and trimmed mean.

Coordinate-wise median / trimmed mean (Yin et al., "Byzantine-Robust Distributed Learning: Towards
Optimal Statistical Rates", ICML 2018, arXiv 1803.01498), taken on the *dense* updates D_i: the
low-rank factors B_i, A_i are defined only up to an invertible R (B R, R^-1 A is the same update), so
a median of raw factors would depend on each site's arbitrary basis. Weights count by their sign
only (a weight of -1 negates a site's update): a weighted median would let one site's claimed
example count buy the merge. The result is dense: its exact SVD factors unless `rank` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..lora.factors import Factors
from ._dense import dense_updates, to_factors
from ._options import check_fraction, check_rank
from ._registry import register_merge


def _weighted_stack(factors: list[Factors], weights: torch.Tensor) -> torch.Tensor:
    return dense_updates(factors) * torch.sign(weights.double())[:, None, None]


@dataclass
class MedianOptions:
    rank: int | None = None  # truncate the dense result to this rank; None keeps it exact

    def __post_init__(self) -> None:
        check_rank("median", self.rank)


@register_merge("median", MedianOptions, dense=True)
def median(factors: list[Factors], weights: torch.Tensor, options: MedianOptions) -> Factors:
    """Entry-wise median of the dense updates: one site, however large its update, cannot move it far."""
    stacked = _weighted_stack(factors, weights)
    # The mean of the two middle values for an even count (torch.median would take the lower one).
    merged = torch.quantile(stacked, 0.5, dim=0) if len(factors) > 1 else stacked[0]
    return to_factors(merged, options.rank, factors[0].B.dtype)


@dataclass
class TrimmedMeanOptions:
    search_space: ClassVar[dict] = {"trim": [0.1, 0.2]}
    trim: float = 0.2  # fraction of the sites dropped at each end, per entry (at least one each end when > 0)
    rank: int | None = None

    def __post_init__(self) -> None:
        check_fraction("trimmed_mean", "trim", self.trim, allow_one=False)
        if self.trim >= 0.5:
            raise ValueError(f"trimmed_mean trim must be below 0.5 (it drops that fraction at each end), "
                             f"got {self.trim}")
        check_rank("trimmed_mean", self.rank)


@register_merge("trimmed_mean", TrimmedMeanOptions, dense=True)
def trimmed_mean(factors: list[Factors], weights: torch.Tensor, options: TrimmedMeanOptions) -> Factors:
    """Entry-wise mean of the dense updates without the largest and smallest `trim` fraction of sites."""
    stacked = _weighted_stack(factors, weights)
    n = len(factors)
    cut = min(max(int(options.trim * n), 1 if options.trim > 0 else 0), (n - 1) // 2)
    ordered = torch.sort(stacked, dim=0).values
    merged = ordered[cut:n - cut].mean(dim=0)
    return to_factors(merged, options.rank, factors[0].B.dtype)
