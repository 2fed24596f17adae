"""TIES-merging (Yadav et al., NeurIPS 2023, arXiv 2306.01708).

Per adapted matrix: keep the top `density` fraction of each D_i by magnitude (trim), elect a sign
per entry by the summed mass, average only the entries that agree with it (disjoint mean), scale by
lambda. Density is a per-matrix fraction in [0, 1] (PEFT's convention; FusionBench's global top-k
in percent differs). The result is dense: returned as its exact SVD factors unless `rank` is set.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..lora.factors import Factors
from ._dense import dense_updates, ties_combine, to_factors, trim
from ._options import check_fraction, check_rank
from ._registry import register_merge


@dataclass
class TiesOptions:
    # Values tried on the sites' validation splits by `fl-medlego compare` (never on test).
    search_space: ClassVar[dict] = {"density": [0.2, 0.5, 1.0], "lam": [0.5, 1.0]}
    density: float = 0.2  # fraction of each update's entries kept
    lam: float = 1.0
    rank: int | None = None  # truncate the dense result to this rank; None keeps it exact

    def __post_init__(self) -> None:
        check_fraction("ties", "density", self.density)
        check_rank("ties", self.rank)


@register_merge("ties", TiesOptions, dense=True)
def ties(factors: list[Factors], weights: torch.Tensor, options: TiesOptions) -> Factors:
    """Trim, elect sign, disjoint mean of the dense updates; scaled by lambda (dense)."""
    merged = options.lam * ties_combine(trim(dense_updates(factors), options.density), weights)
    return to_factors(merged, options.rank, factors[0].B.dtype)
