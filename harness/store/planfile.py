"""A sweep's plan on disk: RESULTS/sweeps/<sweep>.json (what it will run; how an adaptive sweep
decides), read by `harness status` and the report, and <sweep>.jobs.json (run id -> Slurm or local
job id). JSON only: reading a plan never imports torch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness.core.files import atomic_write_json

PLANS = "sweeps"


def plan_path(results: Path, sweep: str) -> Path:
    return Path(results) / PLANS / f"{sweep}.json"


def jobs_path(results: Path, sweep: str) -> Path:
    return Path(results) / PLANS / f"{sweep}.jobs.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def save_plan(plan) -> Path:
    """RESULTS/sweeps/<name>.json: what the sweep (a harness.planning.plan.Plan) intends to run, so status
    can show what is queued, and how an adaptive sweep decides."""
    path = plan_path(plan.results, plan.sweep)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {
        "sweep": plan.sweep, "preset": plan.preset, "arms": plan.arms, "seeds": plan.seeds,
        "world_size": plan.world_size,
        "budgets": {arm: b.as_dict() for arm, b in plan.budgets.items()},
        "runs": [{"run_id": s.run_id, "arm": s.arm, "seed": s.seed, "config_hash": s.config_hash} for s in plan.specs],
        "adaptive": plan.adaptive.as_dict() if plan.adaptive else None,
        "noise": plan.noise,
        "inert": plan.inert,
    })
    return path


def read_plan(results: Path, sweep: str) -> dict[str, Any]:
    """A saved plan ({} when there is none or it is unreadable)."""
    plan = _read_json(plan_path(results, sweep))
    return plan if isinstance(plan, dict) else {}


def saved_sweeps(results: Path) -> list[str]:
    """Names of the sweeps with a saved plan, sorted by file name."""
    folder = Path(results) / PLANS
    names = []
    if folder.is_dir():
        for p in sorted(folder.glob("*.json")):
            data = None if p.name.endswith(".jobs.json") else _read_json(p)
            if isinstance(data, dict) and isinstance(data.get("sweep"), str):
                names.append(data["sweep"])
    return names


def record_jobs(results: Path, sweep: str, jobs: dict[str, str]) -> None:
    """Add run id -> job id entries to RESULTS/sweeps/<sweep>.jobs.json."""
    path = jobs_path(results, sweep)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):
        known = _read_json(path) or {}
        known.update(jobs)
        atomic_write_json(path, known)


def read_jobs(results: Path, sweep: str) -> dict[str, str]:
    jobs = _read_json(jobs_path(results, sweep))
    return jobs if isinstance(jobs, dict) else {}
