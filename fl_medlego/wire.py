"""What crosses the wire, defined once for both sides: record keys, metric names, node-config keys,
and the tensor encodings of each site kind's update.

An adapter site sends only its adapter's low-rank factors (`<matrix>.lora_B/E/A`, with the scale
folded into E so that D = B diag(E) A exactly) and a few metrics; a full-weight site sends its whole
backbone. Images, labels and heads stay at the site. The server decodes every reply against the
template of the shared model (`decode_adapter`, `decode_backbone`) before anything else touches it.
No other module spells these names: `tests/test_layout.py` fails on a literal copy elsewhere.

Only what every kind shares is here; a kind declares its own metrics (names, ranges, which may be
undefined) in its module, and registering the kind declares them on the wire (`declare_metrics`).
"""

from __future__ import annotations

import math

import torch

from .lora import Adapter, Factors

# RecordDict keys
ARRAYS = "arrays"  # the update's tensors, as its site kind encodes them (Flower FedAvg's default ArrayRecord key)
CONFIG = "config"  # server -> site instructions
METRICS = "metrics"  # site -> server numbers
SITE_INFO = "site-info"  # site -> server identity (ConfigRecord)

# ConfigRecord entries
SITE = "site"
SITES = "sites"  # a node's answer to the site query: comma-separated site names
SERVER_ROUND = "server-round"  # the run's round number (a resumed run goes on counting)
RUN_KEY = "run-key"  # names the run across a resume: where a site keeps its state between rounds
WITH_SPECIALIST = "with-specialist"
CURVE_ACTION = "curve"  # message type train.curve (new_task): learn from the given update, report per-epoch ACC
CURVE_EPOCHS = "curve-epochs"
BASE_FINGERPRINT = "base-fingerprint"
DATA_SOURCE = "data-source"  # where the site's images came from (a description without paths, never the data)
SERVED_BY = "served-by"  # simulation on Ray: "<Ray node id>@<host name>" of the process that ran the site's round

# MetricRecord entries: site -> server
NUM_EXAMPLES = "num-examples"
VAL_ACC = "val-acc"  # best validation ACC of the round's local training
TRAIN_LOSS = "train-loss"  # mean task loss of that epoch
BEST_EPOCH = "best-epoch"
TEST_ACC = "test-acc"  # learning curves only (new_task), one value per epoch
ACC = "acc"  # also what `fl-medlego compare` chooses merge options on by default (KindSite.tuning_score)
EVAL_METRICS = (ACC, "auc", "f1", "loss")
SPECIALIST_PREFIX = "specialist-"
MAJORITY_RATE = "majority-rate"  # the test split's share of its most frequent class: ACC of a constant guess
ROUND_MEAN_METRICS = (VAL_ACC, TRAIN_LOSS)  # averaged over the sites in the round's aggregate
# MetricRecord entries: the server's aggregate of a round
SITES_MERGED = "sites-merged"
MERGED_MAX_RANK = "merged-max-rank"

# Node-config keys: what a SuperNode says about itself (deployment: --node-config; simulation: Flower's own)
NODE_SITE = "site"  # comma-separated site names this node hosts
NODE_DATA_ROOT = "data-root"  # where this node's images are; wins over the run config's data.root when set
NODE_PARTITION_ID = "partition-id"  # simulation
NODE_NUM_PARTITIONS = "num-partitions"  # simulation
NODE_DATASET = "dataset"  # the dataset registered at this node (`fl-medlego site data add`) its site trains on
NODE_STATE_DIR = "state-dir"  # a node-local folder for its sites' state between rounds (default under ~/.cache)


class InvalidUpdate(ValueError):
    """A site's reply that must not be merged; the message says why, `site` says whose (once known)."""

    def __init__(self, reason: str, site: str | None = None, internal: str = "") -> None:
        super().__init__(reason)
        self.site = site
        self.internal = internal  # the traceback, when the fault is the coordinator's own and not the site's


# ArrayRecord entries: all factors packed in one float32 vector, in the order of the sorted matrix names
# of the shared adapter template, each matrix as B (row-major), E, A (row-major); and the ranks. One
# array instead of three per matrix keeps Flower's per-array framing to a few hundred bytes in total.
PACKED = "factors"
RANKS = "ranks"


def encode_adapter(adapter: Adapter) -> dict[str, torch.Tensor]:
    """The adapter as wire tensors: packed factors (scale folded into E) and their ranks."""
    folded = adapter.folded()
    names = sorted(folded)
    parts = [t.reshape(-1).float() for n in names for t in (folded[n].B, folded[n].E, folded[n].A)]
    return {PACKED: torch.cat(parts), RANKS: torch.tensor([folded[n].rank for n in names], dtype=torch.int64)}


def decode_adapter(tensors: dict[str, torch.Tensor], template: dict[str, tuple[int, int]]) -> Adapter:
    """The adapter in `tensors` if it fits the template (matrix name -> (d_out, d_in)); else InvalidUpdate.

    Checks: exactly the two expected entries; integer ranks, one per template matrix, each between 1
    and min(d_out, d_in); a floating-point vector of exactly the implied length; only finite values.
    """
    if set(tensors) != {PACKED, RANKS}:
        raise InvalidUpdate(f"wrong tensor keys {sorted(tensors)}: expected {sorted([PACKED, RANKS])}")
    packed, ranks = tensors[PACKED], tensors[RANKS]
    names = sorted(template)
    if ranks.dtype not in (torch.int32, torch.int64) or ranks.dim() != 1 or ranks.numel() != len(names):
        raise InvalidUpdate(f"'{RANKS}' must hold {len(names)} integers (one per adapted matrix), "
                            f"got {ranks.dtype} of shape {tuple(ranks.shape)}")
    if packed.dtype not in (torch.float32, torch.float64) or packed.dim() != 1:
        raise InvalidUpdate(f"'{PACKED}' must be a float32 vector, got {packed.dtype} {tuple(packed.shape)}")
    sizes = []
    for name, r in zip(names, ranks.tolist()):
        d_out, d_in = template[name]
        if not 1 <= r <= min(d_out, d_in):
            raise InvalidUpdate(f"{name}: rank {r} outside [1, {min(d_out, d_in)}]")
        sizes += [d_out * r, r, r * d_in]
    if packed.numel() != sum(sizes):
        raise InvalidUpdate(f"'{PACKED}' holds {packed.numel()} values where these ranks need {sum(sizes)}: "
                            "the update does not fit the adapted matrices (a missing layer or a wrong shape)")
    packed = packed.float()  # a float64 vector may be finite and still overflow here
    if not torch.isfinite(packed).all():
        raise InvalidUpdate(f"'{PACKED}' holds NaN or Inf values (in float32)")
    pieces = iter(packed.split(sizes))
    factors = {}
    for name, r in zip(names, ranks.tolist()):
        d_out, d_in = template[name]
        factors[name] = Factors(next(pieces).reshape(d_out, r).clone(), next(pieces).clone(),
                                next(pieces).reshape(r, d_in).clone())
    return Adapter(factors, scale=1.0)


def encode_backbone(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A full backbone as wire tensors: its state dict as it is."""
    return dict(weights)


def decode_backbone(tensors: dict[str, torch.Tensor], template: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """The backbone in `tensors` if it has exactly the template's keys and shapes, floating point and finite."""
    missing, extra = sorted(set(template) - set(tensors)), sorted(set(tensors) - set(template))
    if missing or extra:
        raise InvalidUpdate(f"backbone keys do not fit: missing {missing[:4]}, unexpected {extra[:4]}")
    decoded = {}
    for key, shape in template.items():
        tensor = tensors[key]
        if tuple(tensor.shape) != shape or tensor.dtype not in (torch.float32, torch.float64):
            raise InvalidUpdate(f"{key}: {tensor.dtype} {tuple(tensor.shape)}, expected float32 {shape}")
        decoded[key] = tensor.float()
        if not torch.isfinite(decoded[key]).all():
            raise InvalidUpdate(f"{key} holds NaN or Inf values (in float32)")
    return decoded


MAX_EXAMPLES = 10**8  # more images than any site holds: a larger claim is a lie or a bug
MAX_LOSS = 1e6

# The declared metrics: name -> (low, high, integral). A reply's metric outside its range is a rejection;
# a metric that is not declared is dropped, never logged.
METRIC_SCHEMA: dict[str, tuple[float, float, bool]] = {
    NUM_EXAMPLES: (1, MAX_EXAMPLES, True),
    VAL_ACC: (0.0, 1.0, False),
    TRAIN_LOSS: (0.0, MAX_LOSS, False),
    BEST_EPOCH: (1, 10**6, True),
    **{name: (0.0, MAX_LOSS if name == "loss" else 1.0, False) for name in EVAL_METRICS},
    **{SPECIALIST_PREFIX + name: (0.0, MAX_LOSS if name == "loss" else 1.0, False) for name in EVAL_METRICS},
    MAJORITY_RATE: (0.0, 1.0, False),  # a kind that evaluates on labels declares it (SiteKind.evaluate_metrics)
    SPECIALIST_PREFIX + MAJORITY_RATE: (0.0, 1.0, False),
}


# AUC is undefined (NaN, as fl_medlego.metrics reports it) on a split that holds one class only: an honest
# small site sends it. Every other metric must be a finite number, unless it is declared as possibly undefined.
# A DP-SGD site sends no training loss (NaN): it would be computed on its private images outside the guarantee
# (fl_medlego.privacy.site).
MAY_BE_UNDEFINED: set[str] = {"auc", SPECIALIST_PREFIX + "auc", TRAIN_LOSS}


def declare_metrics(schema: dict[str, tuple[float, float, bool]], may_be_undefined=()) -> None:
    """Declare the metrics a layer or a site kind adds to replies (name -> (low, high, integral)); a name is
    declared once, with one range. may_be_undefined: those of them a reply may send as NaN."""
    for name, bounds in schema.items():
        if METRIC_SCHEMA.get(name, bounds) != bounds:
            raise ValueError(f"metric {name!r} is declared twice with different ranges")
    unknown = set(may_be_undefined) - set(schema) - set(METRIC_SCHEMA)
    if unknown:
        raise ValueError(f"metrics {sorted(unknown)} may be undefined but have no declared range")
    METRIC_SCHEMA.update(schema)
    MAY_BE_UNDEFINED.update(may_be_undefined)


def read_metrics(record: dict, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, float]:
    """The declared metrics of a reply: every required one (and the example count) present, each a finite
    real number in its declared range (bools are not numbers here); anything undeclared is dropped."""
    metrics = {}
    names = (*dict.fromkeys((*required, NUM_EXAMPLES)), *optional)
    for name in names:
        if name not in record:
            if name in optional:
                continue
            raise InvalidUpdate(f"metric '{name}' is missing")
        value = record[name]
        low, high, integral = METRIC_SCHEMA[name]
        if name in MAY_BE_UNDEFINED and isinstance(value, float) and math.isnan(value):
            metrics[name] = value
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise InvalidUpdate(f"metric '{name}' must be a finite number, got a {type(value).__name__}")
        if not low <= value <= high or (integral and value != int(value)):
            raise InvalidUpdate(f"metric '{name}' = {float(value):.6g} is outside [{low}, {high}]"
                                + (" or not a whole number" if integral else ""))
        metrics[name] = float(value)
    return metrics
