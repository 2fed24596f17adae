"""Option checks shared by the methods' options dataclasses (one convention: fractions in [0, 1])."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


def check_fraction(method: str, name: str, value: float, allow_zero: bool = True, allow_one: bool = True) -> None:
    low_ok = value >= 0 if allow_zero else value > 0
    high_ok = value <= 1 if allow_one else value < 1
    if not (low_ok and high_ok):
        bounds = f"{'[' if allow_zero else '('}0, 1{']' if allow_one else ')'}"
        raise ValueError(f"{method} {name} must be a fraction in {bounds}, got {value}")


def check_rank(method: str, rank: int | None) -> None:
    if rank is not None and rank < 1:
        raise ValueError(f"{method} rank must be >= 1 or None (keep every component), got {rank}")


def check_inner(method: str, inner: str) -> None:
    if inner not in ("linear", "ties"):
        raise ValueError(f"{method} inner merge must be 'linear' or 'ties', got {inner!r}")


def require_equal_ranks(method: str, ranks: list[int]) -> int:
    """Methods that combine the factors themselves need every site at the same rank."""
    distinct = sorted(set(ranks))
    if len(distinct) > 1:
        raise ValueError(f"{method} needs every site at the same rank, got ranks {distinct}; "
                         "use medlego for mixed ranks")
    return distinct[0]


@dataclass
class InnerMergeOptions:
    """Options of methods that move the updates to a shared space, then merge them there (KnOTS, core space)."""

    inner: str = "ties"  # "ties" or "linear" (= task arithmetic in that space)
    density: float = 1.0  # TIES trim (inner="ties")
    lam: float = 1.0
    # Values tried on the sites' validation splits by `fl-medlego compare` (never on test).
    search_space: ClassVar[dict] = {"density": [0.5, 1.0], "lam": [0.5, 1.0]}
    method: ClassVar[str] = "inner merge"  # set by each subclass, for error messages

    def __post_init__(self) -> None:
        check_inner(self.method, self.inner)
        check_fraction(self.method, "density", self.density)
