"""The test set is a sample too: a paired difference's uncertainty from the seeds and from the test
text, and an interval that generalises over both.

The data of one arm against the baseline: D[s, u], the paired difference of the mean token loss on
test unit u (a document, or a block of tokens: harness.data.batches.evaluation_units) at seed s, and
w[u], unit u's share of the test tokens (the same for every run: one test set). The difference in
test loss at seed s is d_s = sum_u w_u D[s, u], its mean over seeds d = mean_s d_s. The model is
the two-way crossed random-effects one, D[s, u] = mu + a_s + b_u + e_su (a seed's effect, a text
unit's effect, their interaction), and the question is what d would do over new seeds AND new test
texts of the same size:

  Var(d) = sigma_a^2 / S + W sigma_b^2 + W sigma_e^2 / S,   W = sum_u w_u^2 (1 / U for equal units)

estimated by the method of moments (the ANOVA estimator of a crossed design, with unit weights):

  V_seed  = sum_s (d_s - d)^2 / (S (S - 1))                 the seed variance harness always reports
                                                            (sigma_a^2 + W sigma_e^2) / S
  V_unit  = c sum_u w_u^2 (Dbar_u - d)^2                    clustered by unit, Dbar_u = mean_s D[s, u]
                                                            W sigma_b^2 + W sigma_e^2 / S
  V_inter = c sum_u w_u^2 sum_s r_su^2 / (S (S - 1)),      r_su = D[s, u] - Dbar_u - d_s + d
                                                            W sigma_e^2 / S
  V_text  = V_unit - V_inter                                W sigma_b^2: the test text's own part
  V       = V_seed + V_text                                 both (never below V_seed or V_unit)

where c = W / (W - 2 sum_u w_u^3 + W^2) makes each unbiased (U / (U - 1) for equal units), and
with Satterthwaite's degrees of freedom for the t interval. The text part does not shrink with
more seeds: sqrt(V_text) is the floor the test set puts on the standard error, and
FLOOR_FACTOR x it (a two-sided 5% test at 80% power) the smallest difference this test set can
detect however many seeds run. Unbiasedness of each part and the interval's coverage are checked
by simulation (tests/test_stats.py). Pure functions over arrays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

MIN_SEEDS = 3
FLOOR_FACTOR = float(sps.norm.ppf(0.975) + sps.norm.ppf(0.80))  # 2.80: the detectable difference per SE


@dataclass(frozen=True)
class TextSplit:
    """A paired difference's uncertainty split into seeds and test text."""

    diff: float  # mean over seeds of the difference in test loss
    se_seed: float  # over seeds, this test set fixed (sqrt V_seed)
    se_text: float  # over test texts of this size, infinitely many seeds (sqrt V_text)
    se: float  # over both (sqrt V)
    df: float  # Satterthwaite
    low: float
    high: float
    seeds: int
    units: int
    seed_var: float  # sigma_a^2 + W sigma_e^2: one seed's variance of d_s (this test set)
    text_var: float  # W sigma_b^2: the test text's variance of d (any number of seeds); unbiased, may be < 0
    inter_var: float  # W sigma_e^2: the seed-by-text part of one seed's variance

    @property
    def floor(self) -> float:
        """The smallest difference this test set can detect (two-sided 5%, 80% power), however many seeds."""
        return FLOOR_FACTOR * self.se_text

    @property
    def text_share(self) -> float:
        """The test text's share of the variance of d at these seeds."""
        return self.se_text ** 2 / self.se ** 2 if self.se > 0 else math.nan

    def seeds_for_text_to_dominate(self) -> float:
        """Seeds at which V_seed would fall to V_text (inf when the text part is nil)."""
        return self.seed_var / self.text_var if self.text_var > 0 else math.inf

    @property
    def dominant(self) -> str:
        """Which source the variance of d at these seeds mostly comes from: "seeds" or "test text";
        "neither" where both are zero (a constant D), so that rounding never picks one."""
        if self.se_text == 0 and self.se_seed == 0:
            return "neither"
        return "test text" if self.se_text > self.se_seed else "seeds"


def unit_means(sums, tokens) -> tuple[np.ndarray, np.ndarray]:
    """Per-unit mean token loss of each run and each unit's token share: sums is a (runs, units)
    array over one test set, tokens its (units,) token counts (the same for every run)."""
    sums, tokens = np.asarray(sums, dtype=float), np.asarray(tokens, dtype=float)
    weights = tokens / tokens.sum()
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / tokens, weights


def split_uncertainty(diffs, weights, alpha: float = 0.05) -> TextSplit:
    """The two-way split of D (seeds x units) with unit weights w (summing to 1); units without
    tokens (weight 0) are dropped; a NaN cell, a NaN or negative weight is refused (ValueError), and
    a constant D gives zero parts and no interval. Needs at least MIN_SEEDS seeds (with 2, a seed variance of one
    degree of freedom that happens to be small makes Satterthwaite's interval cover about 88%) and
    2 units."""
    D = np.asarray(diffs, dtype=float)
    w = np.asarray(weights, dtype=float)
    if D.ndim != 2 or w.shape != (D.shape[1],):
        raise ValueError(f"the split needs D as seeds x units and one weight per unit, got {D.shape} and {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("the split needs finite weights of zero or more (a unit's share of the test tokens)")
    keep = w > 0
    D, w = D[:, keep], w[keep] / w[keep].sum()
    if not np.all(np.isfinite(D)):
        raise ValueError("the split needs a finite difference in every cell of a unit with tokens (one is NaN)")
    S, U = D.shape
    if S < MIN_SEEDS or U < 2:
        raise ValueError(f"the split needs at least {MIN_SEEDS} seeds and 2 units, got {S} and {U}")
    d_s = D @ w
    d = float(d_s.mean())
    unit_mean = D.mean(axis=0)
    resid = D - unit_mean[None, :] - d_s[:, None] + d
    W = float((w ** 2).sum())
    c = W / (W - 2 * float((w ** 3).sum()) + W * W)  # unbiased for unequal units; U / (U - 1) for equal ones
    v_seed = float(((d_s - d) ** 2).sum() / (S * (S - 1)))
    v_unit = float(c * (w ** 2 * (unit_mean - d) ** 2).sum())
    v_inter = float(c * (w ** 2 * (resid ** 2).sum(axis=0)).sum() / (S * (S - 1)))
    rounding = (1e-12 * float(np.abs(D).max())) ** 2  # a constant D leaves only rounding: count it as zero
    v_seed, v_unit, v_inter = (x if x > rounding else 0.0 for x in (v_seed, v_unit, v_inter))
    text_var = v_unit - v_inter  # the moment estimate: unbiased, so negative at times by chance
    v_text = max(text_var, 0.0)
    v = max(v_seed + v_text, v_unit)
    parts = [(v_seed, S - 1), (v_unit, U - 1), (v_inter, (S - 1) * (U - 1))]
    denom = sum(p * p / f for p, f in parts)
    if v == 0:  # no variance at all: no interval, as the t test gives none
        df, half = math.nan, math.nan
    else:
        df = float(min(max(v * v / denom, 1.0), 1e9))
        half = float(sps.t.ppf(1 - alpha / 2, df)) * math.sqrt(v)
    return TextSplit(diff=d, se_seed=math.sqrt(v_seed), se_text=math.sqrt(v_text), se=math.sqrt(v), df=df,
                     low=d - half, high=d + half, seeds=S, units=U, seed_var=v_seed * S,
                     text_var=text_var, inter_var=v_inter * S)


def run_text_se(losses, weights) -> float:
    """One run's test loss's standard error over test texts of this size (clustered by unit): how
    much another test sample would move a single number."""
    x, w = np.asarray(losses, dtype=float), np.asarray(weights, dtype=float)
    keep = w > 0
    x, w = x[keep], w[keep] / w[keep].sum()
    U = len(x)
    if U < 2:
        return math.nan
    return math.sqrt(U / (U - 1) * float((w ** 2 * (x - x @ w) ** 2).sum()))


def signal_to_noise(arm_means, seed_sd: float) -> float:
    """Heineman et al. (2025)'s signal-to-noise ratio of an evaluation, for one sweep: the signal is
    the largest difference between the arms' mean test losses (their dispersion), the noise the
    standard deviation of one run's test loss over seeds (their checkpoint-to-checkpoint noise).
    Both are in nats, so the ratio needs no normalisation by the mean."""
    m = np.asarray([x for x in arm_means if math.isfinite(x)], dtype=float)
    if len(m) < 2 or not math.isfinite(seed_sd) or seed_sd <= 0:
        return math.nan
    return float((m.max() - m.min()) / seed_sd)
