"""What an intervention is worth in compute: the compute multiplier k, and tokens to match.

k is how many times its budget T the baseline would have to train to reach the arm's final
held-out loss: k > 1, the arm is worth more compute; k < 1, less. Per seed s it is read off that
seed's baseline held-out curve (loss against tokens, from the held-out points along training, or
for a schedule that decays with the run's length from the final points of baseline runs at other
budgets): the first tokens at which the curve reaches the arm's final held-out loss of seed s,
interpolating the loss linearly in log tokens between neighbouring points (the curves are close to
power laws in tokens), over T. The estimate is the geometric mean over seeds and its interval the
t interval on mean log k (the seeds are paired: the same seed's arm and baseline share their random
streams); coverage checked by simulation (tests/test_worth.py). Outside the curve's points k is not
extrapolated: a seed whose arm beats the baseline's last point is "above the measured range", one
whose arm is worse than its first point "below".

Tokens to match: the fraction of its own budget at which the arm's held-out curve first reaches the
baseline's final held-out loss (the same reading, the roles swapped), valid only where the
schedule does not depend on the run's length. Pure functions over arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

IN_RANGE, ABOVE, BELOW = "in range", "above the measured range", "below the measured range"


def crossing(tokens, losses, target: float) -> tuple[float, str]:
    """(tokens, IN_RANGE) where the curve first reaches `target` (loss linear in log tokens between
    points), else (nan, ABOVE) when no point reaches it, or (nan, BELOW) when the first point
    already does (the crossing lies before the curve's range)."""
    t = np.asarray(tokens, dtype=float)
    y = np.asarray(losses, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y) & (t > 0)
    t, y = t[keep], y[keep]
    order = np.argsort(t)
    t, y = t[order], y[order]
    if len(t) == 0 or not math.isfinite(target):
        return math.nan, ABOVE
    reached = np.flatnonzero(y <= target)
    if len(reached) == 0:
        return math.nan, ABOVE
    i = int(reached[0])
    if i == 0:
        return (float(t[0]), IN_RANGE) if y[0] == target else (math.nan, BELOW)
    frac = (y[i - 1] - target) / (y[i - 1] - y[i])
    return float(math.exp(math.log(t[i - 1]) + frac * (math.log(t[i]) - math.log(t[i - 1])))), IN_RANGE


@dataclass(frozen=True)
class Multiplier:
    """k over seeds: the geometric mean and its t interval, with each seed's reading."""

    estimate: float
    low: float
    high: float
    n: int  # seeds whose reading is in range
    per_seed: dict[int, float]  # seed -> k (nan where out of range)
    states: dict[int, str]  # seed -> IN_RANGE, ABOVE or BELOW
    range_low: float  # the readable range of k, as multiples of the budget
    range_high: float

    @property
    def state(self) -> str:
        """IN_RANGE when every seed reads in range; else the side most seeds fall off."""
        outside = [s for s in self.states.values() if s != IN_RANGE]
        if not outside:
            return IN_RANGE
        return ABOVE if outside.count(ABOVE) >= outside.count(BELOW) else BELOW


def multiplier(curves: dict[int, tuple[np.ndarray, np.ndarray]], targets: dict[int, float], budget: float,
               alpha: float = 0.05) -> Multiplier:
    """k from each seed's curve (tokens, losses) and target (the loss to reach) at a budget of
    `budget` tokens: per seed crossing / budget; over the seeds read in range, exp(mean log k) with
    the t interval at 1 - alpha. With any seed out of range there is no interval (the state says
    which side)."""
    per_seed, states = {}, {}
    lows, highs = [], []
    for seed, target in targets.items():
        if seed not in curves:
            continue
        t, y = curves[seed]
        at, state = crossing(t, y, target)
        per_seed[seed], states[seed] = at / budget, state
        finite = np.asarray(t, dtype=float)[np.isfinite(np.asarray(y, dtype=float))]
        if len(finite):
            lows.append(finite.min() / budget)
            highs.append(finite.max() / budget)
    logs = np.log([k for seed, k in per_seed.items() if states[seed] == IN_RANGE])
    n = len(logs)
    estimate = low = high = math.nan
    if n:
        estimate = float(math.exp(logs.mean()))
    if n >= 2 and n == len(per_seed):
        half = sps.t.ppf(1 - alpha / 2, n - 1) * logs.std(ddof=1) / math.sqrt(n)
        low, high = float(math.exp(logs.mean() - half)), float(math.exp(logs.mean() + half))
    return Multiplier(estimate, low, high, n, per_seed, states, max(lows, default=math.nan),
                      min(highs, default=math.nan))


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
