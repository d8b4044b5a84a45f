"""Weights & Biases: a sweep is a W&B group, each recorded attempt a run in it (job type "run"),
each state of the sweep's report a run of job type "summary".

Where: W&B's own settings, WANDB_MODE (offline writes run files under WANDB_DIR, to upload later
with `wandb sync`), WANDB_PROJECT (default "harness"), WANDB_ENTITY. A run's id is derived from its
harness key. W&B cannot be asked offline what it holds, so what has been published where is kept
in RESULTS/trackers/wandb.json, which makes publishing twice add nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from harness.core.files import atomic_write_json
from harness.trackers.records import TrackedRun, TrackedSweep


def run_id(key: str) -> str:
    return "h" + hashlib.sha256(key.encode()).hexdigest()[:23]


def by_step(series: dict[str, list[tuple[int, float]]]) -> list[tuple[int, dict[str, float]]]:
    """W&B logs one dict per step, steps ascending."""
    steps: dict[int, dict[str, float]] = {}
    for name, points in series.items():
        for step, value in points:
            steps.setdefault(step, {})[name] = value
    return sorted(steps.items())


def short_tags(tags: dict[str, str]) -> list[str]:
    """The tags W&B filters by (64 characters at most each)."""
    picks = ("arm", "seed", "attempt", "status", "preset", "kind")
    return [f"{p}:{tags['harness.' + p]}"[:64] for p in picks if tags.get("harness." + p)] + (
        ["counted"] if tags.get("harness.counted") == "true" else [])


class WandbTracker:
    name = "wandb"

    def __init__(self, results: Path) -> None:
        import wandb

        self.wandb = wandb
        self.project = os.environ.get("WANDB_PROJECT") or "harness"
        self.mode = os.environ.get("WANDB_MODE") or "online"
        self.destination = f"{self.mode}:{os.environ.get('WANDB_ENTITY', '')}/{self.project}" + (
            f" in {Path(os.environ.get('WANDB_DIR') or '.').resolve()}" if self.mode == "offline" else "")
        self.ledger_path = Path(results) / "trackers" / "wandb.json"
        self.ledger: dict[str, dict[str, str]] = {}

    def where(self) -> str:
        return f"W&B {self.destination}"

    def connect(self) -> None:
        if self.ledger_path.exists():
            self.ledger = json.loads(self.ledger_path.read_text())
        self.ledger.setdefault(self.destination, {})

    def has(self, sweep: str, key: str) -> bool:
        return key in self.ledger[self.destination]

    def _publish(self, key: str, group: str, name: str, job_type: str, tags: dict[str, str], config: dict,
                 series: dict[str, list[tuple[int, float]]], summary: dict[str, float], ok: bool) -> None:
        wandb = self.wandb
        run = wandb.init(project=self.project, group=group, name=name, id=run_id(key), job_type=job_type,
                         config={**config, "harness": tags | {"harness.key": key}}, tags=short_tags(tags),
                         reinit="create_new", resume="allow",
                         settings=wandb.Settings(silent=True, console="off", save_code=False, init_timeout=30))
        for step, values in by_step(series):
            run.log(values, step=step)
        run.summary.update(summary)
        run.finish(exit_code=0 if ok else 1)
        self.ledger[self.destination][key] = run_id(key)
        atomic_write_json(self.ledger_path, self.ledger)

    def publish_run(self, run: TrackedRun) -> None:
        final = {name: [(run.steps, value)] for name, value in run.final.items()}
        self._publish(run.key, run.sweep, run.name, "run", run.tags, run.config, run.series | final, run.final,
                      run.status == "completed")

    def publish_sweep(self, sweep: TrackedSweep) -> None:
        self._publish(sweep.key, sweep.sweep, sweep.name, "summary", sweep.tags | {"harness.state": sweep.state},
                      {}, sweep.series, {f"verdict/{k}": v for k, v in sweep.metrics.items()}, True)
