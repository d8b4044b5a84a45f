"""trackio: a sweep is a trackio group, each recorded attempt a run in it, each state of the
sweep's report a "summary" run; trackio keeps them in its local store (TRACKIO_DIR, default
$HF_HOME/trackio), `trackio show` draws them.

Where: TRACKIO_PROJECT (default "harness"). trackio names runs uniquely per project, so a run's
name starts with its sweep; its config carries harness.key, which is how publishing twice finds
what is already there (through trackio's own store).
"""

from __future__ import annotations

import os

from harness.trackers.records import TrackedRun, TrackedSweep
from harness.trackers.to_wandb import by_step


class TrackioTracker:
    name = "trackio"

    def __init__(self) -> None:
        import trackio

        self.trackio = trackio
        self.project = os.environ.get("TRACKIO_PROJECT") or "harness"
        self.keys: set[str] = set()

    def where(self) -> str:
        from trackio.utils import TRACKIO_DIR

        return f"trackio project {self.project} in {TRACKIO_DIR}"

    def connect(self) -> None:
        from trackio.sqlite_storage import SQLiteStorage

        if self.project in SQLiteStorage.get_projects():
            configs = SQLiteStorage.get_all_run_configs(self.project) or {}
            self.keys = {c.get("harness.key") for c in configs.values() if isinstance(c, dict)}

    def has(self, sweep: str, key: str) -> bool:
        return key in self.keys

    def _publish(self, key: str, group: str, name: str, config: dict, series: dict, final_step: int | None,
                 final: dict[str, float]) -> None:
        trackio = self.trackio
        trackio.init(project=self.project, name=f"{group}/{name}", group=group, config={**config, "harness.key": key},
                     resume="never", embed=False, auto_log_gpu=False, auto_log_cpu=False)
        points = by_step(series)
        for step, values in points:
            if final_step is not None and step == final_step:
                values = values | final
            trackio.log(values, step=step)
        if final and final_step is not None and all(step != final_step for step, _ in points):
            trackio.log(final, step=final_step)
        trackio.finish()
        self.keys.add(key)

    def publish_run(self, run: TrackedRun) -> None:
        self._publish(run.key, run.sweep, run.name, run.config | run.tags, run.series, run.steps, run.final)

    def publish_sweep(self, sweep: TrackedSweep) -> None:
        last = max((step for points in sweep.series.values() for step, _ in points), default=0)
        self._publish(sweep.key, sweep.sweep, sweep.name, sweep.tags | {"harness.state": sweep.state},
                      sweep.series, last, {f"verdict/{k}": v for k, v in sweep.metrics.items()})
