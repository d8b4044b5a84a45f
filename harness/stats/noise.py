"""Noise anatomy: where seed noise comes from, and how large an effect the setup can see.

A noise study (`harness noise`) trains the same config N times per source, varying one random
stream with the run seed while the other two stay at the reference seed's values: the initial
weights, the data order, the dropout masks; plus N ordinary runs (all three vary) and replicates
with identical seeds (bit-identical on CPU; on GPU their spread is the nondeterminism floor).

Per source, the standard deviation of the test loss with a chi-square interval on its n - 1
degrees of freedom (one-way random-effects model, one factor at a time: the runs of a source
differ only by that stream), its share of the summed variance of the three sources, and the
ordinary runs' variance beside that sum (the two agree when the sources add up independently).
Each source's sd includes the replicate floor (zero on CPU). For a paired arm, the same for the
arm and for the per-seed difference arm - baseline under each source: the share of the unpaired
variance that pairing leaves, per source. It closes with the smallest difference detectable at 80%
power with 3, 5 and 10 paired seeds (the ordinary runs' paired differences; without an arm, the
unpaired comparison). Pure functions; tested by simulation (tests/test_noise.py).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import stats as sps

from harness.stats.inference import min_detectable_difference

METHOD = ("per source, the sd of the test loss over its runs with a chi-square interval on n - 1 degrees of freedom "
          "(a one-way random-effects model, one factor at a time: the runs of a source differ only by that random "
          "stream); its share of the three sources' summed variance; each source's sd includes the replicate "
          "(nondeterminism) floor, zero on CPU; for a paired arm, the sd of arm - baseline per source and the share "
          "of the unpaired variance var(arm) + var(baseline) that pairing leaves")
SOURCES = ("init", "data", "dropout")
ALL, REPLICATE = "", "replicate"
LABELS = {"init": "initial weights", "data": "data order", "dropout": "dropout masks",
          ALL: "all three (ordinary seeds)", REPLICATE: "none (identical seeds)"}
DETECT_SEEDS = (3, 5, 10)


def sd_interval(values, alpha: float = 0.05) -> tuple[int, float, float, float]:
    """(n, sd, low, high): the sample sd and its chi-square interval (normal data)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    n = len(x)
    if n < 2:
        return n, math.nan, math.nan, math.nan
    s2 = float(np.var(x, ddof=1))
    df = n - 1
    low = math.sqrt(df * s2 / sps.chi2.ppf(1 - alpha / 2, df))
    high = math.sqrt(df * s2 / sps.chi2.ppf(alpha / 2, df))
    return n, math.sqrt(s2), low, high


def components(by_source: dict[str, np.ndarray], alpha: float = 0.05) -> pd.DataFrame:
    """One row per source present (init, data, dropout, all three, replicate): n, sd with its
    interval, and the share of the three sources' summed variance."""
    rows = []
    for source in (*SOURCES, ALL, REPLICATE):
        if source in by_source:
            n, sd, low, high = sd_interval(by_source[source], alpha)
            rows.append({"source": source, "label": LABELS[source], "n": n, "sd": sd, "low": low, "high": high})
    out = pd.DataFrame(rows, columns=["source", "label", "n", "sd", "low", "high"])
    sources = out["source"].isin(SOURCES)
    total = float((out.loc[sources, "sd"] ** 2).sum())
    out["share"] = np.nan
    if total > 0:
        out.loc[sources, "share"] = out.loc[sources, "sd"] ** 2 / total
    return out


def paired_components(base: dict[str, pd.Series], arm: dict[str, pd.Series], alpha: float = 0.05) -> pd.DataFrame:
    """Per source: sd of arm - baseline over the seeds both ran (same streams), and the share of the
    unpaired variance var(arm) + var(baseline) that pairing leaves (1: it cancels nothing)."""
    rows = []
    for source in (*SOURCES, ALL):
        if source not in base or source not in arm:
            continue
        common = base[source].index.intersection(arm[source].index)
        a, b = arm[source].loc[common].to_numpy(float), base[source].loc[common].to_numpy(float)
        n, sd, low, high = sd_interval(a - b, alpha)
        unpaired = float(np.var(a, ddof=1) + np.var(b, ddof=1)) if n >= 2 else math.nan
        left = sd * sd / unpaired if n >= 2 and unpaired > 0 else math.nan
        rows.append({"source": source, "label": LABELS[source], "n": n, "sd_diff": sd, "low": low, "high": high,
                     "left": left})
    return pd.DataFrame(rows, columns=["source", "label", "n", "sd_diff", "low", "high", "left"])


def detectable(sd: float, paired: bool, alpha: float = 0.05, power: float = 0.8) -> dict[int, float]:
    """Smallest difference detectable at `power` with 3, 5 and 10 seeds: paired (sd of the per-seed
    differences) or unpaired (sd of one arm's test loss, equal seeds per arm)."""
    return {n: min_detectable_difference(sd, n, alpha, power, paired=paired) for n in DETECT_SEEDS}
