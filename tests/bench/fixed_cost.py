"""Benchmark: a run's fixed cost, the wall time a sweep spends per run outside the workers' training
and evaluation (process start, imports, corpus, checkpoint checks, recording).

    python tests/bench/fixed_cost.py [--seeds 3] [--repeats 2] [--checkout DIR]

Per mode (warm workers, cold workers; --checkout: also that harness checkout's own CLI, run from
its folder, for a figure before a change), interleaved, it times a micro sweep of 2 x seeds runs
and one of 2 x (2 x seeds) runs, one run at a time, and prints the marginal cost: the extra wall
time of the extra runs minus their training and evaluation time, per run. The sweep's own start
(planning, loading the corpus) cancels out of the difference.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[2]


def sweep(results: Path, seeds: int, cwd: Path, warm: bool, cache: Path) -> tuple[float, float, int]:
    """(wall seconds, seconds the workers trained and evaluated, runs)."""
    env = os.environ | {"HARNESS_WARM_WORKERS": "1" if warm else "0", "HARNESS_CACHE": str(cache)}
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "harness", "sweep", "qkv_bias", "--seeds", str(seeds), "--preset", "micro",
                    "--tokens", "2000", "--jobs", "1", "--results", str(results)], cwd=cwd, env=env, check=True,
                   capture_output=True)
    wall = time.perf_counter() - start
    rows = pd.read_parquet(results / "runs.parquet")
    return wall, float(rows["wall_time_s"].sum()), len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--checkout", type=Path, help="another harness checkout to time the same way (cold)")
    args = parser.parse_args()
    modes = [("warm", REPO, True), ("cold", REPO, False)]
    if args.checkout:
        modes.append((f"{args.checkout.name} (its own CLI)", args.checkout, True))
    figures: dict[str, list[float]] = {name: [] for name, _, _ in modes}
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        for r in range(args.repeats):
            for m, (name, cwd, warm) in enumerate(modes):
                small = sweep(Path(tmp) / f"{m}-{r}-small", args.seeds, cwd, warm, cache)
                large = sweep(Path(tmp) / f"{m}-{r}-large", 2 * args.seeds, cwd, warm, cache)
                extra = large[2] - small[2]
                figures[name].append(((large[0] - small[0]) - (large[1] - small[1])) / extra)
                print(f"{name}: {small[2]} runs {small[0]:.1f} s, {large[2]} runs {large[0]:.1f} s -> "
                      f"{figures[name][-1]:.2f} s per run outside training and evaluation", flush=True)
    print("\n| mode | fixed cost per run (median) |\n|---|---:|")
    for name, values in figures.items():
        print(f"| {name} | {statistics.median(values):.2f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
