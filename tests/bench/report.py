"""Benchmark: the time `harness report` takes over many synthetic runs.

    python tests/bench/report.py --bench [--runs 10000] [--arms 10] [--sweeps 1] [--no-plots]
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import pandas as pd
from rich.console import Console

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/
from synthetic import synthetic_results, write_results  # noqa: E402

from harness.report.build import Fmt, run_report  # noqa: E402


def bench_report(n_runs: int = 10_000, n_arms: int = 10, n_sweeps: int = 1,
                 curve_points: int = 50, plots: bool = True, fmt: Fmt = "markdown",
                 quiet: bool = False) -> float:
    """Time ``run_report`` over ``n_runs`` synthetic runs (n_sweeps x n_arms x seeds); prints
    and returns the seconds taken (data generation not included)."""
    seeds = max(2, n_runs // (n_arms * n_sweeps))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        all_runs, all_curves = [], []
        arms = {"baseline": 0.0, **{f"arm{i}": -0.001 * i for i in range(1, n_arms)}}
        for k in range(n_sweeps):
            r, c = synthetic_results(sweep=f"sweep{k}", arms=arms, seeds=seeds, rng_seed=k,
                                     curve_points=curve_points)
            all_runs.append(r)
            all_curves.append(c)
        runs = pd.concat(all_runs, ignore_index=True)
        write_results(tmp / "results", runs, pd.concat(all_curves, ignore_index=True))
        t0 = time.perf_counter()
        run_report(tmp / "results", None, margin=0.005, fmt=fmt, console=Console(file=io.StringIO(), width=160),
                   reports_dir=tmp / "reports", plots=plots, stdout=io.StringIO())
        dt = time.perf_counter() - t0
    if not quiet:
        print(f"report over {len(runs):,} runs ({n_sweeps} sweep(s) x {n_arms} arms x {seeds} "
              f"seeds, {curve_points} curve points each, format {fmt}, plots {plots}): "
              f"{dt:.2f} s")
    return dt


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python tests/bench/report.py",
                                 description="Benchmark the report on synthetic data.")
    ap.add_argument("--bench", action="store_true", help="time a report over synthetic runs")
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--arms", type=int, default=10)
    ap.add_argument("--sweeps", type=int, default=1)
    ap.add_argument("--curve-points", type=int, default=50)
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--format", choices=["markdown", "json"], default="markdown")
    args = ap.parse_args(argv)
    if not args.bench:
        ap.print_help()
        return 0
    bench_report(args.runs, args.arms, args.sweeps, args.curve_points, not args.no_plots,
                 args.format)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
