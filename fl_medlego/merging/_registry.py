"""Merge methods by name: each a pure function on one adapted matrix's per-site factors.

A method is `fn(factors, weights, options) -> Factors`: `factors[i]` is site i's update
D_i = B_i diag(E_i) A_i (scale already folded in), `weights` are float64 (1/N each unless the
caller chose others), and `options` is an instance of the method's own options dataclass.

A method registered with dense=True yields a full-rank update (entry-wise methods such as TIES):
it comes back as the exact SVD factors of that dense matrix (all min(d_out, d_in) triplets), and is
truncated only when its `rank` option asks for it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..errors import ConfigError, UnknownNameError
from ..lora.factors import Factors

MergeFn = Callable[[list[Factors], torch.Tensor, object], Factors]


@dataclass(frozen=True)
class MergeMethod:
    name: str
    fn: MergeFn
    options_type: type
    summary: str
    dense: bool = False  # the update is full-rank (kept exactly unless the method's `rank` option is set)
    # Optional: the same merge for a batch of matrices of one shape and rank pattern (faster, same result).
    batched: Callable[[list[list[Factors]], torch.Tensor, object], list[Factors]] | None = None

    def make_options(self, **options) -> object:
        """Build the method's options; an unknown option names the method and the known ones, and a value
        the options refuse is a ConfigError (both come from a user's setting or --option)."""
        known = [f.name for f in dataclasses.fields(self.options_type)]
        unknown = sorted(set(options) - set(known))
        if unknown:
            raise ConfigError(f"merge method {self.name!r} has no option(s) {unknown}; its options are {known}")
        try:
            return self.options_type(**options)
        except ConfigError:
            raise
        except ValueError as err:  # the options' own checks (fl_medlego.merging._options) raise plain ValueErrors
            raise ConfigError(str(err)) from err


_REGISTRY: dict[str, MergeMethod] = {}


def register_merge(name: str, options: type, dense: bool = False, batched=None) -> Callable[[MergeFn], MergeFn]:
    """Decorator: register `fn` under `name` with its options dataclass; the docstring's first line is its summary."""

    def decorator(fn: MergeFn) -> MergeFn:
        if name in _REGISTRY:
            raise ValueError(f"merge method {name!r} is registered twice")
        summary = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        _REGISTRY[name] = MergeMethod(name, fn, options, summary, dense, batched)
        return fn

    return decorator


def get_merge(name: str) -> MergeMethod:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownNameError("merge method", name, list_merges()) from None


def list_merges() -> list[str]:
    return sorted(_REGISTRY)
