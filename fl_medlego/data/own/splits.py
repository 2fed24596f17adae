"""Train / val / test splits of a hospital's own dataset, made once when it is registered.

A dataset that says its splits (split folders, a `split` column, a datalist's keys) keeps them, never
reshuffled. Otherwise the splits are drawn here: seeded, by patient (no patient in two splits, since images
of one patient look alike and would leak the test set into training), stratified by class so that each
split holds about its fraction of every class.

The draw is greedy: groups (a patient's images, or one image without a patient) are shuffled with the
seed; each goes to the split whose count of the group's majority class is furthest below its target
(fraction x that class's total), ties broken by the split furthest below its overall target, then by
split order. A class with fewer than 3 images puts its first group in train, so training sees every class.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ...errors import ConfigError

if TYPE_CHECKING:
    from .sources import Entry

SPLITS = ("train", "val", "test")
TINY_CLASS = 3  # a class with fewer images than this gets a train image first


def parse_fractions(text: str) -> tuple[float, float, float]:
    """'0.7,0.1,0.2' -> (0.7, 0.1, 0.2): train, val and test shares, each >= 0, summing to 1, train and test > 0."""
    parts = [p.strip() for p in str(text).split(",")]
    example = "e.g. '0.7,0.1,0.2' (train, val, test)"
    if len(parts) != 3:
        raise ConfigError(f"split fractions {text!r}: need 3 numbers, got {len(parts)}; give {example}")
    try:
        values = tuple(float(p) for p in parts)
    except ValueError:
        raise ConfigError(f"split fractions {text!r}: not all numbers; give {example}") from None
    if not all(math.isfinite(v) and v >= 0 for v in values):
        raise ConfigError(f"split fractions {text!r}: each must be a number >= 0; give {example}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ConfigError(f"split fractions {text!r} sum to {sum(values):g}, not 1; give {example}")
    if values[0] <= 0 or values[2] <= 0:
        raise ConfigError(f"split fractions {text!r}: train and test need a share above 0; give {example}")
    return values  # type: ignore[return-value]


def stratum(labels: Sequence[int]) -> int:
    """What a split is stratified by: the class of a single-label image; for a multi-label one (one 0/1 per
    finding) the index of its first positive finding, or -1 when it has none."""
    if len(labels) == 1:
        return int(labels[0])
    return next((i for i, v in enumerate(labels) if v), -1)


def assign_splits(entries: Sequence[Entry], fractions: tuple[float, float, float], seed: int) -> list[str]:
    """One split name per entry, in the entries' order (see the module docstring for how they are drawn)."""
    given = [e.split for e in entries]
    missing = sum(s is None for s in given)
    if missing == 0:
        return list(given)  # type: ignore[arg-type]
    if missing != len(given):
        raise ConfigError(f"{missing} of {len(given)} rows have no split: give every row a split "
                          "(train, val or test) or none, and the splits are drawn by patient")
    return _draw(entries, fractions, seed)


def _groups(entries: Sequence[Entry]) -> list[list[int]]:
    """Entry indices grouped by patient (an entry without one is a group of its own), in first-seen order."""
    by_key: dict[tuple[str, object], list[int]] = {}
    for i, entry in enumerate(entries):
        key = ("patient", entry.patient) if entry.patient is not None else ("image", i)
        by_key.setdefault(key, []).append(i)
    return list(by_key.values())


def _draw(entries: Sequence[Entry], fractions: tuple[float, float, float], seed: int) -> list[str]:
    strata = [stratum(e.labels) for e in entries]
    totals = Counter(strata)
    counts = {s: [0, 0, 0] for s in totals}  # stratum -> images per split
    overall = [0, 0, 0]
    open_splits = [k for k, f in enumerate(fractions) if f > 0]
    groups = _groups(entries)
    order = np.random.default_rng(seed).permutation(len(groups))
    result: list[str] = [""] * len(entries)
    for g in order:
        members = groups[int(g)]
        major = Counter(strata[i] for i in members).most_common(1)[0][0]
        if totals[major] < TINY_CLASS and counts[major][0] == 0:
            choice = 0
        else:
            def deficit(k: int, major: int = major) -> tuple[float, float, int]:
                own = fractions[k] * totals[major] - counts[major][k]
                whole = fractions[k] * len(entries) - overall[k]
                return round(own, 9), round(whole, 9), -k
            choice = max(open_splits, key=deficit)
        for i in members:
            result[i] = SPLITS[choice]
            counts[strata[i]][choice] += 1
            overall[choice] += 1
    return result
