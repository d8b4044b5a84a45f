"""An effect across model sizes (`harness ladder`): its trend in log parameters, with intervals.

Each rung r gives its arm's paired differences (arm - baseline test loss, one per seed): mean m_r,
variance s2_r, n_r pairs, so its mean's variance is v_r = s2_r / n_r. Across rungs, a line in
x = log2(parameters) is fitted by weighted least squares, each rung weighted by 1/v_r (its own
uncertainty), and its slope is the change of the effect per doubling of parameters.

Weights estimated from a few seeds make the usual t or z test of such a fit too liberal (with 5
seeds per rung and 4 rungs about 10% false positives at alpha 0.05, simulated), so every interval
and p-value here is a parametric bootstrap of the studentized statistic (Krishnamoorthy, Lu and
Mathew 2007, for means with unequal variances): rung means drawn N(0, v_r) and variances s2_r
chi2(n_r - 1)/(n_r - 1), the weights estimated again in every draw. The slope, a fitted value
and the pooled mean are unbiased whatever the weights when the line (or the constant) is true,
so the studentized statistic's distribution does not depend on the unknown means. The error
rates are checked by simulation in tests/test_ladder.py.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats as sps

DEFAULT_RESAMPLES = 4000
MIN_PAIRS = 2  # a rung's variance needs two paired differences

LABELS = ("holds", "grows", "shrinks", "reverses", "undetermined")
RULES = {
    "reverses": "two rungs' own intervals exclude zero on opposite sides, or the slope is significant and the fitted "
                "effects at the smallest and largest rung exclude zero on opposite sides",
    "grows": "the slope is significant and the fitted effect is larger in size at the largest rung than at the "
             "smallest",
    "shrinks": "the slope is significant and the fitted effect is smaller in size at the largest rung than at the "
               "smallest",
    "holds": "the slope is not significant and the effect pooled over the rungs is",
    "undetermined": "neither the slope nor the pooled effect is significant, or too few rungs have two pairs",
}


@dataclass(frozen=True)
class Trend:
    """A weighted line through the rungs' mean differences, in x = log2(parameters)."""

    rungs: int
    slope: float  # change of the effect per doubling of parameters
    slope_low: float
    slope_high: float
    p_slope: float
    pooled: float  # the weighted mean effect (a constant over sizes)
    pooled_low: float
    pooled_high: float
    p_pooled: float
    lack_of_fit_p: float  # the rungs' departure from the line (NaN with two rungs)
    smallest: tuple[float, float, float]  # fitted effect at the smallest rung: estimate, low, high
    largest: tuple[float, float, float]
    prediction: float  # fitted effect at the target size
    prediction_low: float
    prediction_high: float

    def as_dict(self) -> dict:
        return asdict(self)


def _line(m: np.ndarray, v: np.ndarray, x: np.ndarray, points: np.ndarray):
    """Weighted least squares of m on x (weights 1/v, over the last axis): the slope and the fitted
    values at `points`, each with its standard error, the weighted mean and its standard error,
    and the weighted residual sum of squares."""
    w = 1.0 / v
    sw = w.sum(-1, keepdims=True)
    xbar = (w * x).sum(-1, keepdims=True) / sw
    sxx = (w * (x - xbar) ** 2).sum(-1, keepdims=True)
    c_slope = w * (x - xbar) / sxx
    slope = (c_slope * m).sum(-1)
    se_slope = np.sqrt((c_slope ** 2 * v).sum(-1))
    pooled = (w * m).sum(-1) / sw[..., 0]
    se_pooled = np.sqrt(1.0 / sw[..., 0])
    fits, ses = [], []
    for p in points:
        c = w / sw + c_slope * (p - xbar)
        fits.append((c * m).sum(-1))
        ses.append(np.sqrt((c ** 2 * v).sum(-1)))
    residual = m - (pooled[..., None] + slope[..., None] * (x - xbar))
    rss = (w * residual ** 2).sum(-1)
    return slope, se_slope, np.array(fits), np.array(ses), pooled, se_pooled, rss


def _interval(est: float, se: float, pivots: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(pivots, [alpha / 2, 1 - alpha / 2])
    return float(est - hi * se), float(est - lo * se)


def _p(t: float, pivots: np.ndarray) -> float:
    return float((np.count_nonzero(np.abs(pivots) >= abs(t)) + 1) / (len(pivots) + 1))


def trend(means, variances, pairs, log2_params, log2_target: float, alpha: float = 0.05,
          resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Trend:
    """The trend of one arm's effect over rungs: per rung the mean paired difference, the variance
    of the differences (ddof 1), the number of pairs and log2 of the parameters. At least two
    rungs, each with MIN_PAIRS pairs and a positive variance (ValueError otherwise)."""
    m, s2 = np.asarray(means, float), np.asarray(variances, float)
    n, x = np.asarray(pairs, float), np.asarray(log2_params, float)
    if not (len(m) == len(s2) == len(n) == len(x)):
        raise ValueError(f"a trend needs one mean, variance, pair count and size per rung, got {len(m)}, "
                         f"{len(s2)}, {len(n)} and {len(x)}")
    if not (np.all(np.isfinite(m)) and np.all(np.isfinite(x)) and math.isfinite(log2_target)):
        raise ValueError("a trend needs finite means, sizes and target (a rung's mean difference is NaN)")
    if len(m) < 2 or len(np.unique(x)) < 2:
        raise ValueError("a trend needs two rungs of different sizes")
    if np.any(n < MIN_PAIRS) or not np.all(np.isfinite(s2)) or np.any(s2 <= 0):
        raise ValueError("every rung needs at least two paired differences with a positive variance")
    v = s2 / n
    points = np.array([x.min(), x.max(), log2_target])
    slope, se_slope, fits, ses, pooled, se_pooled, rss = _line(m, v, x, points)
    rng = np.random.default_rng(seed)
    m_star = rng.standard_normal((resamples, len(m))) * np.sqrt(v)
    v_star = s2 * rng.chisquare(n - 1, (resamples, len(m))) / (n - 1) / n
    b_slope, b_se_slope, b_fits, b_ses, b_pooled, b_se_pooled, b_rss = _line(m_star, v_star, x, points)
    t_slope, t_pooled = b_slope / b_se_slope, b_pooled / b_se_pooled
    t_fits = b_fits / b_ses
    bounds = [_interval(float(fits[k]), float(ses[k]), t_fits[k], alpha) for k in range(3)]
    lack = float((np.count_nonzero(b_rss >= rss) + 1) / (resamples + 1)) if len(m) > 2 else math.nan
    return Trend(
        rungs=len(m), slope=float(slope), slope_low=_interval(float(slope), float(se_slope), t_slope, alpha)[0],
        slope_high=_interval(float(slope), float(se_slope), t_slope, alpha)[1], p_slope=_p(slope / se_slope, t_slope),
        pooled=float(pooled), pooled_low=_interval(float(pooled), float(se_pooled), t_pooled, alpha)[0],
        pooled_high=_interval(float(pooled), float(se_pooled), t_pooled, alpha)[1],
        p_pooled=_p(pooled / se_pooled, t_pooled), lack_of_fit_p=lack,
        smallest=(float(fits[0]), *bounds[0]), largest=(float(fits[1]), *bounds[1]),
        prediction=float(fits[2]), prediction_low=bounds[2][0], prediction_high=bounds[2][1])


def rung_interval(diffs, alpha: float = 0.05) -> tuple[float, float]:
    """A rung's own paired t interval for its mean difference (NaN with fewer than two pairs)."""
    d = np.asarray(diffs, float)
    if len(d) < MIN_PAIRS:
        return math.nan, math.nan
    half = sps.t.ppf(1 - alpha / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean() - half), float(d.mean() + half)


def label(t: Trend | None, rung_intervals: list[tuple[float, float]], alpha: float,
          p_slope: float | None = None) -> str:
    """One of LABELS by RULES; p_slope: the slope's p-value as tested (e.g. Holm-adjusted across
    arms), by default the trend's own."""
    lows = [lo for lo, _ in rung_intervals if np.isfinite(lo)]
    highs = [hi for _, hi in rung_intervals if np.isfinite(hi)]
    if lows and highs and max(lows) > 0 and min(highs) < 0:
        return "reverses"
    if t is None:
        return "undetermined"
    p = t.p_slope if p_slope is None else p_slope
    if p < alpha:
        (lo_fit, lo_low, lo_high), (hi_fit, hi_low, hi_high) = t.smallest, t.largest
        if (lo_low > 0 and hi_high < 0) or (lo_high < 0 and hi_low > 0):
            return "reverses"
        return "grows" if abs(hi_fit) > abs(lo_fit) else "shrinks"
    return "holds" if t.p_pooled < alpha else "undetermined"
