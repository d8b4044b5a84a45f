"""Sequential decisions for adaptive sweeps: stop giving an arm seeds as soon as it is decided,
with error rates that stay valid although the data are looked at after every seed.

Method (named in the report's Methods):
- Per arm, a group-sequential two-sided t-test on its paired differences (arm - baseline, per
  seed), looked at after every new pair from `min_seeds` to `max_seeds`, reported as repeated
  confidence intervals (Jennison & Turnbull, "Group Sequential Methods with Applications to
  Clinical Trials", 2000, ch. 9; unknown variance, ch. 11): RCI_n = mean_n +- c_n sd_n / sqrt(n).
- The critical values c_n spend alpha with the Hwang-Shih-DeCani function, gamma = -4 (Hwang,
  Shih & DeCani 1990; close to O'Brien-Fleming, a little more alpha early so that large effects stop
  early), over the information fraction n / max_seeds, and are computed by Monte Carlo on the
  t-statistic process itself: for i.i.d. normal differences with mean 0 the sequence of one-sample
  t statistics does not depend on the variance, so the boundaries are exact for any noise level up
  to simulation error (SIMULATIONS paths, a fixed seed).
- Across arms, Holm-type alpha recycling for group-sequential designs (Maurer & Bretz 2013, the
  graphical approach with equal weights): each arm starts at alpha / arms; when an arm is decided
  better or worse its share goes to the arms not yet decided, whose boundaries are recomputed at
  alpha / (arms left) from then on. This keeps the family-wise error at alpha.
- An arm is better or worse when its interval excludes 0; equivalent when its interval at the
  arm's unrecycled level alpha / arms lies inside +-margin; undecided at the cap at max_seeds.
The repeated intervals cover the true mean at every look with probability at least 1 - alpha /
arms, so the interval reported at the stopping time keeps its coverage. Pure functions over arrays,
one implementation for the sweep and for the simulations that test its error rates
(tests/test_adaptive.py) and print its savings (tests/bench/adaptive.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

BETTER, WORSE, EQUIVALENT, UNDECIDED, AT_CAP = "better", "worse", "equivalent", "undecided", "undecided at the cap"
DEFAULT_MIN_SEEDS = 3
DEFAULT_MAX_SEEDS = 20
SIMULATIONS = 400_000
GAMMA = -4.0
METHOD = ("group-sequential t-test per arm with repeated confidence intervals (Jennison & Turnbull 2000, ch. 9 "
          f"and 11), Hwang-Shih-DeCani alpha spending (gamma {GAMMA:g}) over the looks, critical values by Monte Carlo "
          f"on the t-statistic process ({SIMULATIONS:,} paths), Holm-type alpha recycling across arms "
          "(Maurer & Bretz 2013)")


def spent(alpha: float, fraction: np.ndarray) -> np.ndarray:
    """Alpha spent by information fraction t: Hwang-Shih-DeCani, alpha (1 - e^(-g t)) / (1 - e^(-g))."""
    t = np.clip(fraction, 0.0, 1.0)
    return alpha * (1 - np.exp(-GAMMA * t)) / (1 - np.exp(-GAMMA))


@lru_cache(maxsize=64)
def _boundaries(alpha: float, min_seeds: int, max_seeds: int) -> tuple[float, ...]:
    rng = np.random.default_rng(20261130)
    looks = np.arange(min_seeds, max_seeds + 1)
    target = spent(alpha, looks / max_seeds)
    alive = np.ones(SIMULATIONS, dtype=bool)
    crossed = 0
    out = []
    total = np.zeros(SIMULATIONS)  # running sums over the looks, one look at a time (memory)
    squares = np.zeros(SIMULATIONS)
    for n in range(1, max_seeds + 1):
        x = rng.standard_normal(SIMULATIONS)
        total += x
        squares += x * x
        if n < min_seeds:
            continue
        mean = total / n
        sd = np.sqrt(np.maximum(squares - n * mean * mean, 0.0) / (n - 1))
        t = np.abs(mean) / (sd / math.sqrt(n))
        allowed = int(math.floor(target[n - min_seeds] * SIMULATIONS)) - crossed  # new crossings at this look
        candidates = np.sort(t[alive])[::-1]
        if allowed <= 0 or len(candidates) == 0:
            c = math.inf
        elif allowed >= len(candidates):
            c = 0.0
        else:
            c = float((candidates[allowed - 1] + candidates[allowed]) / 2)
        hit = alive & (t >= c)
        crossed += int(hit.sum())
        alive &= ~hit
        out.append(c)
    return tuple(out)


def boundaries(alpha: float, min_seeds: int = DEFAULT_MIN_SEEDS, max_seeds: int = DEFAULT_MAX_SEEDS) -> np.ndarray:
    """Critical values c_n for n = min_seeds .. max_seeds pairs (inf where no alpha is spent yet)."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    if not 2 <= min_seeds <= max_seeds:
        raise ValueError(f"need 2 <= min_seeds <= max_seeds, got {min_seeds}, {max_seeds}")
    return np.array(_boundaries(float(alpha), int(min_seeds), int(max_seeds)))


@dataclass(frozen=True)
class Look:
    """One arm at one look: its repeated confidence interval and what it says."""

    n: int  # pairs
    mean: float
    low: float
    high: float
    state: str  # BETTER, WORSE, EQUIVALENT, UNDECIDED, AT_CAP


def decided(state: str) -> bool:
    return state in (BETTER, WORSE, EQUIVALENT, AT_CAP)


def decide(diffs: np.ndarray, alpha: float, min_seeds: int, max_seeds: int, margin: float | None = None,
           rounds_done: int | None = None) -> dict[str, np.ndarray]:
    """Adaptive sweeps' decisions, round by round, for a batch of sweeps (one vectorised pass over
    every round, about 65 lines: a simulation calls it for thousands of sweeps at once).

    diffs[sweep, arm, round]: the paired difference of seed `round` (NaN where an arm has no pair
    that round: not run, failed, or decided earlier). Rounds 0 .. rounds_done-1 have been run
    (default: all max_seeds). Returns per (sweep, arm): state, round (the deciding round, -1 if
    undecided), n (pairs at that look), mean, low, high (its interval). Rounds beyond diffs' last
    are NaN (not run); a look whose differences are all equal (zero variance) decides nothing and
    shows no interval, as the t test gives none."""
    d = np.asarray(diffs, dtype=float)
    if d.ndim != 3:
        raise ValueError(f"decide needs diffs as [sweep, arm, round], got shape {d.shape}")
    sweeps, arms, rounds = d.shape
    if rounds < max_seeds:
        d = np.concatenate([d, np.full((sweeps, arms, max_seeds - rounds), np.nan)], axis=2)
    rounds_done = max_seeds if rounds_done is None else min(rounds_done, max_seeds)
    levels = np.array([boundaries(alpha / k, min_seeds, max_seeds) for k in range(1, arms + 1)])  # [k-1, n-min]
    valid = np.isfinite(d[:, :, :max_seeds])
    x = np.where(valid, d[:, :, :max_seeds], 0.0)
    count, total, squares = np.cumsum(valid, 2), np.cumsum(x, 2), np.cumsum(x * x, 2)
    state = np.full((sweeps, arms), UNDECIDED, dtype=object)
    at = np.full((sweeps, arms), -1)
    out = {k: np.full((sweeps, arms), np.nan) for k in ("n", "mean", "low", "high")}
    open_ = np.ones((sweeps, arms), dtype=bool)
    for r in range(rounds_done):
        n = count[:, :, r]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = total[:, :, r] / n
            sd = np.sqrt(np.maximum(squares[:, :, r] - n * mean * mean, 0.0) / (n - 1))
        spread = sd > 1e-6 * np.maximum(np.abs(mean), 1e-6)  # the running sums leave a constant series a rounding spread
        looked = open_ & valid[:, :, r] & (n >= min_seeds) & spread
        idx = np.clip(n, min_seeds, max_seeds) - min_seeds

        def interval(k):
            """Intervals at level alpha / k (k per sweep: the arms not yet decided better or worse)."""
            k = np.broadcast_to(np.clip(k, 1, arms), (sweeps,))
            half = levels[(k - 1)[:, None], idx] * sd / np.sqrt(np.maximum(n, 1))
            return mean - half, mean + half

        while True:  # Holm within a round: a decision frees alpha for the arms still open
            left = arms - (state == BETTER).sum(1) - (state == WORSE).sum(1)
            low, high = interval(left)
            new = looked & open_ & ((high < 0) | (low > 0))
            if not new.any():
                break
            state[new & (high < 0)], state[new & (low > 0)] = BETTER, WORSE
            for key, value in (("n", n), ("mean", mean), ("low", low), ("high", high)):
                out[key][new] = value[new]
            at[new], open_ = r, open_ & ~new
        left = arms - (state == BETTER).sum(1) - (state == WORSE).sum(1)
        low, high = interval(left)
        shown = looked & open_
        for key, value in (("n", n), ("mean", mean), ("low", low), ("high", high)):
            out[key][shown] = value[shown]
        if margin is not None:
            base_low, base_high = interval(arms)
            equivalent = shown & (base_low > -margin) & (base_high < margin)
            state[equivalent] = EQUIVALENT
            out["low"][equivalent], out["high"][equivalent] = base_low[equivalent], base_high[equivalent]
            at[equivalent], open_ = r, open_ & ~equivalent
    if rounds_done >= max_seeds:
        capped = open_ & (state == UNDECIDED)
        state[capped] = AT_CAP
    return {"state": state, "round": at, **out}


def simulate(effects, noise_sd, alpha: float, min_seeds: int, max_seeds: int, sweeps: int, margin: float | None = None,
             baseline_share: float = 0.5, seed: int = 0) -> dict[str, np.ndarray]:
    """Adaptive sweeps on simulated paired data (through decide, the sweep's own rule): arm j's
    difference at seed s is effects[j] + noise of sd noise_sd[j], a share of whose variance comes
    from the baseline run of that seed, common to all arms (as in a real sweep). Also returns the
    fixed design's figures (all max_seeds pairs): t intervals at alpha / arms (Bonferroni) and
    Holm's rejections, for power and savings comparisons."""
    effects = np.asarray(effects, dtype=float)
    sds = np.broadcast_to(np.asarray(noise_sd, dtype=float), effects.shape)
    arms = len(effects)
    rng = np.random.default_rng(seed)
    shared = rng.standard_normal((sweeps, 1, max_seeds)) * math.sqrt(baseline_share)
    own = rng.standard_normal((sweeps, arms, max_seeds)) * math.sqrt(1 - baseline_share)
    diffs = effects[None, :, None] + sds[None, :, None] * (shared + own)
    out = decide(diffs, alpha, min_seeds, max_seeds, margin)
    out["n"] = np.where(np.isnan(out["n"]), max_seeds, out["n"]).astype(int)  # the pairs each arm was given
    from scipy import stats as sps  # here, not at the top: the CLI checks its options without scipy

    mean, sd = diffs.mean(axis=2), diffs.std(axis=2, ddof=1)
    se = sd / math.sqrt(max_seeds)
    half = sps.t.ppf(1 - alpha / (2 * arms), max_seeds - 1) * se
    p = 2 * sps.t.sf(np.abs(mean) / se, max_seeds - 1)
    order = np.argsort(p, axis=1)
    ok = np.cumprod(np.take_along_axis(p, order, 1) <= alpha / (arms - np.arange(arms)), axis=1).astype(bool)
    holm = np.zeros_like(ok)
    np.put_along_axis(holm, order, ok, axis=1)
    return out | {"effects": effects, "fixed_low": mean - half, "fixed_high": mean + half, "fixed_mean": mean,
                  "holm": holm}


def null_error_under_skew(skewness: float, arms: int, alpha: float, min_seeds: int, max_seeds: int, sweeps: int,
                          seed: int = 0) -> dict[str, float]:
    """Family-wise false positives when no arm has an effect but the paired differences are skewed
    (standardised gamma with this skewness; 0: normal): the adaptive rule's, and fixed-n Holm's at
    min_seeds and at max_seeds. What the Methods say the t-based tests assume, measured."""
    from scipy import stats as sps  # here, not at the top: the CLI checks its options without scipy

    rng = np.random.default_rng(seed)
    shape = (sweeps, arms, max_seeds)
    if skewness:
        k = (2 / abs(skewness)) ** 2
        diffs = np.sign(skewness) * (rng.gamma(k, 1.0, shape) - k) / math.sqrt(k)
    else:
        diffs = rng.standard_normal(shape)
    adaptive = np.isin(decide(diffs, alpha, min_seeds, max_seeds)["state"], [BETTER, WORSE]).any(axis=1).mean()
    out = {"adaptive": float(adaptive)}
    for n in (min_seeds, max_seeds):
        x = diffs[:, :, :n]
        p = 2 * sps.t.sf(np.abs(x.mean(axis=2)) / (x.std(axis=2, ddof=1) / math.sqrt(n)), n - 1)
        ordered = np.sort(p, axis=1)
        out[f"holm_{n}"] = float((ordered[:, 0] <= alpha / arms).mean())  # Holm rejects anything iff its first step does
    return out
