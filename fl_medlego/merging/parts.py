"""Merging an adapter part by part: the matrices under a name prefix (a tower of a cross-modal pair, say)
merged with a method of their own, or weighted after the merge.

A mean over N sites shrinks every site's update N-fold. Where two parts meet in one score (the image
and the text side of a cosine), one part may want another weight or another method than the rest:

    parts = PartMerge(methods={"text": ("task_arithmetic", TaskArithmeticOptions())}, weights={"projection": 4.0})
    merged = merge_by_parts(adapters, "medlego", None, MedLegoOptions(), parts)

A prefix covers whole name components ("text" covers "text.encoder.layer.0.attention.self.query", not
"textual.x"); where several cover a matrix, the longest wins. Methods and weights are matched apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from ..lora.factors import Adapter, Factors
from . import get_merge, merge_adapters, resolve_weights


@dataclass(frozen=True)
class PartMerge:
    """methods: prefix -> (method, its options object); weights: prefix -> factor on the merged update."""

    methods: dict[str, tuple[str, object]] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.methods or self.weights)

    def describe(self) -> dict:
        """JSON-friendly: what the adapter's metadata and a run's logs record."""
        return {"methods": {p: {"method": m, "options": dataclasses.asdict(o) if o is not None else {}}
                            for p, (m, o) in self.methods.items()},
                "weights": dict(self.weights)}


def covers(prefix: str, name: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def part_of(name: str, prefixes: Iterable[str]) -> str | None:
    """The longest prefix that covers `name` (None: no prefix does)."""
    return max((p for p in prefixes if covers(p, name)), key=len, default=None)


def check_prefixes(prefixes: Iterable[str], names: Iterable[str]) -> None:
    """Every prefix must cover at least one matrix: a misspelt tower would otherwise change nothing, silently."""
    names = sorted(names)
    unmatched = sorted(p for p in prefixes if not any(covers(p, n) for n in names))
    if unmatched:
        tops = sorted({n.split(".")[0] for n in names})
        raise ValueError(f"merge part(s) {unmatched} name no adapted matrix; this adapter's parts start with "
                         f"{', '.join(tops)} (a prefix covers whole name components, e.g. {tops[0]!r})")


def merge_by_parts(adapters: Sequence[Adapter], method: str, weights: Sequence[float] | None, options: object | None,
                   parts: PartMerge) -> Adapter:
    """Each group of matrices (same method prefix, same weight prefix) merged with its method, then weighted."""
    names = list(adapters[0].factors)
    check_prefixes([*parts.methods, *parts.weights], names)
    groups: dict[tuple[str | None, str | None], list[str]] = {}
    for name in names:
        groups.setdefault((part_of(name, parts.methods), part_of(name, parts.weights)), []).append(name)
    merged: dict[str, Factors] = {}
    for (method_prefix, weight_prefix), group in groups.items():
        part_method, part_options = parts.methods.get(method_prefix, (method, options))
        subset = [Adapter({n: a.factors[n] for n in group}, a.scale, a.metadata) for a in adapters]
        combined = merge_adapters(subset, part_method, weights, options=part_options)
        weight = parts.weights.get(weight_prefix, 1.0)
        merged |= {n: f.scaled(weight) for n, f in combined.factors.items()}
    merge = get_merge(method)
    chosen = options if options is not None else merge.make_options()
    site_weights = resolve_weights(weights, len(adapters)).tolist()
    return Adapter({n: merged[n] for n in names}, scale=1.0, metadata={"merge": {
        "method": method, "options": dataclasses.asdict(chosen), "weights": site_weights, "dense": merge.dense,
        "parts": parts.describe()}})
