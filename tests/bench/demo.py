"""Benchmark: wall time of the README's main job, `harness sweep qkv_bias --seeds 5` (tiny preset,
embedded Shakespeare, true matched Chinchilla budgets), from an empty results folder and token cache.

    python tests/bench/demo.py [--seeds 5] [--jobs N|auto] [--keep DIR]

Prints the wall time of the whole sweep, the per-run figures from the results store, and (one run
at a time) the per-run overhead: the sweep's wall time not spent in the workers' training and
evaluation, per run (process start-up, imports, recording).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--jobs", help="passed to harness sweep --jobs (default: its own default)")
    parser.add_argument("--keep", type=Path, help="results folder to keep (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = args.keep or Path(tmp) / "results"
        env = os.environ | {"HARNESS_CACHE": str(Path(tmp) / "cache")}
        cmd = [sys.executable, "-m", "harness", "sweep", "qkv_bias", "--seeds", str(args.seeds), "--results", str(results)]
        if args.jobs:
            cmd += ["--jobs", args.jobs]
        start = time.perf_counter()
        proc = subprocess.run(cmd, env=env)
        wall = time.perf_counter() - start
        if proc.returncode != 0:
            print(f"sweep failed with exit code {proc.returncode}", file=sys.stderr)
            return proc.returncode
        runs = pd.read_parquet(results / "runs.parquet")
        print(f"\ndemo sweep: {len(runs)} runs in {wall:.1f} s wall ({wall / 60:.1f} min) on {os.cpu_count()} cores")
        print(f"per run: {runs['wall_time_s'].mean():.1f} s in the worker (train + eval), "
              f"{runs['tokens_seen'].iloc[0]:,} tokens, {runs['tokens_per_s'].median():,.0f} tokens/s median")
        if args.jobs == "1":
            print(f"per-run overhead: {(wall - runs['wall_time_s'].sum()) / len(runs):.2f} s outside the workers' "
                  "training and evaluation (one run at a time)")
        for r in runs.itertuples():
            print(f"  {r.arm} seed {r.seed}: test loss {r.test_loss:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
