"""What crosses the wire, defined once for both sides.

A site sends only its adapter's low-rank factors (`<matrix>.lora_B/E/A`, with the scale folded into
E so that D = B diag(E) A exactly) and a few metrics; images, labels and heads stay at the site.
The server checks every reply against the adapter template of the shared model before merging.
"""

from __future__ import annotations

import torch

from .lora import Adapter, Factors
from .lora.factors import FACTOR_SUFFIXES

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


def adapter_to_tensors(adapter: Adapter) -> dict[str, torch.Tensor]:
    """The adapter as wire tensors (scale folded into E)."""
    return Adapter(adapter.folded(), scale=1.0).to_tensors()


def tensors_to_adapter(tensors: dict[str, torch.Tensor]) -> Adapter:
    return Adapter.from_tensors(tensors, scale=1.0)


def validate_update(tensors: dict[str, torch.Tensor], template: dict[str, tuple[int, int]]) -> Adapter:
    """The adapter in `tensors` if it fits the template (matrix name -> (d_out, d_in)); else InvalidUpdate.

    Checks: exactly the template's matrices, each with B, E and A; floating dtypes; consistent ranks
    between 1 and min(d_out, d_in); the right outer shapes; only finite values.
    """
    expected_keys = {f"{name}.{suffix}" for name in template for suffix in FACTOR_SUFFIXES}
    missing, extra = sorted(expected_keys - set(tensors)), sorted(set(tensors) - expected_keys)
    if missing or extra:
        raise InvalidUpdate(f"wrong tensor keys: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
                            f"unexpected {extra[:4]}{'...' if len(extra) > 4 else ''}")
    factors = {}
    for name, (d_out, d_in) in template.items():
        B, E, A = (tensors[f"{name}.{s}"] for s in FACTOR_SUFFIXES)
        for key, t in zip(FACTOR_SUFFIXES, (B, E, A)):
            if not t.is_floating_point():
                raise InvalidUpdate(f"{name}.{key} has dtype {t.dtype}, expected a floating-point tensor")
            if not torch.isfinite(t).all():
                raise InvalidUpdate(f"{name}.{key} holds NaN or Inf values")
        r = E.shape[0] if E.dim() == 1 else -1
        if not (B.dim() == 2 and A.dim() == 2 and B.shape == (d_out, r) and A.shape == (r, d_in)):
            raise InvalidUpdate(f"{name}: shapes B {tuple(B.shape)}, E {tuple(E.shape)}, A {tuple(A.shape)} do not "
                                f"fit a {d_out} x {d_in} matrix (expected B ({d_out}, r), E (r,), A (r, {d_in}))")
        if not 1 <= r <= min(d_out, d_in):
            raise InvalidUpdate(f"{name}: rank {r} outside [1, {min(d_out, d_in)}]")
        factors[name] = Factors(B.float(), E.float(), A.float())
    return Adapter(factors, scale=1.0)
