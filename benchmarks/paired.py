"""Paired significance tests between benchmark runs, on the per-user test ranks that the runs store.

Every run of ``train_benchmark.py`` writes the test rank of each user's target (1 = best) to an npz file named by
its results record (``ranks_file``, relative to the results file's directory). Two runs on the same prepared data
rank the same users, so their per-user NDCG@20 values pair up by user id, and the paired t-test on the per-user
differences says whether the difference of the two mean NDCG@20 values is larger than the user-to-user spread of the
differences explains.

Usage (from the project root), e.g. two groups of seeds::

    import json
    from paired import compare_groups

    records = [json.loads(line) for line in open("benchmarks/results/results.jsonl")]
    a = [r for r in records if r.get("model") == "difsr" and "ranks_file" in r]
    b = [r for r in records if r.get("model") == "sasrec" and "ranks_file" in r]
    print(compare_groups("benchmarks/results", a, b))

The t distribution's p-value comes from scipy when it is installed, else from the regularized incomplete beta
function computed here (:func:`t_two_sided_p`); only numpy is required.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import numpy as np

try:  # optional: the same p-values, from scipy's implementation
    from scipy import stats as _scipy_stats
except ImportError:  # pragma: no cover - depends on the environment
    _scipy_stats = None


def ndcg_from_ranks(ranks: np.ndarray, k: int = 20) -> np.ndarray:
    """Per-user NDCG@k of a single target at each rank: ``1 / log2(rank + 1)`` if ``rank <= k``, else 0."""
    ranks = np.asarray(ranks, dtype=np.float64)
    if ranks.size and ranks.min() < 1:
        raise ValueError(f"ranks start at 1, got {ranks.min():g}")
    return np.where(ranks <= k, 1.0 / np.log2(ranks + 1.0), 0.0)


def load_ranks(results_dir: str, record: dict) -> tuple[np.ndarray, np.ndarray]:
    """The ``(user_ids, ranks)`` of a results record, read from its ``ranks_file`` under ``results_dir``.

    Raises:
        KeyError: the record has no ``ranks_file`` (a record written before runs stored their ranks).
        ValueError: the file's arrays differ in length or the user ids are not unique and ascending.
    """
    if not record.get("ranks_file"):
        raise KeyError(f"run {record.get('run_id', '?')} has no ranks_file")
    with np.load(os.path.join(results_dir, record["ranks_file"])) as data:
        users = np.asarray(data["user_ids"])
        ranks = np.asarray(data["ranks"])
    if users.shape != ranks.shape or users.ndim != 1:
        raise ValueError(f"{record['ranks_file']}: user_ids {users.shape} and ranks {ranks.shape} differ in shape")
    if users.size > 1 and not np.all(np.diff(users) > 0):
        raise ValueError(f"{record['ranks_file']}: user_ids are not unique and ascending")
    return users, ranks


def _incomplete_beta_fraction(a: float, b: float, x: float, max_terms: int = 100_000, tol: float = 1e-15) -> float:
    """The continued fraction of ``I_x(a, b)``: ``1 / (1 + d1 / (1 + d2 / (1 + ...)))``, by the modified Lentz method.

    With ``d_{2m} = m (b - m) x / ((a + 2m - 1)(a + 2m))`` and
    ``d_{2m+1} = -(a + m)(a + b + m) x / ((a + 2m)(a + 2m + 1))``; it converges fast for ``x < (a + 1) / (a + b + 2)``.
    """
    tiny = 1e-300
    # Lentz: f = b0 + a1 / (b1 + a2 / (b2 + ...)) with b0 = 0, a1 = 1 and every later b = 1, a = d.
    f = tiny
    c = f
    d = 0.0
    for n in range(1, max_terms + 1):
        if n == 1:
            numerator = 1.0
        else:
            j = n - 1  # index of the coefficient d_j
            m = j // 2
            if j % 2 == 0:
                numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
            else:
                numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        d = 1.0 + numerator * d
        d = tiny if abs(d) < tiny else d
        c = 1.0 + numerator / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = c * d
        f *= delta
        if abs(delta - 1.0) < tol:
            return f
    raise ArithmeticError(f"incomplete beta fraction did not converge (a={a}, b={b}, x={x})")


def _log_gamma_ratio(z: float, b: float) -> float:
    """``lgamma(z + b) - lgamma(z)`` for ``z >= 10``, without the cancellation of two huge ``lgamma`` values.

    From Stirling's series ``lgamma(z) = (z - 1/2) log z - z + log(2 pi) / 2 + s(z)`` with
    ``s(z) = 1/(12 z) - 1/(360 z^3) + 1/(1260 z^5) - 1/(1680 z^7)`` (truncation error below 1e-11 at ``z = 10``):
    ``(z + b - 1/2) log(z + b) - (z - 1/2) log z - b = (z - 1/2) log1p(b / z) + b log(z + b) - b``.
    """

    def series(w: float) -> float:
        inv = 1.0 / w
        inv2 = inv * inv
        return inv * (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 / 1680.0)))

    return (z - 0.5) * math.log1p(b / z) + b * math.log(z + b) - b + series(z + b) - series(z)


def _log_beta(a: float, b: float) -> float:
    """``log B(a, b) = lgamma(a) + lgamma(b) - lgamma(a + b)``, accurate when one argument is large."""
    big, small = max(a, b), min(a, b)
    if big >= 10.0:
        return math.lgamma(small) - _log_gamma_ratio(big, small)
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def regularized_incomplete_beta(a: float, b: float, x: float, complement: float | None = None) -> float:
    """``I_x(a, b)``, the beta distribution's CDF at ``x``, for ``a, b > 0`` and ``0 <= x <= 1``.

    ``I_x(a, b) = x^a (1 - x)^b / (a B(a, b)) * F`` with ``F`` the continued fraction of
    :func:`_incomplete_beta_fraction`; above ``(a + 1) / (a + b + 2)`` the symmetry
    ``I_x(a, b) = 1 - I_{1-x}(b, a)`` keeps the fraction in its fast-converging range.

    Args:
        complement: ``1 - x`` when the caller knows it more precisely than ``1 - x`` rounds (``x`` close to 1).
    """
    if a <= 0 or b <= 0:
        raise ValueError(f"a and b must be positive, got a={a}, b={b}")
    if not 0.0 <= x <= 1.0:
        raise ValueError(f"x must lie in [0, 1], got {x}")
    y = 1.0 - x if complement is None else complement
    if x == 0.0 or y == 0.0:
        return 0.0 if x == 0.0 else 1.0
    log_x = math.log1p(-y) if y < 0.5 else math.log(x)
    log_y = math.log1p(-x) if x < 0.5 else math.log(y)
    log_front = a * log_x + b * log_y - _log_beta(a, b)
    if y > (b + 1.0) / (a + b + 2.0):  # x < (a + 1) / (a + b + 2), tested on the more precise of x and 1 - x
        return math.exp(log_front) * _incomplete_beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _incomplete_beta_fraction(b, a, y) / b


LARGE_DF = 1e6
"""Above this many degrees of freedom :func:`t_two_sided_p` uses the expansion in ``1 / df``: the continued fraction
loses about ``df * 1e-16`` of relative precision there, while the expansion's error is of order ``df ** -3``."""


def _t_two_sided_p_large_df(t: float, df: float) -> float:
    """``P(|T| >= |t|)`` from the expansion of the t distribution about the normal in powers of ``1 / df``.

    ``F(t) = Phi(t) - phi(t) (g1(t) / df + g2(t) / df^2 + O(df^-3))`` with ``g1 = (t^3 + t) / 4`` and
    ``g2 = (3 t^7 - 7 t^5 - 5 t^3 - 3 t) / 96`` (obtained by expanding ``(1 + t^2 / df)^(-(df + 1) / 2)`` and its
    normalising constant to second order and integrating).
    """
    t = abs(t)
    density = math.exp(-0.5 * t * t) / math.sqrt(2.0 * math.pi)
    g1 = (t**3 + t) / 4.0
    g2 = (3.0 * t**7 - 7.0 * t**5 - 5.0 * t**3 - 3.0 * t) / 96.0
    return math.erfc(t / math.sqrt(2.0)) + 2.0 * density * (g1 / df + g2 / (df * df))


def t_two_sided_p(t: float, df: float) -> float:
    """Two-sided p-value ``P(|T| >= |t|)`` of Student's t distribution with ``df`` degrees of freedom.

    ``P(|T| >= |t|) = I_{df / (df + t^2)}(df / 2, 1 / 2)`` (:func:`regularized_incomplete_beta`), or for
    ``df > LARGE_DF`` the expansion of :func:`_t_two_sided_p_large_df`; scipy's survival function when scipy is
    installed.
    """
    if df <= 0:
        raise ValueError(f"degrees of freedom must be positive, got {df}")
    if math.isnan(t):
        return math.nan
    if math.isinf(t):
        return 0.0
    if t == 0.0:
        return 1.0
    if _scipy_stats is not None:
        return float(2.0 * _scipy_stats.t.sf(abs(t), df))
    if df > LARGE_DF:
        return _t_two_sided_p_large_df(t, df)
    return regularized_incomplete_beta(df / 2.0, 0.5, df / (df + t * t), complement=t * t / (df + t * t))


def _align(
    values_a: np.ndarray, values_b: np.ndarray, users_a: np.ndarray | None, users_b: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """The two value arrays in a common user order; ValueError when the runs ranked different users."""
    if (users_a is None) != (users_b is None):
        raise ValueError("give the user ids of both runs or of neither")
    if users_a is None:
        if values_a.shape != values_b.shape:
            raise ValueError(f"user sets differ: run a has {values_a.size} users, run b {values_b.size}")
        return values_a, values_b
    users_a, users_b = np.asarray(users_a), np.asarray(users_b)
    if users_a.shape != values_a.shape or users_b.shape != values_b.shape:
        raise ValueError("each run needs one user id per value")
    common = np.intersect1d(users_a, users_b)
    if len(np.unique(users_a)) != users_a.size or len(np.unique(users_b)) != users_b.size:
        raise ValueError("user ids repeat within a run")
    if common.size != users_a.size or common.size != users_b.size:
        raise ValueError(
            f"user sets differ: run a ranked {users_a.size} users, run b {users_b.size}, {common.size} in common"
        )
    return values_a[np.argsort(users_a, kind="stable")], values_b[np.argsort(users_b, kind="stable")]


def paired_test(
    ndcg_a: Sequence[float] | np.ndarray,
    ndcg_b: Sequence[float] | np.ndarray,
    users_a: Sequence[int] | np.ndarray | None = None,
    users_b: Sequence[int] | np.ndarray | None = None,
    *,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict:
    """Paired two-sided t-test of the per-user values of run a against run b (NDCG@20 in the benchmarks).

    With ``users_a`` and ``users_b`` the values are aligned by user id, and the two runs must have ranked the same
    users; without them the arrays are taken as already aligned. The statistic is
    ``t = mean(d) / (std(d, ddof=1) / sqrt(n))`` of the differences ``d = a - b``, with ``n - 1`` degrees of freedom.
    When every difference is equal the standard error is 0: ``t = 0`` and ``p = 1`` if they are all 0 (identical
    runs), else ``t = ±inf`` and ``p = 0``.

    Args:
        bootstrap: if positive, also a paired bootstrap p-value from this many resamples of the users:
            the share of resampled mean differences, centred on the observed one, at least as far from 0 as the
            observed mean difference (``bootstrap_p``).
        seed: seed of the bootstrap's resampling.

    Returns:
        ``{"mean_diff", "t", "p_value", "n"}`` (``mean_diff`` = mean of a - b), plus ``"bootstrap_p"`` when asked.

    Raises:
        ValueError: the user sets differ (the message names both counts and the common count), or fewer than 2 users.
    """
    a = np.asarray(ndcg_a, dtype=np.float64)
    b = np.asarray(ndcg_b, dtype=np.float64)
    if a.ndim != 1 or b.ndim != 1:
        raise ValueError("per-user values must be one-dimensional")
    a, b = _align(a, b, users_a, users_b)
    n = int(a.size)
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 users, got {n}")
    diffs = a - b
    mean_diff = float(diffs.mean())
    spread = float(diffs.std(ddof=1))
    if spread == 0.0 or spread < 1e-14 * max(1.0, abs(mean_diff)):
        # Constant differences (rounding can leave a tiny spread): no variance to test against.
        t = 0.0 if mean_diff == 0.0 else math.copysign(math.inf, mean_diff)
    else:
        t = mean_diff / (spread / math.sqrt(n))
    result = {"mean_diff": mean_diff, "t": float(t), "p_value": t_two_sided_p(t, n - 1), "n": n}
    if bootstrap > 0:
        rng = np.random.default_rng(seed)
        means = np.empty(bootstrap)
        for start in range(0, bootstrap, 1000):  # resample in chunks to bound the memory
            size = min(1000, bootstrap - start)
            means[start : start + size] = diffs[rng.integers(0, n, size=(size, n))].mean(axis=1)
        result["bootstrap_p"] = float(np.mean(np.abs(means - mean_diff) >= abs(mean_diff)))
    return result


def _by_seed(records: Sequence[dict], name: str) -> dict:
    """``{seed: record}`` of a group; ValueError if a record lacks its seed or a seed repeats."""
    seeds: dict = {}
    for record in records:
        if record.get("seed") is None:
            raise ValueError(f"group {name}: run {record.get('run_id', '?')} has no seed")
        if record["seed"] in seeds:
            raise ValueError(f"group {name}: seed {record['seed']} occurs twice")
        seeds[record["seed"]] = record
    return seeds


def group_user_ndcg(results_dir: str, records: Sequence[dict], k: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """``(user_ids, ndcg)``: each user's NDCG@k averaged over the runs (seeds) of one group.

    Raises:
        ValueError: no runs, or the runs ranked different users.
    """
    if not records:
        raise ValueError("a group needs at least one run")
    users = None
    total = None
    for record in records:
        run_users, ranks = load_ranks(results_dir, record)
        if users is None:
            users, total = run_users, ndcg_from_ranks(ranks, k)
            continue
        if run_users.shape != users.shape or not np.array_equal(run_users, users):
            common = np.intersect1d(users, run_users).size
            raise ValueError(
                f"user sets differ within the group: {users.size} users, then {run_users.size} in run "
                f"{record.get('run_id', '?')}, {common} in common"
            )
        total = total + ndcg_from_ranks(ranks, k)
    return users, total / len(records)


def compare_groups(
    results_dir: str,
    records_a: Sequence[dict],
    records_b: Sequence[dict],
    *,
    k: int = 20,
    bootstrap: int = 0,
    seed: int = 0,
) -> dict:
    """Paired test of group a against group b (e.g. one tuned config of two models, several seeds each).

    Runs are matched by seed: only the seeds that both groups ran are used, and each group's runs of those seeds
    are reduced to one value per user, the user's NDCG@k averaged over the seeds. The paired t-test
    (:func:`paired_test`) then runs on these per-user means, users being the unit of the test: the question is
    whether model a ranks the targets of the (held-out) users better than model b, and the users are the sample of
    that population; averaging over the seeds first removes most of the training noise from each user's value, and
    the test is conditional on the seeds run (the seed-to-seed spread of the means is shown beside it, not tested).
    Matching the seeds makes both groups average over the same initialisations and data orders.

    Returns:
        :func:`paired_test`'s dict (``mean_diff`` = mean NDCG@k of a minus that of b) plus ``"seeds"``, the sorted
        seeds used.

    Raises:
        ValueError: the groups share no seed, a seed repeats within a group, or the runs ranked different users.
    """
    seeds_a, seeds_b = _by_seed(records_a, "a"), _by_seed(records_b, "b")
    common = sorted(set(seeds_a) & set(seeds_b), key=repr)
    if not common:
        raise ValueError(f"the groups share no seed: a ran {sorted(seeds_a, key=repr)}, b {sorted(seeds_b, key=repr)}")
    users_a, ndcg_a = group_user_ndcg(results_dir, [seeds_a[s] for s in common], k)
    users_b, ndcg_b = group_user_ndcg(results_dir, [seeds_b[s] for s in common], k)
    result = paired_test(ndcg_a, ndcg_b, users_a, users_b, bootstrap=bootstrap, seed=seed)
    result["seeds"] = common
    return result
