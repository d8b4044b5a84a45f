"""Synthetic results stores for the report's tests and benchmark: runs and curves in the store's
schema, with a known true difference per arm and a seed effect shared by all arms (pairing)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

RUNS_FILE, CURVES_FILE = "runs.parquet", "curves.parquet"


def synthetic_results(
    *, sweep: str = "demo", arms: dict[str, float] | None = None, seeds: int = 5,
    sd: float = 0.002, seed_sd: float = 0.002, base_loss: float = 3.69, curve_points: int = 20,
    rng_seed: int = 0, preset: str = "gpt2-small", planned_tokens: int = 3_260_252_160,
    test_set_id: str = "fineweb-test-v1",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic (runs, curves) in the results-store schema, for tests and the benchmark.

    ``arms`` maps arm name -> true difference from ``base_loss`` (default baseline 0 and
    qkv_bias -0.02). Each seed has a shared effect (sd ``seed_sd``, common to all arms: the
    paired design) plus per-run noise (sd ``sd``).
    """
    arms = arms if arms is not None else {"baseline": 0.0, "qkv_bias": -0.02}
    rng = np.random.default_rng(rng_seed)
    seed_effect = rng.normal(0, seed_sd, seeds)
    steps = np.linspace(0, 1000, curve_points).astype(np.int64)
    runs, curves = [], []
    for arm, delta in arms.items():
        losses = base_loss + delta + seed_effect + rng.normal(0, sd, seeds)
        chash = hashlib.sha256(f"{preset}/{arm}".encode()).hexdigest()[:12]
        run_ids = np.array([f"{sweep}-{arm}-s{s}" for s in range(seeds)], dtype=object)
        runs.append(pd.DataFrame({
            "run_id": run_ids, "attempt": np.int64(1), "sweep": sweep, "arm": arm,
            "interventions": "" if arm == "baseline" else arm,
            "seed": np.arange(seeds, dtype=np.int64), "preset": preset,
            "config": json.dumps({"preset": preset, "arm": arm}), "config_hash": chash,
            "params": np.int64(163_009_536), "planned_tokens": np.int64(planned_tokens),
            "tokens_seen": np.int64(planned_tokens), "steps": np.int64(1000),
            "world_size": np.int64(1), "device": "cpu", "dtype": "float32",
            "versions": json.dumps({"harness": "0.1.0", "torch": "x"}),
            "git_commit": "abc123", "status": "completed", "reason": "",
            "test_loss": losses, "test_tokens": np.int64(19_660_800),
            "test_set_id": test_set_id, "train_loss": losses - 0.01, "wall_time_s": 100.0,
            "tokens_per_s": 1000.0,
            "finished_at": [f"2025-01-01T00:{s // 60 % 60:02d}:{s % 60:02d}+00:00"
                            for s in range(seeds)],
        }))
        if curve_points:
            final = np.repeat(losses, curve_points)
            st_ = np.tile(steps, seeds)
            curves.append(pd.DataFrame({
                "run_id": np.repeat(run_ids, curve_points), "attempt": np.int64(1),
                "step": st_, "tokens": st_ * 1024,
                "train_loss": final + (11.0 - final) * np.exp(-st_ / 150.0)
                + rng.normal(0, 0.01, st_.size),
                "lr": 4e-4,
            }))
    runs_df = pd.concat(runs, ignore_index=True)
    curves_df = (pd.concat(curves, ignore_index=True) if curves else
                 pd.DataFrame({"run_id": pd.Series(dtype=str),
                               "attempt": pd.Series(dtype="int64"),
                               "step": pd.Series(dtype="int64"),
                               "tokens": pd.Series(dtype="int64"),
                               "train_loss": pd.Series(dtype=float),
                               "lr": pd.Series(dtype=float)}))
    return runs_df, curves_df


def write_results(results_dir: Path, runs: pd.DataFrame, curves: pd.DataFrame | None) -> None:
    """Write (runs, curves) as the two Parquet files of a results folder."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    runs.to_parquet(results_dir / RUNS_FILE, index=False)
    if curves is not None:
        curves.to_parquet(results_dir / CURVES_FILE, index=False)
