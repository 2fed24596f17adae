"""The wire format and reply validation: what the server refuses to merge, and why."""

import pytest
import torch

from fl_medlego import wire
from fl_medlego.lora import Adapter

from conftest import random_factors

TEMPLATE = {"blocks.0.attn.qkv.q": (8, 6), "blocks.0.attn.qkv.v": (8, 6)}


def adapter(rng, rank=2, scale=2.0):
    return Adapter({n: random_factors(*s, rank, rng) for n, s in TEMPLATE.items()}, scale=scale)


def test_round_trip_folds_the_scale_and_keeps_ranks(rng):
    a = Adapter({"blocks.0.attn.qkv.q": random_factors(8, 6, 2, rng),
                 "blocks.0.attn.qkv.v": random_factors(8, 6, 3, rng)}, scale=2.0)
    back = wire.decode_adapter(wire.encode_adapter(a), TEMPLATE)
    assert back.scale == 1.0
    for name, f in a.factors.items():
        assert back.factors[name].rank == f.rank
        torch.testing.assert_close(back.factors[name].delta(), 2.0 * f.delta())


def test_the_wire_carries_two_arrays_only(rng):
    tensors = wire.encode_adapter(adapter(rng))
    assert set(tensors) == {wire.PACKED, wire.RANKS}
    assert tensors[wire.PACKED].numel() == 2 * (8 * 2 + 2 + 2 * 6)


def _set(key, value):
    return lambda t: t.__setitem__(key, value)


@pytest.mark.parametrize("corrupt, reason", [
    (lambda t: t.pop(wire.RANKS), "wrong tensor keys"),
    (_set("extra", torch.zeros(1)), "wrong tensor keys"),
    (lambda t: t.__setitem__(wire.PACKED, t[wire.PACKED][:-6]), "does not fit"),  # a layer short
    (_set(wire.RANKS, torch.tensor([2, 2, 2])), "one per adapted matrix"),
    (_set(wire.RANKS, torch.tensor([2.0, 2.0])), "integers"),
    (_set(wire.RANKS, torch.tensor([9, 2])), "rank 9 outside"),
    (_set(wire.RANKS, torch.tensor([0, 2])), "rank 0 outside"),
    (_set(wire.RANKS, torch.tensor([3, 2])), "does not fit"),  # ranks that do not match the vector's length
    (lambda t: t[wire.PACKED].__setitem__(0, float("nan")), "NaN or Inf"),
    (lambda t: t[wire.PACKED].__setitem__(5, float("inf")), "NaN or Inf"),
    (lambda t: t.__setitem__(wire.PACKED, t[wire.PACKED].to(torch.int64)), "float32 vector"),
    (_set(wire.RANKS, torch.tensor([True, True])), "integers"),  # bool ranks
    (_set(wire.RANKS, torch.tensor([2 + 0j, 2 + 0j])), "integers"),  # complex ranks
    (lambda t: t.__setitem__(wire.PACKED, t[wire.PACKED].double().mul_(1e300)), "in float32"),  # finite in float64
])
def test_invalid_updates_are_rejected_with_a_reason(rng, corrupt, reason):
    tensors = wire.encode_adapter(adapter(rng))
    corrupt(tensors)
    with pytest.raises(wire.InvalidUpdate, match=reason):
        wire.decode_adapter(tensors, TEMPLATE)
