"""Merge methods by name (pure tensor code) and `merge_adapters`, which applies one to whole adapters.

    from fl_medlego.merging import merge_adapters
    merged = merge_adapters([site_a, site_b], method="medlego", energy=0.9)
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Sequence

import torch

from ..lora.factors import Adapter
from . import (  # noqa: F401  (importing a method's module registers it)
    core_space,
    dare,
    fedex,
    flora,
    iso,
    knots,
    lora_avg,
    lora_lego,
    magmax,
    medlego,
    medlego_sum,
    pem,
    post_avg,
    robust,
    task_arithmetic,
    ties,
    tsv,
)
from ._lowrank import frobenius_norm
from ._registry import MergeMethod, get_merge, list_merges, register_merge


def adapter_norm(adapter: Adapter) -> float:
    """Frobenius norm of the whole update (every adapted matrix, scale included), from the factors alone."""
    return sum(frobenius_norm(f) ** 2 for f in adapter.folded().values()) ** 0.5


def normalize_weights(weights: Sequence[float], n: int) -> torch.Tensor:
    """Non-negative weights (e.g. example counts) scaled to sum to 1."""
    w = resolve_weights(weights, n)
    if (w < 0).any():
        raise ValueError(f"weights to normalize must be non-negative, got {w.tolist()}")
    return w / w.sum()


def resolve_weights(weights: Sequence[float] | None, n: int) -> torch.Tensor:
    """Uniform 1/N when None; else the given weights as they are (a weight of -1 negates a site's update)."""
    if weights is None:
        return torch.full((n,), 1.0 / n, dtype=torch.float64)
    w = torch.as_tensor(list(weights), dtype=torch.float64)
    if w.numel() != n:
        raise ValueError(f"got {w.numel()} merge weights for {n} adapters")
    if not torch.isfinite(w).all() or not w.abs().sum() > 0:
        raise ValueError(f"merge weights must be finite and not all zero, got {w.tolist()}")
    return w


def _same_shape_groups(per_matrix: dict[str, list], max_batch_bytes: int) -> list[list[str]]:
    """Matrix names grouped by (shape, per-site ranks), each group small enough to stack in float64."""
    groups: dict[tuple, list[str]] = {}
    for name, factors in per_matrix.items():
        groups.setdefault((factors[0].shape, tuple(f.rank for f in factors)), []).append(name)
    batches = []
    for (shape, ranks), names in groups.items():
        per_matrix_bytes = 8 * min(sum(ranks) * (shape[0] + shape[1]), shape[0] * shape[1] + sum(ranks) * shape[0])
        size = max(1, max_batch_bytes // max(per_matrix_bytes, 1))
        batches += [names[i:i + size] for i in range(0, len(names), size)]
    return batches


def option_grid(method: str) -> list[dict]:
    """Every combination of the method's `search_space` values (one empty dict when it has none)."""
    space = getattr(get_merge(method).options_type, "search_space", {})
    return [dict(zip(space, values)) for values in itertools.product(*space.values())] or [{}]


def merge_adapters(
    adapters: Sequence[Adapter], method: str = "medlego", weights: Sequence[float] | None = None,
    max_batch_bytes: int = 256 * 2**20, options: object | None = None, **option_values
) -> Adapter:
    """Merge whole adapters matrix by matrix with a registered method; the result has scale 1.

    weights: None for uniform 1/N, else used as given (normalize example counts with
    `normalize_weights` first). Every adapter must adapt the same matrices (ranks may differ where
    the method allows it). Options: an instance of the method's options type (`options`), or its
    fields by name (`option_values`), not both.
    """
    if not adapters:
        raise ValueError("merge_adapters needs at least one adapter")
    merge = get_merge(method)
    if options is None:
        opts = merge.make_options(**option_values)
    elif option_values or not isinstance(options, merge.options_type):
        raise TypeError(f"merge method {method!r} takes one {merge.options_type.__name__} as options, "
                        f"got {type(options).__name__} and {sorted(option_values)}")
    else:
        opts = options
    names = set(adapters[0].factors)
    for i, adapter in enumerate(adapters[1:], start=1):
        if set(adapter.factors) != names:
            diff = sorted(names.symmetric_difference(adapter.factors))
            raise ValueError(f"adapter {i} adapts other matrices than adapter 0 (differing: {diff[:5]})")
    w = resolve_weights(weights, len(adapters))
    folded = [a.folded() for a in adapters]
    per_matrix = {name: [f[name] for f in folded] for name in sorted(names)}
    if merge.batched is None:
        merged = {name: merge.fn(factors, w, opts) for name, factors in per_matrix.items()}
    else:
        merged = {}
        for group in _same_shape_groups(per_matrix, max_batch_bytes):
            for name, result in zip(group, merge.batched([per_matrix[n] for n in group], w, opts)):
                merged[name] = result
        merged = {name: merged[name] for name in per_matrix}
    return Adapter(merged, scale=1.0, metadata={"merge": {"method": method, "options": dataclasses.asdict(opts),
                                                           "weights": w.tolist(), "dense": merge.dense}})


__all__ = ["MergeMethod", "adapter_norm", "get_merge", "list_merges", "merge_adapters", "normalize_weights",
           "option_grid", "register_merge", "resolve_weights"]
