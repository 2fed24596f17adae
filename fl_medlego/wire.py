"""What crosses the wire, defined once for both sides.

A site sends only its adapter's low-rank factors (`<matrix>.lora_B/E/A`, with the scale folded into
E so that D = B diag(E) A exactly) and a few metrics; images, labels and heads stay at the site.
The server checks every reply against the adapter template of the shared model before merging.
"""

from __future__ import annotations

import torch

from .lora import Adapter, Factors

# RecordDict keys
ARRAYS = "arrays"  # the adapter factors (Flower FedAvg's default ArrayRecord key)
CONFIG = "config"  # server -> site instructions
METRICS = "metrics"  # site -> server numbers
SITE_INFO = "site-info"  # site -> server identity (ConfigRecord)

# ConfigRecord entries
SITE = "site"
SITES = "sites"  # a node's answer to the site query: comma-separated site names
SERVER_ROUND = "server-round"
WITH_SPECIALIST = "with-specialist"
LEARNING_CURVE = "learning-curve"  # train message: fine-tune from the given adapter, report per-epoch ACC
CURVE_EPOCHS = "curve-epochs"
BASE_FINGERPRINT = "base-fingerprint"
DATA_SOURCE = "data-source"  # where the site's images came from (a description, never the data)

# MetricRecord entries
NUM_EXAMPLES = "num-examples"
EVAL_METRICS = ("acc", "auc", "f1", "loss")
SPECIALIST_PREFIX = "specialist-"


class InvalidUpdate(ValueError):
    """A site's reply that must not be merged; the message says why."""


# ArrayRecord entries: all factors packed in one float32 vector, in the order of the sorted matrix names
# of the shared adapter template, each matrix as B (row-major), E, A (row-major); and the ranks. One
# array instead of three per matrix keeps Flower's per-array framing to a few hundred bytes in total.
PACKED = "factors"
RANKS = "ranks"


def encode(adapter: Adapter) -> dict[str, torch.Tensor]:
    """The adapter as wire tensors: packed factors (scale folded into E) and their ranks."""
    folded = adapter.folded()
    names = sorted(folded)
    parts = [t.reshape(-1).float() for n in names for t in (folded[n].B, folded[n].E, folded[n].A)]
    return {PACKED: torch.cat(parts), RANKS: torch.tensor([folded[n].rank for n in names], dtype=torch.int64)}


def decode(tensors: dict[str, torch.Tensor], template: dict[str, tuple[int, int]]) -> Adapter:
    """The adapter in `tensors` if it fits the template (matrix name -> (d_out, d_in)); else InvalidUpdate.

    Checks: exactly the two expected entries; integer ranks, one per template matrix, each between 1
    and min(d_out, d_in); a floating-point vector of exactly the implied length; only finite values.
    """
    if set(tensors) != {PACKED, RANKS}:
        raise InvalidUpdate(f"wrong tensor keys {sorted(tensors)}: expected {sorted([PACKED, RANKS])}")
    packed, ranks = tensors[PACKED], tensors[RANKS]
    names = sorted(template)
    if ranks.is_floating_point() or ranks.dim() != 1 or ranks.numel() != len(names):
        raise InvalidUpdate(f"'{RANKS}' must hold {len(names)} integers (one per adapted matrix), "
                            f"got {ranks.dtype} of shape {tuple(ranks.shape)}")
    if not packed.is_floating_point() or packed.dim() != 1:
        raise InvalidUpdate(f"'{PACKED}' must be a floating-point vector, got {packed.dtype} {tuple(packed.shape)}")
    sizes = []
    for name, r in zip(names, ranks.tolist()):
        d_out, d_in = template[name]
        if not 1 <= r <= min(d_out, d_in):
            raise InvalidUpdate(f"{name}: rank {r} outside [1, {min(d_out, d_in)}]")
        sizes += [d_out * r, r, r * d_in]
    if packed.numel() != sum(sizes):
        raise InvalidUpdate(f"'{PACKED}' holds {packed.numel()} values where these ranks need {sum(sizes)}: "
                            "the update does not fit the adapted matrices (a missing layer or a wrong shape)")
    if not torch.isfinite(packed).all():
        raise InvalidUpdate(f"'{PACKED}' holds NaN or Inf values")
    pieces = iter(packed.float().split(sizes))
    factors = {}
    for name, r in zip(names, ranks.tolist()):
        d_out, d_in = template[name]
        factors[name] = Factors(next(pieces).reshape(d_out, r).clone(), next(pieces).clone(),
                                next(pieces).reshape(r, d_in).clone())
    return Adapter(factors, scale=1.0)
