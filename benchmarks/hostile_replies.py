"""Hostile and broken train replies, by family, for the fuzz test and `python -m benchmarks.fuzz`.

Every mutation takes an honest reply of the hostile site and returns what a broken or malicious
site could send instead. `INVALID` mutations must be rejected; `VALID` ones are well-formed (an
unknown metric, a long description, an oversized update) and must be accepted, with the unknown
dropped, the text bounded and the update clipped by the guard.
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType, MetricRecord, RecordDict

from fl_medlego import wire
from fl_medlego.lora import Adapter, Factors
from fl_medlego.server.inprocess_grid import delivered_message as message

SITES = {"blood": 11, "breast": 12, "organa": 13, "retina": 15, "pneumonia": 14}
HOSTILE = "pneumonia"  # the site whose reply is mutated; the other four stay honest
BASE = "abc123"


def honest_adapter(template: dict, seed: int, scale: float = 1.0) -> Adapter:
    gen = torch.Generator().manual_seed(seed)
    factors = {n: Factors(torch.randn(o, 4, generator=gen) * 0.1, torch.rand(4, generator=gen) * scale,
                          torch.randn(4, i, generator=gen) * 0.1) for n, (o, i) in template.items()}
    return Adapter(factors, scale=2.0)


def honest_parts(site: str, template: dict, seed: int) -> dict:
    return {"arrays": {k: v for k, v in wire.encode_adapter(honest_adapter(template, seed)).items()},
            "metrics": {wire.NUM_EXAMPLES: 120.0, wire.VAL_ACC: 0.7, wire.TRAIN_LOSS: 0.5, wire.BEST_EPOCH: 3.0},
            "info": {wire.SITE: site, wire.BASE_FINGERPRINT: BASE, wire.DATA_SOURCE: "bloodmnist from local files"}}


def forged_record(record_type, values: dict):
    """A record holding exactly `values`, past Flower's own type checks (as a forged message would decode)."""
    record = record_type()
    record.__dict__["_data"].update(values)
    return record


def build(parts: dict, node: int):
    content = {}
    if parts.get("arrays") is not None:
        arrays = parts["arrays"]
        content[wire.ARRAYS] = arrays if not isinstance(arrays, dict) else ArrayRecord(
            {k: v if isinstance(v, Array) else Array(v.numpy()) for k, v in arrays.items()})
    if parts.get("metrics") is not None:
        metrics = parts["metrics"]
        content[wire.METRICS] = metrics if not isinstance(metrics, dict) else forged_record(MetricRecord, metrics)
    if parts.get("info") is not None:
        info = parts["info"]
        content[wire.SITE_INFO] = info if not isinstance(info, dict) else forged_record(ConfigRecord, info)
    return message(RecordDict(content), MessageType.TRAIN, src=node, dst=0)


def _raw(ndarray: np.ndarray, allow_pickle: bool = False) -> Array:
    buffer = io.BytesIO()
    np.save(buffer, ndarray, allow_pickle=allow_pickle)
    return Array(dtype=str(ndarray.dtype), shape=tuple(ndarray.shape), stype="numpy.ndarray", data=buffer.getvalue())


def _packed(parts: dict) -> np.ndarray:
    return parts["arrays"][wire.PACKED].numpy()


def _with_packed(parts: dict, value) -> dict:
    return {**parts, "arrays": {**parts["arrays"], wire.PACKED: value}}


def _with_ranks(parts: dict, value) -> dict:
    return {**parts, "arrays": {**parts["arrays"], wire.RANKS: value}}


def _with_metric(parts: dict, name: str, value) -> dict:
    return {**parts, "metrics": {**parts["metrics"], name: value}}


def _without(parts: dict, group: str, key: str) -> dict:
    return {**parts, group: {k: v for k, v in parts[group].items() if k != key}}


def _forged_header(parts: dict, rng: random.Random) -> dict:
    # A ~200-byte .npy file whose header claims 1e11 float32 values.
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (10**11,)})
    data = b"\x93NUMPY\x01\x00" + header.getvalue()[8:] + bytes(64)
    return _with_packed(parts, Array(dtype="float32", shape=(10**11,), stype="numpy.ndarray", data=data))


def _truncated(parts: dict, rng: random.Random) -> dict:
    array = _raw(_packed(parts))
    cut = rng.randrange(1, len(array.data))
    return _with_packed(parts, Array(dtype=array.dtype, shape=array.shape, stype=array.stype, data=array.data[:cut]))


def _garbage(parts: dict, rng: random.Random) -> dict:
    data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
    return _with_packed(parts, Array(dtype="float32", shape=(10,), stype="numpy.ndarray", data=data))


def _dtype(dtype: str) -> Callable:
    def mutate(parts: dict, rng: random.Random) -> dict:
        values = _packed(parts)
        if dtype == "object":
            return _with_packed(parts, _raw(values.astype(object), allow_pickle=True))
        if dtype == "str":
            return _with_packed(parts, _raw(values.astype(str)))
        if dtype == "bytes":
            return _with_packed(parts, _raw(values.astype(bytes)))
        if dtype == "datetime":
            return _with_packed(parts, _raw(np.arange(values.size).astype("datetime64[s]")))
        return _with_packed(parts, _raw(values.astype(dtype)))
    return mutate


def _scaled(power: int) -> Callable:
    def mutate(parts: dict, rng: random.Random) -> dict:
        return _with_packed(parts, torch.from_numpy(_packed(parts) * np.float32(10.0 ** (power / 3))))
    return mutate  # B, E and A each scaled by 10**(power / 3): the update B diag(E) A by 10**power


def _error(parts: dict, rng: random.Random):
    reason = ("Traceback (most recent call last):\n  File \"/hospital/secret/data/train.py\", line 3\n"
              + "x" * 5000)
    return ("error", reason)


def _rank_values(values) -> Callable:
    return lambda parts, rng: _with_ranks(parts, torch.tensor(values))


def _metric(name: str, value) -> Callable:
    return lambda parts, rng: _with_metric(parts, name, value)


def _drop(group: str, key: str) -> Callable:
    return lambda parts, rng: _without(parts, group, key)


def _set(group: str, value) -> Callable:
    return lambda parts, rng: {**parts, group: value}


def _info(key: str, value) -> Callable:
    return lambda parts, rng: {**parts, "info": {**parts["info"], key: value}}


INVALID: dict[str, Callable] = {
    # the records themselves
    "no arrays": _set("arrays", None), "no metrics": _set("metrics", None), "no site-info": _set("info", None),
    "config as arrays": _set("arrays", ConfigRecord({"x": 1})),
    "metrics as arrays": _set("arrays", MetricRecord({"x": 1})),
    "arrays as metrics": lambda p, r: {**p, "metrics": ArrayRecord({"x": Array(np.zeros(2))})},
    "config as metrics": _set("metrics", ConfigRecord({wire.NUM_EXAMPLES: "12"})),
    "metrics as site-info": _set("info", MetricRecord({wire.SITE: 1.0})),
    # array bytes
    "forged header": _forged_header, "truncated bytes": _truncated, "garbage bytes": _garbage,
    "wrong stype": lambda p, r: _with_packed(p, Array(dtype="float32", shape=(3,), stype="torch.Tensor", data=b"abc")),
    **{f"dtype {d}": _dtype(d) for d in ("str", "bytes", "datetime", "object", "complex64", "bool", "float16",
                                         "int8", "uint64", ">f4", ">f8")},
    "2-d packed": lambda p, r: _with_packed(p, torch.from_numpy(_packed(p).reshape(1, -1))),
    "short packed": lambda p, r: _with_packed(p, torch.from_numpy(_packed(p)[:-3])),
    "long packed": lambda p, r: _with_packed(p, torch.from_numpy(np.concatenate([_packed(p), np.zeros(3, "f4")]))),
    "NaN": lambda p, r: _with_packed(p, torch.from_numpy(np.where(np.arange(_packed(p).size) == 7, np.nan,
                                                                   _packed(p)).astype("f4"))),
    "Inf": lambda p, r: _with_packed(p, torch.from_numpy(np.where(np.arange(_packed(p).size) == 3, np.inf,
                                                                   _packed(p)).astype("f4"))),
    "float64 overflow": lambda p, r: _with_packed(p, torch.from_numpy(_packed(p).astype("f8") * 1e300)),
    "extra key": lambda p, r: {**p, "arrays": {**p["arrays"], "extra": torch.zeros(2)}},
    "missing ranks": _drop("arrays", wire.RANKS),
    "many keys": lambda p, r: {**p, "arrays": {f"k{i}": torch.zeros(1) for i in range(3000)}},
    "bool ranks": lambda p, r: _with_ranks(p, torch.ones(len(p["arrays"][wire.RANKS]), dtype=torch.bool)),
    "complex ranks": lambda p, r: _with_ranks(p, p["arrays"][wire.RANKS].to(torch.complex64)),
    "float ranks": lambda p, r: _with_ranks(p, p["arrays"][wire.RANKS].double()),
    "negative ranks": lambda p, r: _with_ranks(p, -p["arrays"][wire.RANKS]),
    "huge ranks": lambda p, r: _with_ranks(p, p["arrays"][wire.RANKS] * 10**9),
    "ranks count": lambda p, r: _with_ranks(p, p["arrays"][wire.RANKS][:-1]),
    # metrics
    **{f"no {m}": _drop("metrics", m) for m in (wire.NUM_EXAMPLES, wire.VAL_ACC, wire.TRAIN_LOSS, wire.BEST_EPOCH)},
    "examples True": _metric(wire.NUM_EXAMPLES, True), "examples 1e308": _metric(wire.NUM_EXAMPLES, 1e308),
    "examples 0": _metric(wire.NUM_EXAMPLES, 0.0), "examples 0.5": _metric(wire.NUM_EXAMPLES, 0.5),
    "examples negative": _metric(wire.NUM_EXAMPLES, -5.0), "examples NaN": _metric(wire.NUM_EXAMPLES, float("nan")),
    "val-acc 1e9": _metric(wire.VAL_ACC, 1e9), "val-acc negative": _metric(wire.VAL_ACC, -0.1),
    "val-acc inf": _metric(wire.VAL_ACC, float("inf")), "train-loss list": _metric(wire.TRAIN_LOSS, [1.0, 2.0]),
    "train-loss negative": _metric(wire.TRAIN_LOSS, -1.0), "best-epoch 2.5": _metric(wire.BEST_EPOCH, 2.5),
    # who it is and what it was trained on
    "site int": _info(wire.SITE, 5), "site undeclared": _info(wire.SITE, "derma"),
    "site of another node": _info(wire.SITE, "blood"), "site huge": _info(wire.SITE, "s" * 100_000),
    "no fingerprint": _drop("info", wire.BASE_FINGERPRINT), "other fingerprint": _info(wire.BASE_FINGERPRINT, "ffff"),
    "fingerprint not hex": _info(wire.BASE_FINGERPRINT, "../../etc"),
    "fingerprint int": _info(wire.BASE_FINGERPRINT, 12),
    # the node failed, with a long traceback full of paths
    "error reply": _error,
}

VALID: dict[str, Callable] = {
    "colliding metric names": lambda p, r: {**p, "metrics": {**p["metrics"], "round": 99.0, "site": 3.0,
                                                             "event": 1.0, "data_source": 2.0}},
    "unknown metrics": lambda p, r: {**p, "metrics": {**p["metrics"], **{f"m{i}": float(i) for i in range(500)}}},
    "huge data-source": _info(wire.DATA_SOURCE, "x" * 1_000_000),
    "path in data-source": _info(wire.DATA_SOURCE, "bloodmnist from /hospital/secret/patients/2026"),
    **{f"update x1e{k}": _scaled(k) for k in (1, 3, 6, 13)},
}


def hostile_message(name: str, template: dict, seed: int):
    """The hostile site's reply under one mutation (or, for the error family, an error reply)."""
    rng = random.Random(seed)
    parts = honest_parts(HOSTILE, template, seed)
    mutated = (INVALID | VALID)[name](parts, rng)
    if isinstance(mutated, tuple):  # an error reply
        return message(None, MessageType.TRAIN, src=SITES[HOSTILE], dst=0, error=mutated[1])
    return build(mutated, SITES[HOSTILE])


def honest_messages(template: dict, seed: int) -> list:
    return [build(honest_parts(site, template, seed * 10 + i), node)
            for i, (site, node) in enumerate(SITES.items()) if site != HOSTILE]
