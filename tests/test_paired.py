"""The paired t-test between benchmark runs (benchmarks/paired.py) and its t distribution p-values."""

import importlib.util
import math
import os
import sys
import warnings

import numpy as np
import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture()
def paired():
    sys.path.insert(0, BENCHMARKS)
    spec = importlib.util.spec_from_file_location("paired", os.path.join(BENCHMARKS, "paired.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture()
def own_p(paired, monkeypatch):
    """The module with scipy switched off, so that its own incomplete-beta p-values are tested."""
    monkeypatch.setattr(paired, "_scipy_stats", None)
    return paired


def _closed_form_p(t, df):
    """Two-sided p-values of the t distribution in closed form for 1 to 4 degrees of freedom."""
    t = abs(t)
    if df == 1:
        return 1 - 2 / math.pi * math.atan(t)
    if df == 2:
        return 1 - t / math.sqrt(2 + t * t)
    if df == 3:
        theta = math.atan(t / math.sqrt(3))
        return 1 - 2 / math.pi * (theta + math.sin(theta) * math.cos(theta))
    u = t / math.sqrt(4 + t * t)  # df == 4: P(|T| < t) = u (3 - u^2) / 2
    return 1 - u * (3 - u * u) / 2


@pytest.mark.parametrize("df", [1, 2, 3, 4])
@pytest.mark.parametrize("t", [1e-4, 0.3, 1.0, 2.5, 7.0, 60.0])
def test_t_p_values_match_the_closed_forms(own_p, t, df):
    assert own_p.t_two_sided_p(t, df) == pytest.approx(_closed_form_p(t, df), rel=1e-11, abs=1e-15)
    assert own_p.t_two_sided_p(-t, df) == own_p.t_two_sided_p(t, df)


@pytest.mark.parametrize(
    ("t", "df", "p"),
    [
        (2.228138851986273, 10, 0.05),  # tabulated two-sided 5% critical values
        (2.042272456301238, 30, 0.05),
        (1.979930405082441, 120, 0.05),
        (3.169272672616951, 10, 0.01),
        (12.70620473617471, 1, 0.05),
    ],
)
def test_t_p_values_at_tabulated_critical_values(own_p, t, df, p):
    assert own_p.t_two_sided_p(t, df) == pytest.approx(p, rel=1e-9)


def test_t_p_values_for_many_users_approach_the_normal(own_p):
    for t in (0.01, 1.0, 1.96, 3.0, 5.0):
        normal = math.erfc(t / math.sqrt(2))
        # df of a real benchmark (tens of thousands of users): the normal with its first-order correction
        # 2 phi(t) (t^3 + t) / (4 df), the next term being of order df^-2.
        first_order = normal + 2 * math.exp(-t * t / 2) / math.sqrt(2 * math.pi) * (t**3 + t) / (4 * 20_000)
        assert own_p.t_two_sided_p(t, 20_000) == pytest.approx(first_order, rel=1e-4)
        # The continued fraction and the large-df expansion agree where both hold, and across LARGE_DF.
        fraction = own_p.regularized_incomplete_beta(5e4, 0.5, 1e5 / (1e5 + t * t), complement=t * t / (1e5 + t * t))
        assert fraction == pytest.approx(own_p._t_two_sided_p_large_df(t, 1e5), rel=1e-8)
        below = own_p.t_two_sided_p(t, own_p.LARGE_DF)
        above = own_p.t_two_sided_p(t, own_p.LARGE_DF * (1 + 1e-9))
        assert below == pytest.approx(above, rel=1e-9)
        assert own_p.t_two_sided_p(t, 1e15) == pytest.approx(normal, rel=1e-12)


def test_t_p_value_edges(own_p):
    assert own_p.t_two_sided_p(0.0, 5) == 1.0
    assert own_p.t_two_sided_p(math.inf, 5) == 0.0
    assert math.isnan(own_p.t_two_sided_p(math.nan, 5))
    with pytest.raises(ValueError, match="degrees of freedom"):
        own_p.t_two_sided_p(1.0, 0)


def test_regularized_incomplete_beta_known_values(own_p):
    ibeta = own_p.regularized_incomplete_beta
    for x in (0.01, 0.3, 0.5, 0.9, 0.999):
        assert ibeta(1.0, 1.0, x) == pytest.approx(x, rel=1e-13)
        assert ibeta(3.5, 1.0, x) == pytest.approx(x**3.5, rel=1e-12)
        assert ibeta(1.0, 2.5, x) == pytest.approx(1 - (1 - x) ** 2.5, rel=1e-12)
        assert ibeta(2.0, 7.0, x) == pytest.approx(1 - ibeta(7.0, 2.0, 1 - x), abs=1e-14)
    assert ibeta(40.0, 40.0, 0.5) == pytest.approx(0.5, abs=1e-14)
    assert ibeta(2.0, 3.0, 0.0) == 0.0 and ibeta(2.0, 3.0, 1.0) == 1.0
    with pytest.raises(ValueError):
        ibeta(0.0, 1.0, 0.5)
    with pytest.raises(ValueError):
        ibeta(1.0, 1.0, 1.5)


def test_paired_test_on_differences_one_to_four(own_p):
    # d = [1, 2, 3, 4]: mean 2.5, sample std sqrt(5/3), t = 2.5 / (sqrt(5/3) / 2) = sqrt(15), 3 df.
    result = own_p.paired_test([1.0, 2.0, 3.0, 4.0], [0.0, 0.0, 0.0, 0.0])
    theta = math.atan(math.sqrt(5))
    expected_p = 1 - 2 / math.pi * (theta + math.sqrt(5) / 6)  # = 0.0304663 (df = 3 closed form)
    assert result["n"] == 4
    assert result["mean_diff"] == pytest.approx(2.5)
    assert result["t"] == pytest.approx(math.sqrt(15), rel=1e-13)
    assert result["p_value"] == pytest.approx(expected_p, rel=1e-12)
    assert result["p_value"] == pytest.approx(0.030466291662, rel=1e-9)
    assert "bootstrap_p" not in result
    swapped = own_p.paired_test([0.0, 0.0, 0.0, 0.0], [1.0, 2.0, 3.0, 4.0])
    assert swapped["t"] == pytest.approx(-math.sqrt(15)) and swapped["p_value"] == pytest.approx(expected_p)


def test_paired_test_matches_scipy_when_installed(paired):
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    a, b = rng.random(50), rng.random(50)
    reference = stats.ttest_rel(a, b)
    result = paired.paired_test(a, b)
    assert result["t"] == pytest.approx(reference.statistic, rel=1e-10)
    assert result["p_value"] == pytest.approx(reference.pvalue, rel=1e-10)


def test_identical_and_constant_differences_need_no_division_by_zero(own_p):
    values = np.array([0.5, 0.0, 1.0, 0.25])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        same = own_p.paired_test(values, values.copy(), bootstrap=200)
        shifted = own_p.paired_test(values + 0.1, values)
    assert same == {"mean_diff": 0.0, "t": 0.0, "p_value": 1.0, "n": 4, "bootstrap_p": 1.0}
    assert shifted["t"] == math.inf and shifted["p_value"] == 0.0
    assert shifted["mean_diff"] == pytest.approx(0.1)


def test_users_are_aligned_by_id_and_must_match(own_p):
    a, b = np.array([0.1, 0.4, 0.2, 0.9]), np.array([0.0, 0.5, 0.1, 0.3])
    in_order = own_p.paired_test(a, b, [1, 2, 3, 4], [1, 2, 3, 4])
    # The same users, b listed in another order: the same pairs.
    shuffled = own_p.paired_test(a, b[[3, 1, 0, 2]], [1, 2, 3, 4], [4, 2, 1, 3])
    assert shuffled == pytest.approx(in_order)
    with pytest.raises(ValueError, match="run a ranked 4 users, run b 3, 3 in common"):
        own_p.paired_test(a, b[:3], [1, 2, 3, 4], [1, 2, 3])
    with pytest.raises(ValueError, match="run a ranked 4 users, run b 4, 3 in common"):
        own_p.paired_test(a, b, [1, 2, 3, 4], [1, 2, 3, 5])
    with pytest.raises(ValueError, match="run a has 4 users, run b 3"):
        own_p.paired_test(a, b[:3])
    with pytest.raises(ValueError, match="at least 2 users"):
        own_p.paired_test([0.1], [0.2])


def test_bootstrap_p_is_reproducible_and_small_for_a_clear_difference(own_p):
    rng = np.random.default_rng(0)
    b = rng.random(300)
    a = b + 0.05 + 0.01 * rng.standard_normal(300)
    first = own_p.paired_test(a, b, bootstrap=2500, seed=1)
    assert first["bootstrap_p"] == own_p.paired_test(a, b, bootstrap=2500, seed=1)["bootstrap_p"]
    assert first["bootstrap_p"] == 0.0 and first["p_value"] < 1e-10
    noise = own_p.paired_test(rng.random(300), rng.random(300), bootstrap=2000, seed=2)
    assert 0.0 < noise["bootstrap_p"] <= 1.0


def test_ndcg_from_ranks(own_p):
    ndcg = own_p.ndcg_from_ranks(np.array([1, 3, 7, 20, 21, 500]))
    assert ndcg == pytest.approx([1.0, 0.5, 1 / 3, 1 / math.log2(21), 0.0, 0.0])
    with pytest.raises(ValueError, match="ranks start at 1"):
        own_p.ndcg_from_ranks(np.array([0, 2]))


def _write(tmp_path, run_id, users, ranks, seed):
    os.makedirs(tmp_path / "ranks", exist_ok=True)
    path = f"ranks/{run_id}.npz"
    np.savez_compressed(tmp_path / path, user_ids=np.array(users, np.int32), ranks=np.array(ranks, np.int32))
    return {"run_id": run_id, "seed": seed, "ranks_file": path}


def test_groups_are_averaged_per_user_over_matched_seeds(own_p, tmp_path):
    users = [2, 5, 9, 11]
    # NDCG@20 of ranks 1, 3, 7, 15 and > 20: 1, 1/2, 1/3, 1/4 and 0.
    a = [
        _write(tmp_path, "a1", users, [1, 3, 7, 30], 1),
        _write(tmp_path, "a2", users, [3, 3, 1, 15], 2),
        _write(tmp_path, "a9", users, [1, 1, 1, 1], 9),  # no seed 9 in group b: left out
    ]
    b = [_write(tmp_path, "b2", users, [7, 30, 15, 1], 2), _write(tmp_path, "b1", users, [1, 7, 3, 30], 1)]
    loaded_users, loaded_ranks = own_p.load_ranks(str(tmp_path), a[0])
    assert loaded_users.tolist() == users and loaded_ranks.tolist() == [1, 3, 7, 30]
    mean_a = np.array([(1 + 0.5) / 2, (0.5 + 0.5) / 2, (1 / 3 + 1) / 2, (0 + 0.25) / 2])
    mean_b = np.array([(1 + 1 / 3) / 2, (1 / 3 + 0) / 2, (0.5 + 0.25) / 2, (0 + 1) / 2])
    got_users, got_mean = own_p.group_user_ndcg(str(tmp_path), a[:2])
    assert got_users.tolist() == users and got_mean == pytest.approx(mean_a)
    result = own_p.compare_groups(str(tmp_path), a, b)
    assert result["seeds"] == [1, 2]
    expected = own_p.paired_test(mean_a, mean_b)
    assert {key: result[key] for key in expected} == pytest.approx(expected)
    assert result["mean_diff"] == pytest.approx((mean_a - mean_b).mean())


def test_group_errors(own_p, tmp_path):
    a = _write(tmp_path, "a1", [1, 2, 3], [1, 2, 3], 1)
    with pytest.raises(ValueError, match="share no seed"):
        own_p.compare_groups(str(tmp_path), [a], [_write(tmp_path, "b2", [1, 2, 3], [1, 2, 3], 2)])
    with pytest.raises(ValueError, match="seed 1 occurs twice"):
        own_p.compare_groups(str(tmp_path), [a, dict(a, run_id="again")], [a])
    other_users = _write(tmp_path, "b1", [1, 2, 4, 5], [1, 2, 3, 4], 1)
    with pytest.raises(ValueError, match="run a ranked 3 users, run b 4, 2 in common"):
        own_p.compare_groups(str(tmp_path), [a], [other_users])
    with pytest.raises(ValueError, match="user sets differ within the group"):
        own_p.group_user_ndcg(str(tmp_path), [a, other_users])
    with pytest.raises(KeyError, match="no ranks_file"):
        own_p.load_ranks(str(tmp_path), {"run_id": "old"})
