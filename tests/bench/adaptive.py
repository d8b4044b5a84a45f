"""Benchmark: adaptive sweeps against the fixed design, by simulation through the sweep's own rule.

    python tests/bench/adaptive.py [--sweeps 10000] [--max-seeds 20] [--min-seeds 3]

Prints (a) the family-wise false-positive rate on null data (5 arms, a decision looked at after
every seed), (b) interval coverage at the stopping time for true differences, (c) on a realistic
sweep (the seed author's eight interventions with his one-seed differences, paired noise 0.002 to
0.007, three arms near the detection limit and two null arms): expected runs against the fixed
design at the same maximum seeds, and each arm's power against the fixed design's (Holm, and
Bonferroni), (d) the family-wise false positives when the null paired differences are skewed
(--skew, the report's Methods quote it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/
from test_adaptive import REALISTIC  # noqa: E402

from harness.stats.sequential import BETTER, METHOD, WORSE, null_error_under_skew, simulate  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweeps", type=int, default=10000)
    parser.add_argument("--max-seeds", type=int, default=20)
    parser.add_argument("--min-seeds", type=int, default=3)
    parser.add_argument("--alpha", type=float, default=0.05)
    parser.add_argument("--skew", type=float, default=1.25, help="(d): skewness of the null paired differences")
    args = parser.parse_args()
    a, lo, hi, n = args.alpha, args.min_seeds, args.max_seeds, args.sweeps
    t0 = time.perf_counter()
    print(f"method: {METHOD}\nalpha {a}, seeds {lo}..{hi}, {n:,} simulated sweeps each\n")

    null = simulate(np.zeros(5), 1.0, a, lo, hi, n, seed=1)
    fwer = np.isin(null["state"], [BETTER, WORSE]).any(axis=1).mean()
    print(f"(a) null data, 5 arms: family-wise false-positive rate {fwer:.4f} (alpha {a}; "
          f"simulation sd {np.sqrt(a * (1 - a) / n):.4f}); mean seeds per arm {null['n'].mean():.1f}")

    effects = np.array([-0.02, -0.005, 0.0, 0.003, 0.01])
    cov = simulate(effects, 0.004, a, lo, hi, n, margin=0.004, seed=2)
    covered = ((cov["low"] <= effects) & (effects <= cov["high"])).mean(axis=0)
    print("(b) coverage at the stopping time (noise sd 0.004, margin 0.004): "
          + ", ".join(f"diff {e:+.3f}: {c:.4f}" for e, c in zip(effects, covered)) + f" (at least {1 - a:g})")

    eff, sds = REALISTIC["effect"].to_numpy(), REALISTIC["noise_sd"].to_numpy()
    sim = simulate(eff, sds, a, lo, hi, n, seed=3)
    runs = sim["n"].sum(axis=1) + sim["n"].max(axis=1)
    fixed_runs = (1 + len(eff)) * hi
    right = np.where(eff < 0, sim["state"] == BETTER, np.where(eff > 0, sim["state"] == WORSE, False))
    holm = sim["holm"] & (np.sign(sim["fixed_mean"]) == np.sign(eff)) & (eff != 0)
    bonf = np.where(eff < 0, sim["fixed_high"] < 0, np.where(eff > 0, sim["fixed_low"] > 0, False))
    print(f"(c) realistic sweep, {len(eff)} arms + baseline: expected runs {runs.mean():.1f} of the fixed design's "
          f"{fixed_runs} ({100 * runs.mean() / fixed_runs:.1f}%); null arms' family-wise false positives "
          f"{np.isin(sim['state'][:, eff == 0], [BETTER, WORSE]).any(axis=1).mean():.4f}\n")
    print("| arm | true diff | noise sd | mean seeds | power adaptive | power fixed (Holm) | power fixed (Bonferroni) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for j, row in REALISTIC.iterrows():
        power = "-" if eff[j] == 0 else f"{right[:, j].mean():.3f}"
        print(f"| {row.arm} | {eff[j]:+.4f} | {sds[j]:.3f} | {sim['n'][:, j].mean():.1f} | {power} | "
              f"{'-' if eff[j] == 0 else f'{holm[:, j].mean():.3f}'} | {'-' if eff[j] == 0 else f'{bonf[:, j].mean():.3f}'} |")
    worst = (holm.mean(axis=0) - right.mean(axis=0))[eff != 0].max()
    print(f"\nworst power loss against the fixed design (Holm): {100 * worst:.1f} points")
    for skew in (0.0, args.skew):
        e = null_error_under_skew(skew, 8, a, lo, hi, n, seed=4)
        print(f"(d) 8 null arms, paired differences of skewness {skew:g}: family-wise false positives, adaptive "
              f"{e['adaptive']:.3f}, fixed-n Holm at {lo} seeds {e[f'holm_{lo}']:.3f}, at {hi} seeds {e[f'holm_{hi}']:.3f}")
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
