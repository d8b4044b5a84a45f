"""What pairing by seed bought: arms that share seeds with the baseline start from the same shared
weights and see the same data order, so their test losses move together across seeds and the
paired difference is far less noisy than an unpaired one.

For an arm and the baseline over their shared seeds (a[s], b[s]):
  correlation r      Pearson's r of a and b across seeds
  variance ratio R   unpaired / paired variance of the difference:
                     (var(a) + var(b)) / var(a - b) = (1 + var(a + b) / var(a - b)) / 2
  equivalent seeds   n x R: how many seeds per arm an unpaired design would need for the same
                     precision as n paired seeds
Interval for R: with u = a + b and v = a - b, var(u) / var(v) has an F(n-1, n-1) pivot when the
arm's and the baseline's seed variances are equal (u and v are then independent; the
Pitman-Morgan setting), which gives R's interval in closed form; with unequal variances it is
approximate. Pure functions; tested by simulation (coverage) in tests/test_adaptive.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


def fraction(ratio: float) -> str:
    """'1/38 of' for a large gain, '0.84 times' when pairing bought little or cost."""
    return f"1/{ratio:,.0f} of" if ratio >= 2 else f"{1 / ratio:.2f} times"


@dataclass(frozen=True)
class PairingGain:
    n: int  # shared seeds
    correlation: float
    variance_ratio: float  # unpaired / paired
    ratio_low: float
    ratio_high: float
    equivalent_seeds: float  # n x variance_ratio

    def sentence(self) -> str:
        if not math.isfinite(self.variance_ratio):
            return "pairing's gain is not computable here (fewer than 3 shared seeds, or no spread)"
        return (f"arm and baseline correlate at r = {self.correlation:.2f} across seeds, so the paired difference "
                f"has {fraction(self.variance_ratio)} the unpaired variance: {self.n} paired seeds are worth about "
                f"{self.equivalent_seeds:,.0f} unpaired ones")


def pairing_gain(arm, baseline, alpha: float = 0.05) -> PairingGain:
    """Correlation, variance ratio (with a 1 - alpha interval) and equivalent unpaired seeds of
    paired test losses (arrays aligned by seed; non-finite pairs are dropped)."""
    a, b = np.asarray(arm, dtype=float), np.asarray(baseline, dtype=float)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    n = len(a)
    nan = math.nan
    if n < 3:
        return PairingGain(n, nan, nan, nan, nan, nan)
    var_u, var_v = float(np.var(a + b, ddof=1)), float(np.var(a - b, ddof=1))
    var_a, var_b = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    if var_v == 0 or var_a == 0 or var_b == 0:
        return PairingGain(n, nan, nan, nan, nan, nan)
    r = float(np.corrcoef(a, b)[0, 1])
    ratio = (var_a + var_b) / var_v
    f = var_u / var_v
    lo_f = f / sps.f.ppf(1 - alpha / 2, n - 1, n - 1)
    hi_f = f / sps.f.ppf(alpha / 2, n - 1, n - 1)
    return PairingGain(n, r, ratio, (1 + lo_f) / 2, (1 + hi_f) / 2, n * ratio)
