"""The run config's `privacy.*` group as one validated object (no Opacus import: the coordinator reads it too)."""

from __future__ import annotations

from dataclasses import dataclass

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

    mode: str = MODES[0]
    epsilon: float = 8.0
    delta: float = 0.0
    max_grad_norm: float = 1.0  # per-example clipping bound C of DP-SGD
    accountant: str = ACCOUNTANTS[0]

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"privacy.mode must be one of {MODES}, got {self.mode!r}")
        if self.accountant not in ACCOUNTANTS:
            raise ValueError(f"privacy.accountant must be one of {ACCOUNTANTS}, got {self.accountant!r}")
        if not self.epsilon > 0 or not self.max_grad_norm > 0:
            raise ValueError(f"privacy.epsilon and privacy.max-grad-norm must be positive, got "
                             f"{self.epsilon} and {self.max_grad_norm}")
        if not 0 <= self.delta < 1:
            raise ValueError(f"privacy.delta must be in [0, 1) (0: 1/(10 N), at most {MAX_DELTA}), got {self.delta}")

    @property
    def private(self) -> bool:
        return self.mode != "none"

    def delta_for(self, num_train: int) -> float:
        """The delta of a site with `num_train` training images."""
        if self.delta > 0:
            return self.delta
        return min(1.0 / (10 * max(num_train, 1)), MAX_DELTA)
