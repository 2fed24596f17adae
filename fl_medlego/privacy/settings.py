"""The run config's `privacy.*` group as one validated object (no Opacus import: the coordinator reads it too)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..settings import check_group, setting

MODES = ("none", "dp-sgd")
ACCOUNTANTS = ("rdp", "prv")  # Opacus's Renyi-DP and privacy-random-variable accountants
MAX_DELTA = 1e-5


@dataclass(frozen=True)
class PrivacySettings:
    """Differentially private training at each site (DP-SGD with Opacus).

    epsilon and delta are the whole run's budget per site: the noise is calibrated so that every
    planned round x local epoch x step together spend at most epsilon. delta 0 means 1/(10 N) for a
    site with N training images, at most 1e-5.
    """

    PREFIX: ClassVar[str] = "privacy."

    mode: str = setting(MODES[0], "'dp-sgd': every site trains with DP-SGD (Opacus) under a per-site budget; "
                        "see \"Privacy\"", choices=MODES)
    epsilon: float = setting(8.0, "the whole run's budget per site (all rounds x local epochs)", above=0)
    delta: float = setting(0.0, f"0 = 1/(10 N) for a site with N training images, at most {MAX_DELTA:g}",
                           low=0, below=1)
    max_grad_norm: float = setting(1.0, "per-example gradient clipping bound C of DP-SGD", above=0)
    accountant: str = setting(ACCOUNTANTS[0], "Opacus's accountant: Renyi-DP or privacy random variables",
                              choices=ACCOUNTANTS)

    def __post_init__(self) -> None:
        check_group(self)

    @property
    def private(self) -> bool:
        return self.mode != "none"

    def delta_for(self, num_train: int) -> float:
        """The delta of a site with `num_train` training images."""
        if self.delta > 0:
            return self.delta
        return min(1.0 / (10 * max(num_train, 1)), MAX_DELTA)
