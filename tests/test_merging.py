"""Merges: medlego against a dense float64 reference, the energy threshold, lora_avg, the registry."""

import pytest
import torch

from fl_medlego.errors import ConfigError, UnknownNameError
from fl_medlego.lora import Adapter, Factors
from fl_medlego.merging import get_merge, list_merges, merge_adapters
from fl_medlego.merging._lowrank import dense_sum, energy_rank, svd_of_sum

from conftest import random_factors


def dense_reference(factors, weights, energy, max_rank=None):
    D = sum(w * f.delta().double() for f, w in zip(factors, weights))
    U, S, Vh = torch.linalg.svd(D, full_matrices=False)
    k = energy_rank(S, energy, max_rank)
    return (U[:, :k] * S[:k]) @ Vh[:k]


def merge_one(factors, weights=None, **options):
    adapters = [Adapter({"m": f}) for f in factors]
    return merge_adapters(adapters, "medlego", weights, **options).factors["m"]


@pytest.mark.parametrize("energy", [0.5, 0.9, 1.0])
def test_medlego_equals_dense_reference_with_mixed_ranks(rng, energy):
    factors = [random_factors(40, 30, r, rng, torch.float64) for r in (2, 4, 7)]
    merged = merge_one(factors, energy=energy)
    expected = dense_reference(factors, [1 / 3] * 3, energy)
    torch.testing.assert_close(merged.delta(), expected, rtol=1e-9, atol=1e-9)
    assert merged.rank == torch.linalg.matrix_rank(expected).item()


def test_medlego_core_path_matches_dense_svd_spectrum(rng):
    factors = [random_factors(64, 48, 4, rng, torch.float64) for _ in range(3)]
    weights = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    U, S, Vh = svd_of_sum(factors, weights)
    D = sum(w * f.delta() for f, w in zip(factors, weights))
    torch.testing.assert_close(S, torch.linalg.svdvals(D)[:12], rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(U.T @ U, torch.eye(12, dtype=torch.float64), rtol=0, atol=1e-10)
    torch.testing.assert_close((U * S) @ Vh, D, rtol=1e-10, atol=1e-10)


def test_energy_threshold_picks_smallest_k():
    s = torch.tensor([5.0, 3.0, 1.5, 0.5], dtype=torch.float64)  # cumulative share 0.5, 0.8, 0.95, 1.0
    assert energy_rank(s, 0.5) == 1
    assert energy_rank(s, 0.51) == 2
    assert energy_rank(s, 0.8) == 2
    assert energy_rank(s, 0.9) == 3
    assert energy_rank(s, 1.0) == 4
    assert energy_rank(s, 1.0, max_rank=2) == 2


def test_medlego_keeps_k_from_threshold_on_known_spectrum():
    # One site whose update has known singular values: k follows the threshold exactly.
    Q1 = torch.linalg.qr(torch.randn(20, 4, dtype=torch.float64))[0]
    Q2 = torch.linalg.qr(torch.randn(16, 4, dtype=torch.float64))[0]
    site = Factors(Q1, torch.tensor([5.0, 3.0, 1.5, 0.5], dtype=torch.float64), Q2.T)
    assert merge_one([site], energy=0.9).rank == 3
    assert merge_one([site], energy=0.8).rank == 2
    assert merge_one([site], energy=1.0, max_rank=1).rank == 1


def test_medlego_of_one_site_returns_its_update(rng):
    site = random_factors(24, 18, 5, rng, torch.float64)
    merged = merge_one([site], energy=1.0)
    torch.testing.assert_close(merged.delta(), site.delta(), rtol=1e-10, atol=1e-10)
    assert merged.rank == 5


def test_medlego_of_identical_sites_returns_their_update(rng):
    site = random_factors(24, 18, 3, rng, torch.float64)
    merged = merge_one([site, site, site], weights=[1 / 6, 2 / 6, 3 / 6], energy=1.0 - 1e-9)
    torch.testing.assert_close(merged.delta(), site.delta(), rtol=1e-9, atol=1e-9)
    assert merged.rank == 3


def test_medlego_uses_scale_of_each_adapter(rng):
    f = random_factors(10, 8, 2, rng, torch.float64)
    merged = merge_adapters([Adapter({"m": f}, scale=3.0)], "medlego", energy=1.0)
    assert merged.scale == 1.0
    torch.testing.assert_close(merged.factors["m"].delta(), 3.0 * f.delta(), rtol=1e-10, atol=1e-10)


def test_medlego_dense_path_when_stacked_rank_is_large(rng):
    factors = [random_factors(6, 5, 4, rng, torch.float64) for _ in range(3)]  # R = 12 >= min(6, 5)
    merged = merge_one(factors, energy=1.0)
    torch.testing.assert_close(merged.delta(), dense_reference(factors, [1 / 3] * 3, 1.0), rtol=1e-9, atol=1e-9)


def test_dense_sum_over_chunks_of_sites_is_the_weighted_sum(rng):
    # min(d) = 12 gives chunks of stacked rank <= 3: ranks 1..4 make chunks of one, two and three sites.
    factors = [random_factors(16, 12, r, rng, torch.float64) for r in (1, 1, 1, 2, 1, 4, 3, 2, 1)]
    weights = torch.rand(len(factors), generator=rng, dtype=torch.float64)
    expected = sum(w * f.delta() for f, w in zip(factors, weights))
    torch.testing.assert_close(dense_sum(factors, weights), expected, rtol=1e-12, atol=1e-12)


def test_lora_avg_averages_each_factor(rng):
    a, b = random_factors(8, 6, 3, rng), random_factors(8, 6, 3, rng)
    merged = merge_adapters([Adapter({"m": a}), Adapter({"m": b})], "lora_avg", weights=[0.25, 0.75]).factors["m"]
    torch.testing.assert_close(merged.B, 0.25 * a.B + 0.75 * b.B)
    torch.testing.assert_close(merged.E, 0.25 * a.E + 0.75 * b.E)
    torch.testing.assert_close(merged.A, 0.25 * a.A + 0.75 * b.A)


def test_lora_avg_refuses_mixed_ranks(rng):
    with pytest.raises(ValueError, match="same rank"):
        merge_adapters([Adapter({"m": random_factors(8, 6, r, rng)}) for r in (2, 3)], "lora_avg")


def test_unknown_method_lists_known_ones():
    with pytest.raises(UnknownNameError, match="known merge methods: .*medlego"):
        get_merge("medlgo")


def test_unknown_option_is_named():
    with pytest.raises(ConfigError, match="has no option"):
        merge_adapters([Adapter({"m": random_factors(4, 4, 1, torch.Generator())})], "medlego", enrgy=0.9)


def test_bad_option_values_are_refused():
    with pytest.raises(ConfigError, match="energy"):
        get_merge("medlego").make_options(energy=1.5)


# Options under which every method must hand a single site's update back unchanged.
IDENTITY_OPTIONS = {"energy": 1.0, "density": 1.0, "lam": 1.0, "drop": 0.0, "keep": 1.0}


def identity_options(method: str) -> dict:
    fields = get_merge(method).options_type.__dataclass_fields__
    return {k: v for k, v in IDENTITY_OPTIONS.items() if k in fields}


# Methods whose definition reshapes even one update: Iso-C / Iso-CTS flatten its spectrum (their own test
# checks that one site keeps its singular vectors).
RESHAPE_ONE_UPDATE = {"iso_c", "iso_cts"}


@pytest.mark.parametrize("method", [m for m in list_merges() if m not in RESHAPE_ONE_UPDATE])
def test_every_method_merges_one_site_to_its_own_update(method, rng):
    """Registry contract: with neutral options, a single site's adapter comes back unchanged."""
    site = random_factors(12, 10, 3, rng, torch.float64)
    merged = merge_adapters([Adapter({"m": site})], method, **identity_options(method))
    torch.testing.assert_close(merged.factors["m"].delta(), site.delta(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("method", list_merges())
def test_every_method_keeps_dtype_and_shape(method, rng):
    sites = [Adapter({"m": random_factors(12, 10, 3, rng)}) for _ in range(3)]
    merged = merge_adapters(sites, method).factors["m"]
    assert merged.shape == (12, 10) and merged.B.dtype == torch.float32
    assert torch.isfinite(merged.delta()).all()


def test_batched_medlego_equals_per_matrix(rng):
    from fl_medlego.merging import get_merge
    from fl_medlego.merging.medlego import MedLegoOptions

    matrices = [[random_factors(30, 20, r, rng, torch.float64) for r in (2, 3)] for _ in range(5)]
    weights = torch.tensor([0.4, 0.6], dtype=torch.float64)
    options = MedLegoOptions(energy=0.85, max_rank=4)
    batched = get_merge("medlego").batched(matrices, weights, options)
    for factors, got in zip(matrices, batched):
        expected = get_merge("medlego").fn(factors, weights, options)
        assert got.rank == expected.rank
        torch.testing.assert_close(got.delta(), expected.delta(), rtol=1e-10, atol=1e-10)


def test_merge_adapters_batches_in_bounded_groups(rng):
    adapters = [Adapter({f"m{i}": random_factors(16, 12, 2, rng, torch.float64) for i in range(7)}) for _ in range(3)]
    small = merge_adapters(adapters, "medlego", energy=1.0, max_batch_bytes=1)  # one matrix per batch
    large = merge_adapters(adapters, "medlego", energy=1.0)
    for name in small.factors:
        torch.testing.assert_close(small.factors[name].delta(), large.factors[name].delta(), rtol=1e-10, atol=1e-10)


def test_batched_medlego_in_the_dense_regime(rng):
    from fl_medlego.merging import get_merge
    from fl_medlego.merging.medlego import MedLegoOptions

    matrices = [[random_factors(6, 5, 3, rng, torch.float64) for _ in range(3)] for _ in range(4)]  # R = 9 >= 5
    weights = torch.full((3,), 1 / 3, dtype=torch.float64)
    for factors, got in zip(matrices, get_merge("medlego").batched(matrices, weights, MedLegoOptions(energy=1.0))):
        torch.testing.assert_close(got.delta(), dense_reference(factors, weights.tolist(), 1.0), rtol=1e-9, atol=1e-9)
