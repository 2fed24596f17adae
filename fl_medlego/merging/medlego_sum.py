"""A variant of Med-LEGO for the mean-versus-sum question (not the paper's method).

Med-LEGO truncates the weighted *mean* of the updates, so each site's update is shrunk by 1/N; methods
that do not shrink it (task arithmetic, KnOTS, DARE) did better in this project's comparison. This
variant applies Med-LEGO's truncation to the *sum*, D = lam * truncate_v(sum_i N w_i D_i), with lam
tuned on validation like task arithmetic's. The energy rule is scale-free, so the kept directions are
Med-LEGO's own: only the scale differs, which is exactly the question the ablation asks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..lora.factors import Factors
from ._lowrank import energy_rank, svd_of_sum, truncate
from ._options import check_fraction, check_rank
from ._registry import register_merge


@dataclass
class MedLegoSumOptions:
    # Values tried on the sites' validation splits by `fl-medlego compare` (never on test).
    search_space: ClassVar[dict] = {"lam": [0.3, 0.5, 0.7, 1.0], "energy": [0.9, 1.0]}
    lam: float = 0.5
    energy: float = 0.9
    max_rank: int | None = 16

    def __post_init__(self) -> None:
        check_fraction("medlego_sum", "energy", self.energy, allow_zero=False)
        check_rank("medlego_sum", self.max_rank)


@register_merge("medlego_sum", MedLegoSumOptions)
def medlego_sum(factors: list[Factors], weights: torch.Tensor, options: MedLegoSumOptions) -> Factors:
    """Variant, not the paper's: Med-LEGO's truncation of the summed update, times a tuned lambda."""
    U, S, Vh = svd_of_sum(factors, weights * (options.lam * len(weights)))
    return truncate(U, S, Vh, energy_rank(S, options.energy, options.max_rank), factors[0].B.dtype)
