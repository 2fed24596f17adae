"""MagMax (Marczak et al., ECCV 2024, arXiv 2407.06322): per entry, the update of largest magnitude.

For every entry of the matrix, keep the value of whichever site's (weighted, N * w_i) D_i is largest
in absolute value; scale by lambda. Dense result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ..lora.factors import Factors
from ._dense import dense_updates, to_factors
from ._options import check_rank
from ._registry import register_merge


@dataclass
class MagMaxOptions:
    # Values tried on the sites' validation splits by `fl-medlego compare` (never on test).
    search_space: ClassVar[dict] = {"lam": [0.5, 1.0]}
    lam: float = 1.0
    rank: int | None = None

    def __post_init__(self) -> None:
        check_rank("magmax", self.rank)


@register_merge("magmax", MagMaxOptions, dense=True)
def magmax(factors: list[Factors], weights: torch.Tensor, options: MagMaxOptions) -> Factors:
    """Per entry, the site update with the largest magnitude (dense)."""
    updates = dense_updates(factors) * (len(weights) * weights).view(-1, 1, 1)
    winner = updates.abs().argmax(dim=0, keepdim=True)
    merged = options.lam * updates.gather(0, winner).squeeze(0)
    return to_factors(merged, options.rank, factors[0].B.dtype)
