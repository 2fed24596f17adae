"""Reply validation: what the server refuses to merge, and why."""

import pytest
import torch

from fl_medlego import wire
from fl_medlego.lora import Adapter

from conftest import random_factors

TEMPLATE = {"blocks.0.attn.qkv.q": (8, 8), "blocks.0.attn.qkv.v": (8, 8)}


def good_tensors(rng, rank=2):
    return wire.adapter_to_tensors(Adapter({n: random_factors(*s, rank, rng) for n, s in TEMPLATE.items()}, scale=2.0))


def test_valid_update_passes_with_scale_folded(rng):
    tensors = good_tensors(rng)
    adapter = wire.validate_update(tensors, TEMPLATE)
    assert adapter.scale == 1.0 and set(adapter.factors) == set(TEMPLATE)


def test_scale_is_folded_into_e(rng):
    f = random_factors(8, 8, 2, rng)
    tensors = wire.adapter_to_tensors(Adapter({"m": f}, scale=2.0))
    torch.testing.assert_close(tensors["m.lora_E"], 2.0 * f.E)


@pytest.mark.parametrize("corrupt, reason", [
    (lambda t: t.pop("blocks.0.attn.qkv.v.lora_A"), "missing"),
    (lambda t: t.update({"blocks.9.attn.qkv.q.lora_A": torch.zeros(2, 8)}), "unexpected"),
    (lambda t: t.update({"blocks.0.attn.qkv.q.lora_B": torch.zeros(7, 2)}), "do not fit"),
    (lambda t: t.update({"blocks.0.attn.qkv.q.lora_E": torch.zeros(3)}), "do not fit"),
    (lambda t: t["blocks.0.attn.qkv.q.lora_A"].__setitem__((0, 0), float("nan")), "NaN or Inf"),
    (lambda t: t["blocks.0.attn.qkv.v.lora_B"].__setitem__((1, 1), float("inf")), "NaN or Inf"),
    (lambda t: t.update({"blocks.0.attn.qkv.q.lora_E": torch.ones(2, dtype=torch.int64)}), "floating-point"),
])
def test_invalid_updates_are_rejected_with_a_reason(rng, corrupt, reason):
    tensors = good_tensors(rng)
    corrupt(tensors)
    with pytest.raises(wire.InvalidUpdate, match=reason):
        wire.validate_update(tensors, TEMPLATE)


def test_rank_above_matrix_size_is_rejected(rng):
    with pytest.raises(wire.InvalidUpdate, match="rank 9 outside"):
        wire.validate_update(good_tensors(rng, rank=9), TEMPLATE)
