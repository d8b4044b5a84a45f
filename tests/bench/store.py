"""Benchmark: planning and resuming a sweep over a large results store.

    python tests/bench/store.py [--runs 5000] [--arms 10]

Builds a results folder holding RUNS completed runs of one micro-preset sweep (synthetic rows with
the run ids the sweep plans; no training), then times, as a user runs them:
  * `harness sweep ... --dry-run`  (plan, budgets, time estimate from the store)
  * `harness sweep ...`            (a resumed sweep: every run is already in the store)
  * `harness status`
and prints the seconds of each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


def planned_specs(arms: list[str], seeds: int, results: Path):
    from harness.planning.plan import build_plan
    from harness.planning.request import SweepRequest

    request = SweepRequest(tuple(arms), seeds=tuple(range(seeds)), preset="micro", name="bench").check()
    return build_plan(request, 1, False, results).specs


def synthetic_store(results: Path, specs) -> None:
    """One completed row per planned run, written as the store writes its tables (no manifest:
    the first reader adopts the folder, as it does for a folder written before manifests)."""
    from harness.store.results import RUN_SCHEMA
    rows = []
    for i, s in enumerate(specs):
        rows.append({name: None for name in RUN_SCHEMA.names} | {
            "run_id": s.run_id, "attempt": 1, "sweep": s.sweep, "arm": s.arm, "interventions": "",
            "seed": s.seed, "init_seed": s.init_seed, "data_seed": s.data_seed, "dropout_seed": s.dropout_seed,
            "preset": s.preset, "config": "{}", "config_hash": s.config_hash, "overrides": "{}",
            "params": s.params, "planned_tokens": s.tokens, "tokens_seen": s.tokens, "steps": s.steps,
            "tokens_per_step": s.tokens_per_step, "world_size": 1, "device": "cpu", "dtype": "float32",
            "versions": "{}", "git_commit": "", "status": "completed", "reason": "",
            "test_loss": 3.0 + 1e-4 * (i % 97), "test_tokens": 1000, "test_set_id": "synthetic",
            "train_loss": 3.0, "wall_time_s": 10.0, "tokens_per_s": 1000.0, "started_at": "", "finished_at": "",
            "run_dir": str(results / "runs" / s.run_id)})
    results.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=RUN_SCHEMA), results / "runs.parquet", compression="zstd")


def timed(cmd: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5000)
    parser.add_argument("--arms", type=int, default=10, help="arms including the baseline")
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from harness.core.config import intervention_names

    arms = [a for a in intervention_names() if a not in ("baseline", "no_amp")][: args.arms - 1]
    seeds = args.runs // (len(arms) + 1)
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        env = os.environ | {"HARNESS_CACHE": os.environ.get("HARNESS_CACHE", str(Path(tmp) / "cache"))}
        os.environ.update(env)
        specs = planned_specs(arms, seeds, results)
        synthetic_store(results, specs)
        base = [sys.executable, "-m", "harness", "sweep", *arms, "--preset", "micro", "--seeds", str(seeds),
                "--name", "bench", "--results", str(results)]
        print(f"store: {len(specs):,} completed runs ({len(arms) + 1} arms x {seeds} seeds, micro preset)")
        print(f"  sweep --dry-run : {timed(base + ['--dry-run'], env):7.2f} s")
        print(f"  resumed sweep   : {timed(base, env):7.2f} s  (every run already in the store)")
        print(f"  status          : {timed([sys.executable, '-m', 'harness', 'status', '--results', str(results)], env):7.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
