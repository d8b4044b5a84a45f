"""What an intervention is worth in compute: the compute multiplier k, and tokens to match.

k is how many times its budget T the baseline would have to train to reach the arm's final
held-out loss: k > 1, the arm is worth more compute; k < 1, less. The baseline's curve is loss
against log tokens, from its held-out points along training (or, for a schedule that decays with
the run's length, the final points of baseline runs at other budgets), on the points every seed has.

The estimate is where the seeds' mean curve reaches the seeds' mean target (the arm's final loss),
both read on a cubic spline through the points in log tokens: loss curves are convex there, and
straight lines between points sqrt(2) apart placed the crossing late by a bias that more seeds do
not shrink. Its interval is the t interval over seeds of each seed's reading linearised at that
crossing, u0 + (target_s - curve_s(u0)) / slope, whose mean is u0: a seed's noise, its points' too,
enters its own reading, and the seeds are paired (arm and baseline of one seed share their random
streams). The slope is a cubic least-squares fit to the mean curve's seven points nearest the
crossing: several points, so that noisy points do not make the interval's width noisy, and a cubic,
because a quadratic over that span overstates a bent curve's slope and so narrows the interval
(reports/benchmarks.md). Coverage is checked by simulation on curve shapes the spline does not
assume (tests/test_worth.py).

No seed is read on its own, so none is left out: where the mean curve never reaches the mean
target inside the measured range, k is above (or below) that range and not estimated; where the
interval reaches past the range, it ends at the range's end, marked open (the curve is not measured
there). A seed whose linearised reading alone lies outside is counted (`outside`), as a hint to
measure further. Where the mean curve reaches the target more than once, or rises there (points
noisier than the drop between them), or the seeds share fewer than two points, there is no k.
Tokens to match: the same reading with the roles swapped, the fraction of its own budget at
which the arm's curve reaches the baseline's final loss. Pure functions over arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps
from scipy.interpolate import CubicSpline

IN_RANGE, ABOVE, BELOW = "in range", "above the measured range", "below the measured range"
NOT_FALLING = "not falling steadily through the target"  # the mean curve reaches it more than once, or rises there
TOO_FEW = "fewer than two points common to every seed"
SLOPE_POINTS, SLOPE_DEGREE = 7, 3  # the least-squares fit that gives the mean curve's slope at the crossing


@dataclass(frozen=True)
class Multiplier:
    """k over seeds: the estimate and its t interval, with each seed's linearised reading. The
    estimate is NaN where the mean curve gives no crossing in range; the interval needs two seeds that
    differ, and where it reaches past the measured range it ends there, marked open."""

    estimate: float
    low: float
    high: float
    n: int  # seeds read (every seed with a curve and a target)
    per_seed: dict[int, float]  # seed -> its linearised k (nan where the mean curve gives no crossing)
    states: dict[int, str]  # seed -> IN_RANGE, ABOVE or BELOW
    range_low: float  # the readable range of k, as multiples of the budget
    range_high: float
    reason: str = ""  # why there is no estimate: ABOVE or BELOW (the mean curve's side), NOT_FALLING, TOO_FEW
    open_low: bool = False  # the interval reaches past the measured range there: `low` is the range's end
    open_high: bool = False

    @property
    def outside(self) -> int:
        """Seeds whose own reading lies outside the measured range."""
        return sum(s != IN_RANGE for s in self.states.values())

    @property
    def state(self) -> str:
        """IN_RANGE where the mean curve reaches the mean target inside the measured range; else why not."""
        return self.reason or IN_RANGE


def _finite_curve(seed, tokens, losses) -> dict[float, float]:
    t, y = np.asarray(tokens, dtype=float), np.asarray(losses, dtype=float)
    if t.shape != y.shape:
        raise ValueError(f"seed {seed}: {t.size} tokens for {y.size} losses")
    keep = np.isfinite(t) & np.isfinite(y) & (t > 0)
    if not keep.any():
        raise ValueError(f"seed {seed}: the curve has no point with finite loss at positive tokens")
    return dict(zip(t[keep].tolist(), y[keep].tolist()))


def _slope(u: np.ndarray, y: np.ndarray, at: float) -> float:
    """d loss / d log tokens at `at`: a least-squares cubic through the nearest points."""
    near = np.argsort(np.abs(u - at), kind="stable")[:SLOPE_POINTS]
    fit = np.polyfit(u[near] - at, y[near], min(SLOPE_DEGREE, len(near) - 1))
    return float(fit[-2])


def multiplier(curves: dict[int, tuple[np.ndarray, np.ndarray]], targets: dict[int, float], budget: float,
               alpha: float = 0.05) -> Multiplier:
    """k from each seed's curve (tokens, losses) and target (the loss to reach) at a budget of
    `budget` tokens (module docstring). Seeds without a curve are left out; a NaN target, an empty
    curve or a budget that is not positive is refused (ValueError)."""
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"the budget must be a positive number of tokens, not {budget}")
    seeds = sorted(s for s in targets if s in curves)
    bad = [s for s in seeds if not math.isfinite(targets[s])]
    if bad:
        raise ValueError(f"seed {bad[0]}'s target loss is {targets[bad[0]]}: a target must be finite")
    if not seeds:
        raise ValueError("no seed has both a curve and a target")
    points = {s: _finite_curve(s, *curves[s]) for s in seeds}
    common = sorted(set.intersection(*(set(p) for p in points.values())))
    nothing = dict.fromkeys(seeds, math.nan)
    if len(common) < 2:
        return Multiplier(math.nan, math.nan, math.nan, len(seeds), nothing, dict.fromkeys(seeds, IN_RANGE), math.nan,
                          math.nan, TOO_FEW)
    u = np.log(common)
    ys = np.array([[points[s][t] for t in common] for s in seeds]).T  # points x seeds
    target = np.array([targets[s] for s in seeds])
    range_low, range_high = common[0] / budget, common[-1] / budget
    mean_curve, mean_target = CubicSpline(u, ys.mean(axis=1)), float(target.mean())
    roots = np.unique(np.round(mean_curve.solve(mean_target, extrapolate=False), 12))
    if len(roots) == 0:  # the mean never reaches it: the mean says which side; each seed's own points, its own
        states = {s: ABOVE if tg < y[-1] else BELOW if tg > y[0] else IN_RANGE
                  for s, tg, y in zip(seeds, target, ys.T)}
        side = ABOVE if mean_target < float(mean_curve(u[-1])) else BELOW
        return Multiplier(math.nan, math.nan, math.nan, len(seeds), nothing, states,
                          range_low, range_high, side)
    u0 = float(roots[0])
    slope = _slope(u, ys.mean(axis=1), u0)
    if len(roots) > 1 or slope >= 0:
        return Multiplier(math.nan, math.nan, math.nan, len(seeds), nothing, dict.fromkeys(seeds, IN_RANGE), range_low,
                          range_high, NOT_FALLING)
    readings = u0 + (target - CubicSpline(u, ys)(u0)) / slope
    states = {s: ABOVE if r > u[-1] else BELOW if r < u[0] else IN_RANGE for s, r in zip(seeds, readings)}
    per_seed = {s: float(math.exp(r) / budget) for s, r in zip(seeds, readings)}
    low, high, n = math.nan, math.nan, len(seeds)
    sd = float(readings.std(ddof=1)) if n >= 2 else 0.0
    if sd > 0:  # zero spread gives no interval, as the t test gives none
        half = sps.t.ppf(1 - alpha / 2, n - 1) * sd / math.sqrt(n)
        low, high = math.exp(max(u0 - half, u[0])) / budget, math.exp(min(u0 + half, u[-1])) / budget
        opens = (u0 - half < u[0], u0 + half > u[-1])
    else:
        opens = (False, False)
    return Multiplier(math.exp(u0) / budget, low, high, n, per_seed, states, range_low, range_high,
                      open_low=opens[0], open_high=opens[1])


def paired_curve(arm: dict[int, tuple[np.ndarray, np.ndarray]], base: dict[int, tuple[np.ndarray, np.ndarray]],
                 alpha: float = 0.05) -> dict[str, np.ndarray]:
    """The paired difference arm - baseline of held-out loss at every point both have for a seed:
    per tokens value its mean over seeds, a pointwise t interval (not simultaneous across points)
    and the number of seeds."""
    diffs: dict[float, list[float]] = {}
    for seed, (t_a, y_a) in arm.items():
        if seed not in base:
            continue
        t_b, y_b = base[seed]
        at_b = {float(t): float(y) for t, y in zip(t_b, y_b) if math.isfinite(y)}
        for t, y in zip(t_a, y_a):
            if math.isfinite(y) and float(t) in at_b:
                diffs.setdefault(float(t), []).append(float(y) - at_b[float(t)])
    tokens = np.array(sorted(diffs), dtype=float)
    mean, low, high, n = (np.full(len(tokens), math.nan) for _ in range(4))
    for i, t in enumerate(tokens):
        d = np.asarray(diffs[t])
        n[i], mean[i] = len(d), d.mean()
        if len(d) >= 2:
            half = sps.t.ppf(1 - alpha / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
            low[i], high[i] = mean[i] - half, mean[i] + half
    return {"tokens": tokens, "mean": mean, "low": low, "high": high, "n": n}
