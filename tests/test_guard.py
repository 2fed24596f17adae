"""The update guard clips an over-bound update to the bound exactly (to float32 precision), however large
it is and wherever its size sits in the factors, so that a clipped update still counts."""

import pytest
import torch

from fl_medlego import wire
from fl_medlego.config import GuardSettings, parse_run_config
from fl_medlego.kinds import get_kind
from fl_medlego.lora import Adapter, Factors
from fl_medlego.server.guard import guard_updates

BOUND = 1.0
RATIOS = [1e-3, 0.5, 2.0, 1e3, 1e6, 1e10, 1e15, 1e20, 1e25, 1e30]  # the update's norm / the bound
TEMPLATE = {"blocks.0.attn.qkv.q": (16, 12), "blocks.0.attn.qkv.v": (16, 12)}
FLOAT32 = 1e-6  # a few float32 roundings of a norm


def _adapter(ratio: float, where: str) -> Adapter:
    """An adapter of norm `ratio` x BOUND whose size is on E, on B and A, or on B and A with a tiny E
    (factors a site may balance badly on purpose)."""
    gen = torch.Generator().manual_seed(7)
    factors = {n: Factors(torch.randn(o, 4, generator=gen, dtype=torch.float64), torch.rand(4, generator=gen,
                          dtype=torch.float64) + 0.5, torch.randn(4, i, generator=gen, dtype=torch.float64))
               for n, (o, i) in TEMPLATE.items()}
    unit = _server("adapter").norm(Adapter(factors))
    e_scale = {"E": ratio / unit, "B and A": 1.0, "B and A, tiny E": 1e-30}[where]
    ba_scale = (ratio / unit / e_scale) ** 0.5
    return Adapter({n: Factors((f.B * ba_scale).float(), (f.E * e_scale).float(), (f.A * ba_scale).float())
                    for n, f in factors.items()}, scale=1.0)


def _server(name):
    """A kind's server half (its norm and scaling are what the guard uses)."""
    return get_kind(name).server(parse_run_config({}).kind_context(name))


def _guarded(kind, update, reference=None):
    kept, (decision,) = guard_updates({"site": update}, kind, reference, GuardSettings(norm_factor=0, max_norm=BOUND))
    return kept["site"], decision


@pytest.mark.parametrize("where", ["E", "B and A", "B and A, tiny E"])
@pytest.mark.parametrize("ratio", RATIOS)
def test_a_clipped_adapter_has_the_bound_as_its_norm(ratio, where):
    kind = _server("adapter")
    update = _adapter(ratio, where)
    assert kind.norm(update) == pytest.approx(ratio * BOUND, rel=FLOAT32)
    clipped, decision = _guarded(kind, update)
    assert decision.action == ("kept" if ratio <= 1 else "clipped")
    wanted = min(ratio, 1.0) * BOUND
    assert kind.norm(clipped) == pytest.approx(wanted, rel=FLOAT32)
    # The combined update is built from float32 factors, as they travel: the clip must survive that.
    sent = wire.decode_adapter(wire.encode_adapter(clipped), TEMPLATE)
    assert kind.norm(sent) == pytest.approx(wanted, rel=FLOAT32)
    assert all(torch.isfinite(t).all() for f in sent.factors.values() for t in (f.B, f.E, f.A))


@pytest.mark.parametrize("ratio", RATIOS)
def test_a_clipped_backbone_change_has_the_bound_as_its_norm(ratio):
    kind = _server("full")
    gen = torch.Generator().manual_seed(3)
    reference = {"w": torch.randn(32, 32, generator=gen) * 0.02, "b": torch.randn(32, generator=gen) * 0.02}
    change = {k: torch.randn(v.shape, generator=gen, dtype=torch.float64) for k, v in reference.items()}
    unit = sum(float(c.square().sum()) for c in change.values()) ** 0.5
    update = {k: (reference[k].double() + change[k] * ratio * BOUND / unit).float() for k in reference}
    clipped, decision = _guarded(kind, update, reference)
    assert decision.norm == pytest.approx(ratio * BOUND, rel=1e-4)  # float32 weights round a small change
    assert decision.action == ("kept" if ratio <= 1 else "clipped")
    wanted = decision.norm if ratio <= 1 else BOUND
    assert kind.norm(clipped, reference) == pytest.approx(wanted, rel=FLOAT32)


def test_a_zero_bound_clips_to_zero_not_to_nan():
    """A site that sends an all-zero adapter (E starts at zero) makes the lower median, and so the bound, 0."""
    kind = _server("adapter")
    zero = Adapter({n: Factors(f.B, torch.zeros_like(f.E), f.A) for n, f in _adapter(1.0, "E").factors.items()})
    kept, decisions = guard_updates({"idle": zero, "trained": _adapter(1e20, "B and A, tiny E"), "other": zero},
                                    kind, None, GuardSettings())
    assert [d.action for d in decisions] == ["kept", "clipped", "kept"] and decisions[1].bound == 0
    clipped = kept["trained"]
    assert all(not f.E.any() and torch.isfinite(f.B).all() for f in clipped.factors.values())
    assert kind.norm(clipped) == 0
