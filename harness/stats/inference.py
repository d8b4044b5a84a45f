"""Statistics for seed sweeps: is an arm's test loss really different from the baseline's?

Pure functions over pandas objects and NumPy arrays (no I/O, no printing), in the small
functional style of rliable. Every number comes from a named, standard procedure:

Sign convention
    ``diff = mean(arm) - mean(baseline)`` on test loss. Negative = lower loss = better.

Tests (chosen per arm, stated in the ``test`` column)
    * **Paired** (the default design, arms share seeds): when the arm and the baseline share
      at least 2 seeds, and the shared seeds are at least half of the smaller arm's runs, the
      analysis uses the per-seed differences ``arm[s] - baseline[s]`` of the shared seeds:
      paired t-test (``scipy.stats.ttest_rel``) and its t interval; Wilcoxon signed-rank
      (``scipy.stats.wilcoxon``: exact for n <= 50 without ties or zero differences, an exact
      permutation distribution for n <= 13 with ties, otherwise the normal approximation) as a
      robustness column; a BCa bootstrap interval of the mean difference
      (``scipy.stats.bootstrap(method="BCa")`` with a fixed seed, so reports are deterministic).
      Effect size: Cohen's d_z = mean difference / sd of the differences.
    * **Welch** (unpaired fallback): Welch's t-test (``scipy.stats.ttest_ind(equal_var=False)``)
      and its Welch-Satterthwaite t interval; Mann-Whitney U (``scipy.stats.mannwhitneyu``) as
      the robustness column; a two-sample BCa bootstrap interval of the difference of means.
      Effect size: Hedges' g (Cohen's d with the pooled sd, small-sample corrected).

Multiple comparisons
    Holm's step-down adjustment (the numbers of ``statsmodels multipletests(method="holm")``,
    computed by :func:`holm`, vectorised; see its docstring for why) across all arms
    compared in one report (one sweep), applied to the t-test p-values (``p_holm``) and, when a
    margin is given, separately to the TOST p-values (``p_tost_holm``). Arms whose p-value
    cannot be computed are left out of the family.

Equivalence
    TOST (two one-sided t-tests, ``statsmodels ttost_paired`` / ``ttost_ind(usevar="unequal")``)
    against ``[-margin, +margin]`` when a margin is given.

Verdict rules (first match wins)
    1. ``insufficient data``: the t-test p-value cannot be computed (fewer than 2 runs, or
       zero variance); the reason is in ``notes``.
    2. ``better``: ``p_holm < alpha`` and ``diff < 0``.
    3. ``worse``: ``p_holm < alpha`` and ``diff > 0``.
    4. ``equivalent within margin``: a margin was given and ``p_tost_holm < alpha``.
    5. ``no detectable difference``: everything else. This is NOT evidence of no effect: read
       the minimum detectable difference next to it.

Power (``statsmodels.stats.power``; two-sided, 80% power by default, at Holm's strictest level
alpha / m for the m arms compared, the level the verdict must reach for its smallest p)
    * ``mdd``: the smallest true difference the current design detects with that power, at the
      observed seed noise (paired: sd of the per-seed differences, one-sample t power; Welch:
      pooled sd, two-sample t power with the actual group sizes). The observed sd is itself an
      estimate from n seeds: at the true sd the power is as stated (checked by simulation in
      tests/test_stats.py); at an sd that happens to be low the figure is optimistic.
    * ``seeds_needed``: the number of seeds (pairs; for Welch, runs per arm) needed to detect a
      true difference as large as the observed one with that power, at the same level.

Known limitation, measured (tests/test_stats.py)
    The BCa interval is too narrow with few seeds: a nominal 95% interval covered about 85%
    of true differences at n = 5 and about 91% at n = 30 on normal data, while the t interval
    covered 95%. The t interval is therefore the primary interval; BCa is a robustness column.
    With n <= 5 pairs the exact two-sided Wilcoxon p-value cannot go below 2 / 2**n (0.0625
    at n = 5), so it can never be significant at alpha 0.05; ``notes`` says so.

Degenerate input never raises: a quantity that cannot be computed is NaN and ``notes`` says why.

One module, longer than most and much of it the procedures' documentation, on purpose: every
function answers the one question above for one arm against the baseline (test, interval, effect
size, power, verdict), compare_arms assembles them, and every formula sits beside the text that
states it (the report's Methods cite them here). Other families of statistics have modules of
their own: sequential tests harness.stats.sequential, noise components harness.stats.noise,
pairing's gain harness.stats.pairing.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import scipy.stats as st
from scipy.optimize import brentq
from statsmodels.stats.power import TTestIndPower, TTestPower
from statsmodels.stats.weightstats import ttost_ind, ttost_paired

BETTER = "better"
WORSE = "worse"
EQUIVALENT = "equivalent within margin"
NO_DIFFERENCE = "no detectable difference"
INSUFFICIENT = "insufficient data"
REFERENCE = "baseline"  # the verdict of the row the others are compared with: a role, whatever its arm is named
VERDICTS = (BETTER, WORSE, EQUIVALENT, NO_DIFFERENCE, INSUFFICIENT)

PAIRED_T = "paired t"
WELCH_T = "Welch t"
NO_TEST = "none"

DEFAULT_RESAMPLES = 2000
DEFAULT_BOOT_SEED = 0

NaN = float("nan")

__all__ = [
    "BETTER", "WORSE", "EQUIVALENT", "NO_DIFFERENCE", "INSUFFICIENT", "REFERENCE", "VERDICTS",
    "PAIRED_T", "WELCH_T", "NO_TEST", "Comparison", "Descriptive", "describe", "paired_t",
    "welch_t", "paired_comparison", "welch_comparison", "compare", "compare_arms", "holm",
    "bca_interval", "wilcoxon_signed_rank", "mann_whitney", "cohens_dz", "hedges_g",
    "tost_paired", "tost_welch", "min_detectable_difference", "seeds_needed", "verdict",
    "noise_floor", "is_degenerate",
]


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _quiet():
    """No NumPy/SciPy/statsmodels warnings leak out of a computation."""
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore")
        yield


def as_float(x) -> float:
    """A plain Python float (NaN for anything not convertible)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return NaN


def _clean(x) -> np.ndarray:
    """1-D float array without NaN/inf."""
    a = np.asarray(x, dtype=float).ravel()
    return a[np.isfinite(a)]


def is_degenerate(x: np.ndarray) -> bool:
    """True if ``x`` has (numerically) zero spread, e.g. identical values.

    A relative tolerance is used because the mean of identical floats is not always exactly
    equal to them, which makes the computed sd a tiny non-zero number.
    """
    a = np.asarray(x, dtype=float)
    if a.size < 2:
        return True
    scale = max(1.0, float(np.max(np.abs(a))))
    return float(np.ptp(a)) <= 1e-12 * scale


# --------------------------------------------------------------------------- descriptive


@dataclass(frozen=True)
class Descriptive:
    n: int
    mean: float
    sd: float
    sem: float


def describe(x) -> Descriptive:
    """n, mean, sample standard deviation (ddof=1) and standard error of finite values."""
    a = _clean(x)
    n = int(a.size)
    mean = float(a.mean()) if n else NaN
    sd = float(a.std(ddof=1)) if n >= 2 else NaN
    sem = sd / math.sqrt(n) if n >= 2 else NaN
    return Descriptive(n, mean, sd, sem)


# --------------------------------------------------------------------------- vectorised cores


def paired_t(baseline, arm, alpha: float = 0.05, axis: int = -1) -> dict[str, np.ndarray]:
    """Paired t-test and t interval of ``arm - baseline`` along ``axis`` (vectorised).

    Returns arrays: n, diff (mean difference), sd (of the differences), t, df, p, ci_low,
    ci_high (the ``1 - alpha`` two-sided interval). Zero-variance rows give NaN t/p/interval.
    """
    b = np.asarray(baseline, dtype=float)
    a = np.asarray(arm, dtype=float)
    d = np.moveaxis(a - b, axis, -1)
    n = d.shape[-1]
    with _quiet():
        res = st.ttest_rel(np.moveaxis(a, axis, -1), np.moveaxis(b, axis, -1), axis=-1)
        ci = res.confidence_interval(1.0 - alpha)
        diff = d.mean(axis=-1)
        sd = d.std(axis=-1, ddof=1) if n >= 2 else np.full(diff.shape, np.nan)
    scale = np.maximum(1.0, np.max(np.abs(d), axis=-1)) if n else np.ones(diff.shape)
    zero = ~(np.ptp(d, axis=-1) > 1e-12 * scale) if n else np.ones(diff.shape, bool)
    out = {
        "n": np.full(diff.shape, n),
        "diff": diff,
        "sd": sd,
        "t": np.where(zero, np.nan, res.statistic),
        "df": np.asarray(res.df, dtype=float) + np.zeros(diff.shape),
        "p": np.where(zero, np.nan, res.pvalue),
        "ci_low": np.where(zero, np.nan, ci.low),
        "ci_high": np.where(zero, np.nan, ci.high),
    }
    return out


def welch_t(baseline, arm, alpha: float = 0.05, axis: int = -1) -> dict[str, np.ndarray]:
    """Welch's t-test and Welch-Satterthwaite interval of ``mean(arm) - mean(baseline)``.

    Vectorised along ``axis``; returns arrays n_baseline, n_arm, diff, t, df, p, ci_low, ci_high.
    """
    b = np.moveaxis(np.asarray(baseline, dtype=float), axis, -1)
    a = np.moveaxis(np.asarray(arm, dtype=float), axis, -1)
    with _quiet():
        res = st.ttest_ind(a, b, equal_var=False, axis=-1)
        ci = res.confidence_interval(1.0 - alpha)
        diff = a.mean(axis=-1) - b.mean(axis=-1)
        va = a.var(axis=-1, ddof=1)
        vb = b.var(axis=-1, ddof=1)
    scale = np.maximum(1.0, np.maximum(np.max(np.abs(a), axis=-1, initial=0.0),
                                       np.max(np.abs(b), axis=-1, initial=0.0)))
    zero = ~(np.sqrt(va + vb) > 1e-12 * scale)
    return {
        "n_baseline": np.full(diff.shape, b.shape[-1]),
        "n_arm": np.full(diff.shape, a.shape[-1]),
        "diff": diff,
        "t": np.where(zero, np.nan, res.statistic),
        "df": np.where(zero, np.nan, res.df),
        "p": np.where(zero, np.nan, res.pvalue),
        "ci_low": np.where(zero, np.nan, ci.low),
        "ci_high": np.where(zero, np.nan, ci.high),
    }


def holm(pvalues, alpha: float = 0.05) -> np.ndarray:
    """Holm step-down adjusted p-values, identical to ``multipletests(p, method="holm")[1]``.

    Sorted ascending, p_(i) is multiplied by (m - i + 1), a running maximum is taken and the
    result is capped at 1. NaN p-values keep NaN and are left out of the family (m counts the
    finite ones). Vectorised: an N-D input is adjusted along its last axis, each row one
    family (the simulations adjust thousands of sweeps in one call). Implemented directly
    rather than by calling statsmodels because statsmodels' Holm branch runs ``gc.collect()``
    on every call (tens of milliseconds in a large process); the unit tests check that both
    agree. ``alpha`` does not change adjusted p-values; it is accepted for symmetry.
    """
    p = np.asarray(pvalues, dtype=float)
    if p.ndim == 0:
        p = p[None]
    if p.size == 0:
        return p.copy()
    finite = np.isfinite(p)
    key = np.where(finite, p, np.inf)
    order = np.argsort(key, axis=-1, kind="stable")
    srt = np.take_along_axis(np.where(finite, p, np.nan), order, axis=-1)
    m = finite.sum(axis=-1, keepdims=True)
    rank = np.arange(p.shape[-1])
    mult = (m - rank).astype(float)
    adj = np.where(np.isfinite(srt), srt * mult, -np.inf)
    adj = np.minimum(np.maximum.accumulate(adj, axis=-1), 1.0)
    adj = np.where(np.isfinite(srt), adj, np.nan)
    out = np.empty_like(adj)
    np.put_along_axis(out, order, adj, axis=-1)
    return out


# --------------------------------------------------------------------------- robustness / bootstrap


def wilcoxon_signed_rank(diffs) -> tuple[float, str, str | None]:
    """Two-sided Wilcoxon signed-rank test of the per-seed differences.

    Returns (p, method description, note or None). Zero differences are dropped (Wilcoxon's
    convention); scipy's ``method="auto"`` picks the exact distribution for small n.
    """
    d = _clean(diffs)
    nz = d[d != 0]
    if nz.size < 1:
        return NaN, "Wilcoxon signed-rank", "Wilcoxon needs at least one non-zero difference"
    ties = np.unique(np.abs(nz)).size < nz.size
    zeros = nz.size < d.size
    if d.size > 50:
        method = "Wilcoxon signed-rank, normal approximation"
    elif not (ties or zeros):
        method = "Wilcoxon signed-rank, exact"
    elif d.size <= 13:
        method = "Wilcoxon signed-rank, exact permutation (ties/zeros)"
    else:
        method = "Wilcoxon signed-rank, normal approximation (ties/zeros)"
    with _quiet():
        try:
            p = as_float(st.wilcoxon(d, method="auto").pvalue)
        except (ValueError, FloatingPointError) as exc:  # pragma: no cover - defensive
            return NaN, method, f"Wilcoxon failed: {exc}"
    return p, method, None


def mann_whitney(baseline, arm) -> tuple[float, str, str | None]:
    """Two-sided Mann-Whitney U test (scipy ``method="auto"``). Returns (p, method, note)."""
    b, a = _clean(baseline), _clean(arm)
    if b.size < 1 or a.size < 1:
        return NaN, "Mann-Whitney U", "Mann-Whitney U needs runs in both arms"
    with _quiet():
        try:
            p = as_float(st.mannwhitneyu(a, b, alternative="two-sided", method="auto").pvalue)
        except (ValueError, FloatingPointError) as exc:  # pragma: no cover - defensive
            return NaN, "Mann-Whitney U", f"Mann-Whitney U failed: {exc}"
    return p, "Mann-Whitney U", None


def _mean_stat(x, axis=-1):
    return np.mean(x, axis=axis)


def _diff_of_means(b, a, axis=-1):
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def bca_interval(
    samples: Sequence,
    statistic=None,
    *,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_RESAMPLES,
    seed: int = DEFAULT_BOOT_SEED,
) -> tuple[float, float, str | None]:
    """BCa bootstrap interval via ``scipy.stats.bootstrap(method="BCa")``, deterministic.

    ``samples`` is a tuple of 1-D samples: one (per-seed differences; default statistic the
    mean) or two (baseline, arm; default statistic ``mean(arm) - mean(baseline)``, resampled
    independently). Returns (low, high, note); NaNs with a note when it cannot be computed.
    """
    data = tuple(_clean(s) for s in samples)
    if statistic is None:
        statistic = _mean_stat if len(data) == 1 else _diff_of_means
    if n_resamples <= 0:
        return NaN, NaN, "bootstrap skipped (0 resamples)"
    if any(s.size < 2 for s in data):
        return NaN, NaN, "bootstrap needs at least 2 values per sample"
    if all(is_degenerate(s) for s in data):
        return NaN, NaN, "bootstrap undefined: all values identical"
    biggest = max(s.size for s in data)
    batch = max(1, int(4_000_000 // max(biggest, 1)))
    with _quiet():
        try:
            res = st.bootstrap(
                data, statistic, n_resamples=int(n_resamples), confidence_level=confidence,
                method="BCa", vectorized=True, axis=-1, batch=batch,
                rng=np.random.default_rng(seed),
            )
        except (ValueError, FloatingPointError, ZeroDivisionError) as exc:
            return NaN, NaN, f"bootstrap failed: {exc}"
    lo, hi = as_float(res.confidence_interval.low), as_float(res.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return NaN, NaN, "BCa interval undefined for these data (degenerate bootstrap distribution)"
    return lo, hi, None


# --------------------------------------------------------------------------- effect sizes


def cohens_dz(diffs) -> float:
    """Cohen's d_z for paired data: mean of the differences / their sd (ddof=1)."""
    d = _clean(diffs)
    if d.size < 2 or is_degenerate(d):
        return NaN
    return float(d.mean() / d.std(ddof=1))


def hedges_g(baseline, arm) -> float:
    """Hedges' g of ``arm - baseline``: Cohen's d with the pooled sd times J = 1 - 3/(4 df - 1)."""
    b, a = _clean(baseline), _clean(arm)
    n1, n2 = b.size, a.size
    if n1 < 2 or n2 < 2:
        return NaN
    df = n1 + n2 - 2
    sp = math.sqrt(((n1 - 1) * b.var(ddof=1) + (n2 - 1) * a.var(ddof=1)) / df)
    if not sp > 1e-12 * max(1.0, float(np.max(np.abs(np.r_[a, b])))):
        return NaN
    return float((a.mean() - b.mean()) / sp * (1.0 - 3.0 / (4.0 * df - 1.0)))


# --------------------------------------------------------------------------- equivalence


def tost_paired(baseline, arm, margin: float) -> float:
    """TOST p-value that the mean paired difference ``arm - baseline`` lies in (-margin, margin)."""
    b, a = np.asarray(baseline, float), np.asarray(arm, float)
    if b.size < 2 or not margin or margin <= 0 or is_degenerate(a - b):
        return NaN
    with _quiet():
        return as_float(ttost_paired(a, b, -margin, margin)[0])


def tost_welch(baseline, arm, margin: float) -> float:
    """TOST p-value (Welch variances) that mean(arm) - mean(baseline) is in (-margin, margin)."""
    b, a = _clean(baseline), _clean(arm)
    if b.size < 2 or a.size < 2 or not margin or margin <= 0:
        return NaN
    if is_degenerate(a) and is_degenerate(b):
        return NaN
    with _quiet():
        return as_float(ttost_ind(a, b, -margin, margin, usevar="unequal")[0])


# --------------------------------------------------------------------------- power


def _t_power(d: float, df: float, nc_per_d: float, alpha: float) -> float:
    """Two-sided t-test power from the noncentral t (fallback when statsmodels gives NaN)."""
    crit = st.t.isf(alpha / 2, df)
    nc = abs(d) * nc_per_d
    upper = as_float(st.nct.sf(crit, df, nc))
    if not math.isfinite(upper):
        upper = 1.0 - as_float(st.nct.cdf(crit, df, nc))
    lower = as_float(st.nct.cdf(-crit, df, nc))
    if not math.isfinite(lower):  # the far tail, negligible next to the upper one
        lower = 0.0
    return upper + lower


def _power_fn(paired: bool, n: float, alpha: float, ratio: float = 1.0):
    """power(effect size) of a two-sided t-test: statsmodels, scipy noncentral t as fallback."""
    if paired:
        eng = TTestPower()
        df, k = n - 1, math.sqrt(n)

        def sm(d):
            return as_float(eng.power(effect_size=d, nobs=n, alpha=alpha, alternative="two-sided"))
    else:
        eng = TTestIndPower()
        n2 = n * ratio
        df, k = n + n2 - 2, math.sqrt(n * n2 / (n + n2))

        def sm(d):
            return as_float(eng.power(effect_size=d, nobs1=n, alpha=alpha, ratio=ratio,
                                alternative="two-sided"))

    def f(d):
        p = sm(d)
        if not math.isfinite(p):
            p = _t_power(d, df, k, alpha)
        if not math.isfinite(p) and d * k > 50:  # far beyond any critical value
            p = 1.0
        return p

    return f


def min_detectable_difference(
    sd: float, n: int, alpha: float = 0.05, power: float = 0.8, *, paired: bool = True,
    n_arm: int | None = None,
) -> float:
    """Smallest |true difference| detected with probability ``power`` by a two-sided t-test.

    Paired (default): ``n`` pairs, ``sd`` = sd of the per-seed differences (one-sample t power).
    Unpaired: ``n`` baseline runs and ``n_arm`` arm runs (default ``n``), ``sd`` = pooled sd.
    Uses statsmodels' power functions, solved for the effect size with Brent's method (more
    robust than ``solve_power`` for tiny n). NaN when sd or n make it undefined.
    """
    sd = as_float(sd)
    if not (math.isfinite(sd) and sd > 0) or n is None or n < 2:
        return NaN
    if not paired and (n_arm if n_arm is not None else n) < 2:
        return NaN
    ratio = 1.0 if (paired or n_arm is None) else n_arm / n
    with _quiet():
        f = _power_fn(paired, n, alpha, ratio)
        hi = 1.0
        while f(hi) < power:
            hi *= 2.0
            if hi > 1e6:
                return NaN
        try:
            d = brentq(lambda x: f(x) - power, 1e-12, hi, xtol=1e-10, rtol=1e-9)
        except ValueError:
            return NaN
    return float(d * sd)


def seeds_needed(
    diff: float, sd: float, alpha: float = 0.05, power: float = 0.8, *, paired: bool = True,
    max_n: float = 1e9,
) -> float:
    """Seeds (pairs; for unpaired designs, runs per arm) for a two-sided t-test to detect a
    true difference ``diff`` with probability ``power`` at noise ``sd``.

    The smallest integer n >= 2 whose power reaches the target (statsmodels power functions).
    inf when ``diff`` is 0 or more than ``max_n`` seeds would be needed; NaN if sd is unusable.
    """
    diff, sd = abs(as_float(diff)), as_float(sd)
    if not (math.isfinite(sd) and sd > 0) or not math.isfinite(diff):
        return NaN
    if diff == 0:
        return math.inf
    d = diff / sd
    with _quiet():
        pw = lambda n: _power_fn(paired, n, alpha)(d)  # noqa: E731
        if pw(2) >= power:
            return 2.0
        # Normal-approximation start, then bracket the root by doubling.
        z = st.norm.ppf(1 - alpha / 2) + st.norm.ppf(power)
        approx = (z / d) ** 2 * (1 if paired else 2)
        if approx > max_n:
            return math.inf
        lo, hi = 2.0, max(4.0, approx + 2.0)
        while True:
            ph = pw(hi)
            if not math.isfinite(ph):  # numerical trouble far out: use the approximation
                return float(math.ceil(approx))
            if ph >= power:
                break
            lo, hi = hi, hi * 2.0
            if hi > max_n:
                return math.inf
        try:
            n = brentq(lambda x: pw(x) - power, lo, hi, xtol=1e-3, rtol=1e-7)
        except ValueError:
            return float(math.ceil(approx))
        k = max(2, math.ceil(n - 1e-9))
        while pw(k) < power:  # guard against root-finding tolerance
            k += 1
        while k > 2 and pw(k - 1) >= power:
            k -= 1
    return float(k)


# --------------------------------------------------------------------------- one comparison


@dataclass
class Comparison:
    """Everything the report says about one arm against the baseline (NaN = not computable)."""

    arm: str
    test: str = NO_TEST
    n_baseline: int = 0
    n: int = 0
    n_pairs: int = 0
    diff: float = NaN
    sd_diff: float = NaN
    ci_low: float = NaN
    ci_high: float = NaN
    t: float = NaN
    df: float = NaN
    p: float = NaN
    robust_test: str = ""
    p_robust: float = NaN
    boot_low: float = NaN
    boot_high: float = NaN
    effect_size: float = NaN
    effect_size_name: str = ""
    mdd: float = NaN
    seeds_needed: float = NaN
    p_tost: float = NaN
    outlier_seeds: list[int] = field(default_factory=list)  # paired differences far from the rest (outlying_seeds)
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)


OUTLIER_LEVEL = 0.05  # chance, per arm, that normal paired differences flag any seed (exact; simulated in tests)
OUTLIER_MIN_PAIRS = 4  # a seed is judged against at least 3 others


def outlying_seeds(diffs: pd.Series, level: float = OUTLIER_LEVEL) -> list[tuple[int, float]]:
    """Seeds whose paired difference lies far from the others': each difference against the mean
    and sd of the other n - 1 (its externally studentized residual, t with n - 2 degrees of
    freedom under normal differences), Bonferroni over the n seeds. So normal differences flag a
    seed with probability `level` per arm, and a loss spike of 10 sd in one of 5 seeds is flagged
    about 9 times in 10. [(seed, Bonferroni p)], most extreme first; [] below OUTLIER_MIN_PAIRS."""
    d = pd.Series(diffs, dtype=float).dropna()
    n = len(d)
    if n < OUTLIER_MIN_PAIRS:
        return []
    values = d.to_numpy()
    found = []
    for i, seed in enumerate(d.index):
        others = np.delete(values, i)
        sd = float(np.std(others, ddof=1))
        if not sd > 0:
            continue
        t_stat = (values[i] - others.mean()) / (sd * math.sqrt(1 + 1 / (n - 1)))
        p_adj = min(1.0, n * 2 * float(st.t.sf(abs(t_stat), n - 2)))
        if p_adj < level:
            found.append((int(seed), p_adj))
    return sorted(found, key=lambda sp: sp[1])


def outlier_note(flagged: list[tuple[int, float]], p_t: float, p_robust: float, alpha: float) -> str:
    """What a report says of seeds flagged by outlying_seeds: which, how far, and the robust check."""
    seeds = ", ".join(f"{s} (p = {v:.2g}, Bonferroni)" for s, v in flagged)
    disagree = (p_t < alpha) != (p_robust < alpha) if np.isfinite(p_t) and np.isfinite(p_robust) else False
    return (f"outlying seed{'s' if len(flagged) > 1 else ''} {seeds}: a paired difference far from the others' (a "
            "loss spike in one run) can decide a t-test alone; the Wilcoxon signed-rank test, which it moves "
            f"less, gives p = {p_robust:.3g} against the t-test's {p_t:.3g}"
            + ("; the two disagree at alpha, so this verdict rests on that seed" if disagree else ""))


def paired_comparison(
    baseline: pd.Series, arm: pd.Series, *, alpha: float = 0.05, margin: float | None = None,
    power: float = 0.8, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_BOOT_SEED,
    name: str = "arm", arms_compared: int = 1,
) -> Comparison:
    """Paired comparison on the seeds both Series (indexed by seed) share; its power figures at
    Holm's strictest level over ``arms_compared`` arms."""
    b = pd.Series(baseline, dtype=float).dropna()
    a = pd.Series(arm, dtype=float).dropna()
    common = b.index.intersection(a.index)
    b_, a_ = b.loc[common].to_numpy(), a.loc[common].to_numpy()
    c = Comparison(arm=name, test=PAIRED_T, n_baseline=len(b), n=len(a), n_pairs=len(common),
                   effect_size_name="Cohen's d_z")
    unpaired = (len(a) - len(common)) + (len(b) - len(common))
    if unpaired:
        c.notes.append(f"{unpaired} run(s) without a partner seed are not in the paired test")
    if len(common) < 2:
        c.notes.append(f"paired test needs at least 2 shared seeds, found {len(common)}")
        if len(common):
            c.diff = float(np.mean(a_ - b_))
        return c
    d = a_ - b_
    r = {k: float(v) for k, v in paired_t(b_, a_, alpha).items()}
    c.diff, c.sd_diff, c.t, c.df, c.p = r["diff"], r["sd"], r["t"], r["df"], r["p"]
    c.ci_low, c.ci_high = r["ci_low"], r["ci_high"]
    if is_degenerate(d):
        c.notes.append("per-seed differences are all identical (zero variance): t-test, "
                       "interval and effect size undefined")
    c.p_robust, c.robust_test, note = wilcoxon_signed_rank(d)
    if note:
        c.notes.append(note)
    flagged = outlying_seeds(pd.Series(d, index=common))
    if flagged:
        c.outlier_seeds = [s for s, _ in flagged]
        c.notes.append(outlier_note(flagged, c.p, c.p_robust, alpha))
    floor = 2.0 ** (1 - len(d))
    if floor >= alpha:
        c.notes.append(f"with {len(d)} pairs the two-sided Wilcoxon p-value cannot go below "
                       f"{floor:.4g}, so it can never reach alpha {alpha:g}")
    c.boot_low, c.boot_high, note = bca_interval((d,), confidence=1 - alpha,
                                                 n_resamples=n_resamples, seed=seed)
    if note and n_resamples > 0:
        c.notes.append(note)
    c.effect_size = cohens_dz(d)
    c.mdd = min_detectable_difference(c.sd_diff, len(d), alpha / arms_compared, power, paired=True)
    c.seeds_needed = seeds_needed(c.diff, c.sd_diff, alpha / arms_compared, power, paired=True)
    if margin:
        c.p_tost = tost_paired(b_, a_, margin)
    return c


def welch_comparison(
    baseline, arm, *, alpha: float = 0.05, margin: float | None = None, power: float = 0.8,
    n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_BOOT_SEED, name: str = "arm",
    arms_compared: int = 1,
) -> Comparison:
    """Unpaired comparison: Welch t, Mann-Whitney U, two-sample BCa, Hedges' g; power figures at
    Holm's strictest level over ``arms_compared`` arms."""
    b, a = _clean(baseline), _clean(arm)
    c = Comparison(arm=name, test=WELCH_T, n_baseline=int(b.size), n=int(a.size),
                   effect_size_name="Hedges' g", robust_test="Mann-Whitney U")
    if b.size and a.size:
        c.diff = float(a.mean() - b.mean())
    if b.size < 2 or a.size < 2:
        c.notes.append(f"Welch test needs at least 2 runs per arm (baseline {b.size}, "
                       f"arm {a.size})")
        return c
    r = {k: float(v) for k, v in welch_t(b, a, alpha).items()}
    c.t, c.df, c.p, c.ci_low, c.ci_high = r["t"], r["df"], r["p"], r["ci_low"], r["ci_high"]
    if is_degenerate(a) and is_degenerate(b):
        c.notes.append("both arms have zero variance: Welch test and interval undefined")
    c.p_robust, c.robust_test, note = mann_whitney(b, a)
    if note:
        c.notes.append(note)
    c.boot_low, c.boot_high, note = bca_interval((b, a), confidence=1 - alpha,
                                                 n_resamples=n_resamples, seed=seed)
    if note and n_resamples > 0:
        c.notes.append(note)
    c.effect_size = hedges_g(b, a)
    n1, n2 = b.size, a.size
    sp = math.sqrt(((n1 - 1) * b.var(ddof=1) + (n2 - 1) * a.var(ddof=1)) / (n1 + n2 - 2))
    c.sd_diff = NaN
    c.mdd = min_detectable_difference(sp, n1, alpha / arms_compared, power, paired=False, n_arm=n2)
    c.seeds_needed = seeds_needed(c.diff, sp, alpha / arms_compared, power, paired=False)
    if margin:
        c.p_tost = tost_welch(b, a, margin)
    return c


def _use_paired(b: pd.Series, a: pd.Series) -> bool:
    k = len(b.index.intersection(a.index))
    return k >= 2 and k >= 0.5 * min(len(a), len(b))


def compare(
    baseline: pd.Series, arm: pd.Series, *, pairing: str = "auto", **kw
) -> Comparison:
    """Paired comparison when the arms share seeds, else Welch (``pairing``: auto|paired|welch)."""
    b = pd.Series(baseline, dtype=float).dropna()
    a = pd.Series(arm, dtype=float).dropna()
    if pairing == "paired" or (pairing == "auto" and _use_paired(b, a)):
        return paired_comparison(b, a, **kw)
    c = welch_comparison(b.to_numpy(), a.to_numpy(), **kw)
    k = len(b.index.intersection(a.index))
    if pairing == "auto" and len(a) and len(b):
        c.notes.insert(0, f"unpaired design (only {k} shared seed(s)): Welch fallback")
    return c


def verdict(p_holm: float, diff: float, alpha: float, p_tost_holm: float = NaN) -> str:
    """The verdict rules of the module docstring."""
    if not math.isfinite(as_float(p_holm)):
        return INSUFFICIENT
    if p_holm < alpha and diff < 0:
        return BETTER
    if p_holm < alpha and diff > 0:
        return WORSE
    if math.isfinite(as_float(p_tost_holm)) and p_tost_holm < alpha:
        return EQUIVALENT
    return NO_DIFFERENCE


COLUMNS = [
    "arm", "n", "mean", "sd", "diff", "ci_low", "ci_high", "p", "p_holm", "verdict", "test",
    "n_baseline", "n_pairs", "sd_diff", "t", "df", "robust_test", "p_robust", "boot_low",
    "boot_high", "effect_size", "effect_size_name", "mdd", "seeds_needed", "p_tost",
    "p_tost_holm", "outlier_seeds", "notes",
]


def compare_arms(
    df: pd.DataFrame, baseline: str, *, alpha: float = 0.05, margin: float | None = None,
    power: float = 0.8, n_resamples: int = DEFAULT_RESAMPLES, seed: int = DEFAULT_BOOT_SEED,
    pairing: str = "auto", arms: Sequence[str] | None = None, value: str = "test_loss",
) -> pd.DataFrame:
    """One row per arm (baseline first): descriptive stats, comparison, Holm, verdict.

    ``df`` has columns ``arm``, ``seed`` and ``value`` (completed runs with finite losses, one
    row per (arm, seed)). ``arms`` fixes the order (default: sorted, baseline first). The
    baseline row carries its own n/mean/sd and verdict ``"baseline"``.
    """
    if df.duplicated(["arm", "seed"]).any():
        raise ValueError("compare_arms needs at most one row per (arm, seed)")
    if arms is None:
        arms = sorted(set(df["arm"]))
    arms = [baseline] + [a for a in arms if a != baseline]
    series = {
        a: g.set_index("seed")[value].astype(float) for a, g in df.groupby("arm", sort=False)
    }
    empty = pd.Series(dtype=float)
    base = series.get(baseline, empty)
    base = base[np.isfinite(base)]
    tested = sum(int(np.isfinite(series.get(a, empty)).sum() >= 2) for a in arms if a != baseline)  # Holm's family
    rows = []
    for a in arms:
        s = series.get(a, empty)
        s = s[np.isfinite(s)]
        desc = describe(s.to_numpy())
        if a == baseline:
            c = Comparison(arm=a, test=NO_TEST, n_baseline=desc.n, n=desc.n)
            if desc.n < 2:
                c.notes.append(f"baseline has {desc.n} completed run(s): its sd, every test, "
                               "interval, power figure and verdict need at least 2")
            row = c.as_dict()
            row["verdict"] = REFERENCE
        elif len(base) < 2 or desc.n == 0:
            c = Comparison(arm=a, test=NO_TEST, n_baseline=len(base), n=desc.n)
            if len(base) and desc.n:
                c.diff = float(desc.mean - base.mean())
            c.notes.append("no completed runs" if desc.n == 0 else
                           f"baseline has {len(base)} completed run(s); every test, interval "
                           "and power figure needs at least 2")
            row = c.as_dict()
        else:
            c = compare(base, s, pairing=pairing, alpha=alpha, margin=margin, power=power,
                        n_resamples=n_resamples, seed=seed, name=a, arms_compared=max(tested, 1))
            row = c.as_dict()
        row.update(mean=desc.mean, sd=desc.sd)
        rows.append(row)
    out = pd.DataFrame(rows)
    is_arm = out["arm"] != baseline
    out["p_holm"] = NaN
    out["p_tost_holm"] = NaN
    out.loc[is_arm, "p_holm"] = holm(out.loc[is_arm, "p"].to_numpy(), alpha)
    out.loc[is_arm, "p_tost_holm"] = holm(out.loc[is_arm, "p_tost"].to_numpy(), alpha)
    out.loc[is_arm, "verdict"] = [
        verdict(r.p_holm, r.diff, alpha, r.p_tost_holm) for r in out.loc[is_arm].itertuples()
    ]
    return out[COLUMNS].reset_index(drop=True)


# --------------------------------------------------------------------------- noise floor


def noise_floor(
    baseline, alpha: float = 0.05, power: float = 0.8,
    targets: Sequence[float] = (0.005, 0.01, 0.02, 0.05),
) -> dict:
    """Seed noise of the baseline and what it implies for unpaired comparisons.

    sd across seeds, its standard error of the mean, the minimum detectable difference of a
    two-arm comparison with the baseline's n in each arm (two-sample t power at the baseline
    sd), and the seeds per arm needed to detect each of ``targets``. Paired designs with shared
    seed effects need fewer.
    """
    d = describe(baseline)
    out = {"n": d.n, "mean": d.mean, "sd": d.sd, "sem": d.sem, "mdd_two_sample": NaN,
           "seeds_needed": {}, "note": None}
    if d.n < 2 or not (d.sd > 0):
        out["note"] = (f"baseline has {d.n} completed run(s)" if d.n < 2
                       else "baseline losses are identical: sd is 0")
        return out
    out["mdd_two_sample"] = min_detectable_difference(d.sd, d.n, alpha, power, paired=False)
    out["seeds_needed"] = {
        float(t): seeds_needed(t, d.sd, alpha, power, paired=False) for t in targets
    }
    return out
