"""Task arithmetic (Ilharco et al., ICLR 2023, arXiv 2212.04089): D = lambda * sum_i D_i.

With weights w_i the sum is N * sum_i w_i D_i (the plain sum for uniform weights; a weight of -1/N
negates a task). Exact and low-rank (rank <= sum r_i), computed through the QR core.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..lora.factors import Factors
from ._lowrank import svd_of_sum, truncate
from ._options import check_rank
from ._registry import register_merge


@dataclass
class TaskArithmeticOptions:
    # Values tried on the sites' validation splits by `fl-medlego compare` (never on test).
    search_space: ClassVar[dict] = {"lam": [0.1, 0.3, 0.5, 0.7, 1.0]}
    lam: float = 0.3  # scaling lambda; tuned on validation data by `fl-medlego compare`
    rank: int | None = None

    def __post_init__(self) -> None:
        check_rank("task_arithmetic", self.rank)


@register_merge("task_arithmetic", TaskArithmeticOptions)
def task_arithmetic(factors: list[Factors], weights: torch.Tensor, options: TaskArithmeticOptions) -> Factors:
    """lambda times the sum of the task updates (exact, low-rank)."""
    scaled = weights * (options.lam * len(weights))
    return truncate(*svd_of_sum(factors, scaled), options.rank, factors[0].B.dtype)
