"""Option checks shared by the methods' options dataclasses (one convention: fractions in [0, 1])."""

from __future__ import annotations


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
