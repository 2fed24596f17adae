"""Each merge method's defining property, on small random inputs (non-zero factors so tests can fail)."""

import pytest
import torch

from fl_medlego.lora import Adapter, Factors
from fl_medlego.merging import get_merge, list_merges, merge_adapters

from conftest import random_factors

D_OUT, D_IN = 14, 11


def merge(factors, method, weights=None, **options):
    return merge_adapters([Adapter({"m": f}) for f in factors], method, weights, **options).factors["m"]


def sites(rng, ranks=(2, 3, 2)):
    return [random_factors(D_OUT, D_IN, r, rng, torch.float64) for r in ranks]


def close(a, b, tol=1e-8):
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


LINEAR = {  # methods that are linear in the updates under these options
    "medlego": {"energy": 1.0}, "post_avg": {}, "task_arithmetic": {"lam": 1.0}, "flora": {},
    "core_space": {"inner": "linear", "lam": 1.0}, "knots": {"inner": "linear", "lam": 1.0}, "fedex": {},
}


# Options under which a method keeps the whole of a single site's update (no trimming, dropping, rescaling).
KEEP_ALL = {**LINEAR, "ties": {"density": 1.0}, "tsv": {"keep": 1.0}, "dare": {"drop": 0.0, "lam": 1.0}}


@pytest.mark.parametrize("method", list_merges())
def test_weight_minus_one_negates(method, rng):
    site = sites(rng, (3,))[0]
    assert site.delta().abs().max() > 0.1  # a zero update would pass any negation test
    negated = merge([site], method, [-1.0], **KEEP_ALL.get(method, {})).delta()
    if method in KEEP_ALL:
        close(negated, -site.delta())
    else:  # methods that reshape even one update (Iso's flat spectrum): negation still commutes
        close(negated, -merge([site], method, [1.0]).delta())
        assert negated.abs().max() > 0.1


@pytest.mark.parametrize("method", sorted(LINEAR))
def test_plus_and_minus_the_same_adapter_cancel(method, rng):
    site = sites(rng, (3,))[0]
    close(merge([site, site], method, [1.0, -1.0], **LINEAR[method]).delta(),
          torch.zeros(D_OUT, D_IN, dtype=torch.float64))


@pytest.mark.parametrize("method", ["post_avg", "flora", "fedex"])
def test_exact_weighted_mean(method, rng):
    factors = sites(rng, (3, 3, 3))
    expected = sum(f.delta() for f in factors) / 3
    close(merge(factors, method).delta(), expected)


def test_flora_stacking_is_exact_and_keeps_every_rank(rng):
    factors = sites(rng)
    merged = merge(factors, "flora", [0.2, 0.3, 0.5])
    assert merged.rank == 7
    close(merged.delta(), sum(w * f.delta() for w, f in zip([0.2, 0.3, 0.5], factors)))


def test_fedex_is_lora_avg_plus_residual(rng):
    factors = sites(rng, (3, 3, 3))
    merged = merge(factors, "fedex")
    avg = merge(factors, "lora_avg")
    close(Factors(merged.B[:, :3], merged.E[:3], merged.A[:3]).delta(), avg.delta())
    assert not torch.allclose(avg.delta(), merged.delta())  # averaging factors alone is not exact


def test_task_arithmetic_is_lambda_times_sum(rng):
    factors = sites(rng)
    close(merge(factors, "task_arithmetic", lam=0.4).delta(), 0.4 * sum(f.delta() for f in factors))


def test_core_space_equals_full_space_task_arithmetic(rng):
    factors = sites(rng)
    core = merge(factors, "core_space", inner="linear", lam=0.7)
    close(core.delta(), merge(factors, "task_arithmetic", lam=0.7).delta())


@pytest.mark.parametrize("method", list_merges())
def test_a_stacked_rank_above_the_smaller_side_of_the_matrix_merges(method, rng):
    """After federated rounds the sites' ranks add up past a matrix's smaller side (the cross-modal projection is
    384 x 128): every method still returns a merge of the matrix's shape (core space once built non-square
    cores' full SVD and failed here)."""
    factors = [random_factors(14, 5, 4, rng, torch.float64) for _ in range(3)]  # stacked rank 12 > 5
    merged = merge(factors, method)
    assert merged.delta().shape == (14, 5) and torch.isfinite(merged.delta()).all()


def test_core_space_equals_task_arithmetic_past_the_smaller_side_too(rng):
    factors = [random_factors(14, 5, 4, rng, torch.float64) for _ in range(3)]
    close(merge(factors, "core_space", inner="linear", lam=0.7).delta(),
          merge(factors, "task_arithmetic", lam=0.7).delta())


def test_knots_linear_equals_task_arithmetic(rng):
    factors = sites(rng)
    close(merge(factors, "knots", inner="linear", lam=0.5).delta(), 0.5 * sum(f.delta() for f in factors))


def positive_sites(rng, n=3):
    return [Factors(torch.rand(D_OUT, 2, generator=rng, dtype=torch.float64) + 0.1,
                    torch.rand(2, generator=rng, dtype=torch.float64) + 0.1,
                    torch.rand(2, D_IN, generator=rng, dtype=torch.float64) + 0.1) for _ in range(n)]


def test_ties_with_density_one_and_no_sign_conflict_is_the_mean(rng):
    factors = positive_sites(rng)
    close(merge(factors, "ties", density=1.0, lam=1.0).delta(), sum(f.delta() for f in factors) / 3)


def test_ties_drops_the_minority_sign_and_trims():
    a = Factors(torch.eye(2, dtype=torch.float64), torch.tensor([3.0, 1.0], dtype=torch.float64),
                torch.eye(2, dtype=torch.float64))  # diag(3, 1)
    b = Factors(torch.eye(2, dtype=torch.float64), torch.tensor([-1.0, 2.0], dtype=torch.float64),
                torch.eye(2, dtype=torch.float64))  # diag(-1, 2)
    merged = merge([a, b], "ties", density=1.0, lam=1.0).delta()
    close(merged, torch.diag(torch.tensor([3.0, 1.5], dtype=torch.float64)))  # entry 0: + wins, -1 is dropped
    trimmed = merge([a, b], "ties", density=0.25, lam=1.0).delta()  # keeps 1 of 4 entries per update
    close(trimmed, torch.diag(torch.tensor([3.0, 2.0], dtype=torch.float64)))


def test_magmax_picks_the_largest_magnitude_per_entry(rng):
    factors = sites(rng)
    dense = torch.stack([f.delta() for f in factors])
    expected = dense.gather(0, dense.abs().argmax(0, keepdim=True)).squeeze(0)
    close(merge(factors, "magmax").delta(), expected)


def test_dare_without_drop_is_task_arithmetic_and_drop_keeps_the_expectation(rng):
    factors = sites(rng)
    close(merge(factors, "dare", drop=0.0, lam=1.0).delta(), sum(f.delta() for f in factors))
    draws = torch.stack([merge(factors, "dare", drop=0.5, lam=1.0, seed=s).delta() for s in range(400)])
    total = sum(f.delta() for f in factors)
    assert (draws.mean(0) - total).abs().max() < 0.25 * total.abs().max()
    one = merge(factors[:1], "dare", drop=0.9, lam=1.0, seed=1)
    assert one.rank == min(D_OUT, D_IN)  # dense result, kept exactly


def test_dare_drops_about_p_of_the_entries():
    f = Factors(torch.eye(40, dtype=torch.float64), torch.ones(40, dtype=torch.float64),
                torch.ones(40, 40, dtype=torch.float64))  # every entry of D is 1
    dropped = (merge([f], "dare", drop=0.3, lam=1.0, seed=3).delta().abs() < 1e-9).double().mean().item()
    assert 0.25 < dropped < 0.35


def test_tsv_on_orthogonal_tasks_is_their_sum():
    Q_out = torch.linalg.qr(torch.randn(D_OUT, 4, dtype=torch.float64))[0]
    Q_in = torch.linalg.qr(torch.randn(D_IN, 4, dtype=torch.float64))[0]
    a = Factors(Q_out[:, :2], torch.tensor([3.0, 1.0], dtype=torch.float64), Q_in[:, :2].T)
    b = Factors(Q_out[:, 2:], torch.tensor([2.0, 0.5], dtype=torch.float64), Q_in[:, 2:].T)
    close(merge([a, b], "tsv", keep=1.0).delta(), a.delta() + b.delta())
    assert merge([a, b], "tsv").rank == 2  # default keep = 1/N: one triplet of each


def test_tsv_output_bases_are_orthonormal(rng):
    merged = merge(sites(rng), "tsv", keep=1.0)
    close(merged.B.T @ merged.B, torch.eye(merged.rank, dtype=torch.float64))
    close(merged.A @ merged.A.T, torch.eye(merged.rank, dtype=torch.float64))


def test_pem_adds_plain_lora_factors(rng):
    a, b = sites(rng, (2, 2))
    merged = merge([a, b], "pem", [0.5, 0.5], lam=2.0)
    B = 0.5 * (a.B * a.E + b.B * b.E)
    A = 0.5 * (a.A + b.A)
    close(merged.delta(), 2.0 * B @ A)


def test_dense_methods_say_so_and_truncate_only_when_asked(rng):
    factors = sites(rng)
    for method in ("ties", "dare", "magmax"):
        assert get_merge(method).dense
        assert merge(factors, method).rank == min(D_OUT, D_IN)
        assert merge(factors, method, rank=3).rank == 3
    assert merge_adapters([Adapter({"m": f}) for f in factors], "ties").metadata["merge"]["dense"] is True


@pytest.mark.parametrize("method, option", [(m, f) for m in list_merges()
                                             for f in ("density", "drop", "keep", "energy")
                                             if f in get_merge(m).options_type.__dataclass_fields__])
def test_fractions_outside_zero_one_are_refused(method, option):
    with pytest.raises(ValueError, match=option):
        get_merge(method).make_options(**{option: 1.5})
    with pytest.raises(ValueError, match=option):
        get_merge(method).make_options(**{option: -0.1})


@pytest.mark.parametrize("method", ["median", "trimmed_mean"])
def test_robust_merges_ignore_one_huge_outlier(method, rng):
    honest = sites(rng, (2, 2, 2, 2))
    outlier = Factors(honest[0].B * 1e6, honest[0].E, honest[0].A * 1e6)
    clean = merge(honest, method).delta()
    attacked = merge([*honest, outlier], method).delta()
    assert (attacked - clean).abs().max() < 10 * max(f.delta().abs().max() for f in honest)  # not 1e12 x


def test_median_of_three_is_the_middle_entry():
    a, b, c = (Factors(torch.eye(3, dtype=torch.float64) * v, torch.ones(3, dtype=torch.float64),
                       torch.eye(3, dtype=torch.float64)) for v in (1.0, 5.0, 100.0))
    close(merge([a, b, c], "median").delta(), torch.eye(3, dtype=torch.float64) * 5.0)


def _left_space(f: Factors) -> torch.Tensor:
    Q = torch.linalg.qr(f.B)[0]
    return Q @ Q.T


def test_iso_c_of_one_task_keeps_its_singular_vectors_and_flattens_its_spectrum(rng):
    site = sites(rng, (3,))[0]
    U, S, Vh = torch.linalg.svd(site.delta())
    merged = merge([site], "iso_c", [1.0])
    assert merged.rank == 3 and torch.allclose(merged.E, torch.full((3,), float(S[:3].mean()), dtype=torch.float64))
    close(merged.delta(), S[:3].mean() * U[:, :3] @ Vh[:3])  # same vectors, every value the mean
    close(merge([site], "iso_c", [1.0], lam=2.0).delta(), 2 * merged.delta())


def test_iso_cts_keeps_a_small_tasks_direction_that_the_common_subspace_drops():
    Q_out = torch.linalg.qr(torch.randn(D_OUT, 4, dtype=torch.float64))[0]
    Q_in = torch.linalg.qr(torch.randn(D_IN, 4, dtype=torch.float64))[0]
    big = Factors(Q_out[:, :2], torch.tensor([10.0, 9.0], dtype=torch.float64), Q_in[:, :2].T)
    small = Factors(Q_out[:, 2:], torch.tensor([0.2, 0.1], dtype=torch.float64), Q_in[:, 2:].T)
    merged = merge([big, small], "iso_cts", [0.5, 0.5], common=0.5)
    close(merged.B.T @ merged.B, torch.eye(merged.rank, dtype=torch.float64))  # orthonormal bases
    close(merged.A @ merged.A.T, torch.eye(merged.rank, dtype=torch.float64))
    space = _left_space(merged)
    top_small = Q_out[:, 2]
    assert (space @ top_small).norm() > 0.999  # the small task's top direction is in the merge
    assert (space @ Q_out[:, 3]).norm() < 1e-6  # its second is not: one direction per task outside common
    assert torch.allclose(merged.E, merged.E[0].expand_as(merged.E))  # a flat spectrum


def test_iso_cts_with_everything_common_is_iso_c(rng):
    factors = sites(rng)
    close(merge(factors, "iso_cts", common=1.0).delta(), merge(factors, "iso_c").delta())


def test_lora_lego_with_k_equal_to_the_total_rank_is_exact(rng):
    factors = sites(rng)  # ranks 2, 3, 2: seven units, each its own cluster, calibration changes nothing
    close(merge(factors, "lora_lego", clusters=7).delta(), sum(f.delta() for f in factors))
    close(merge(factors, "lora_lego", [0.2, 0.3, 0.5], clusters=7).delta(),
          3 * sum(w * f.delta() for w, f in zip((0.2, 0.3, 0.5), factors)))


def test_lora_lego_groups_the_same_unit_from_two_sites_whatever_its_sign(rng):
    site = sites(rng, (3,))[0]
    mirrored = Factors(-site.B, site.E, -site.A)  # the same update, opposite signs in both factors
    merged = merge([site, mirrored], "lora_lego", clusters=3)
    assert merged.rank == 3
    close(merged.delta(), site.delta())  # each pair of equal units is one cluster: the update once, not twice
    uncalibrated = merge([site, mirrored], "lora_lego", clusters=3, calibrate=False)
    close(uncalibrated.delta(), site.delta())  # equal members: the centroid has their norm already


def test_lora_lego_calibration_restores_the_norm_averaging_loses(rng):
    a, b = sites(rng, (1, 1))
    plain = merge([a, b], "lora_lego", clusters=1, calibrate=False)
    calibrated = merge([a, b], "lora_lego", clusters=1)
    assert calibrated.rank == plain.rank == 1
    assert calibrated.E[0] > plain.E[0]  # the centroid of two different units is shorter than either


def test_medlego_sum_is_medlego_scaled_by_lambda_times_n(rng):
    factors = sites(rng)
    plain = merge(factors, "medlego", energy=0.8)
    variant = merge(factors, "medlego_sum", energy=0.8, lam=0.5)
    assert variant.rank == plain.rank  # the energy rule does not see the scale: the same directions
    close(variant.delta(), 0.5 * 3 * plain.delta())


@pytest.mark.parametrize("method", ["lora_avg", "pem", "fedex"])
def test_methods_that_combine_factors_refuse_mixed_ranks_in_their_own_name(rng, method):
    with pytest.raises(ValueError, match=rf"^{method} needs every site at the same rank"):
        merge(sites(rng, ranks=(2, 3)), method)
