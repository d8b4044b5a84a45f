"""MLflow: a sweep is a parent run, each recorded attempt a nested child run, each state of the
sweep's report a nested "summary" run; all in one experiment.

Where: MLflow's own settings, MLFLOW_TRACKING_URI (a server, or a local store) and
MLFLOW_EXPERIMENT_NAME (default "harness"). Every run harness creates carries the tag harness.key;
a run counts as there once it also carries harness.published (a publication that was cut off
half-way is deleted and written again), so publishing twice adds nothing.
"""

from __future__ import annotations

import os
import time

from harness.trackers.records import TrackedRun, TrackedSweep

KEY, DONE = "harness.key", "harness.published"
PARENT_STEP = "harness.step"  # the parent's last verdict step: later states never log below it
PARAM_LIMIT, BATCH_LIMIT = 6000, 1000  # MLflow's longest param value; metrics per log_batch call


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


class MlflowTracker:
    name = "mlflow"

    def __init__(self) -> None:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")  # a hung server costs seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        from mlflow import MlflowClient

        self.client = MlflowClient()
        self.experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or "harness"
        self._experiment_id: str | None = None
        self._known: dict[str, dict[str, tuple[str, bool]]] = {}  # sweep -> key -> (mlflow run id, published)

    def where(self) -> str:
        return f"{self.client.tracking_uri}, experiment {self.experiment}"

    def connect(self) -> None:
        found = self.client.get_experiment_by_name(self.experiment)
        self._experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)

    def _runs(self, sweep: str) -> dict[str, tuple[str, bool]]:
        if sweep not in self._known:
            known, token = {}, None
            while True:
                page = self.client.search_runs([self._experiment_id], f"tags.`harness.sweep` = '{_quote(sweep)}'",
                                               max_results=1000, page_token=token)
                for run in page:
                    tags = run.data.tags
                    if KEY in tags:
                        known[tags[KEY]] = (run.info.run_id, tags.get(DONE) == "true")
                token = page.token
                if not token:
                    break
            self._known[sweep] = known
        return self._known[sweep]

    def has(self, sweep: str, key: str) -> bool:
        return self._runs(sweep).get(key, ("", False))[1]

    def _parent(self, sweep: str) -> str:
        key = f"{sweep}/sweep"
        found = self._runs(sweep).get(key)
        if found:
            return found[0]
        run = self.client.create_run(self._experiment_id, run_name=sweep,
                                     tags={KEY: key, DONE: "true", "harness.sweep": sweep, "harness.kind": "sweep"})
        self.client.set_terminated(run.info.run_id, "FINISHED")
        self._runs(sweep)[key] = (run.info.run_id, True)
        return run.info.run_id

    def _child(self, sweep: str, key: str, name: str, tags: dict[str, str]) -> str:
        stale = self._runs(sweep).get(key)
        if stale:  # cut off half-way before: written again from the start
            self.client.delete_run(stale[0])
        run = self.client.create_run(self._experiment_id, run_name=name,
                                     tags={**tags, KEY: key, "mlflow.parentRunId": self._parent(sweep)})
        self._runs(sweep)[key] = (run.info.run_id, False)
        return run.info.run_id

    def _log(self, run_id: str, series: dict[str, list[tuple[int, float]]], params: dict | None = None) -> None:
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        metrics = [Metric(name, value, now, step) for name, points in series.items() for step, value in points]
        for i in range(0, len(metrics), BATCH_LIMIT):
            self.client.log_batch(run_id, metrics=metrics[i:i + BATCH_LIMIT])
        items = [Param(k[:250], str(v)[:PARAM_LIMIT]) for k, v in (params or {}).items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(run_id, params=items[i:i + 100])

    def _done(self, sweep: str, key: str, run_id: str, ok: bool) -> None:
        self.client.set_tag(run_id, DONE, "true")
        self.client.set_terminated(run_id, "FINISHED" if ok else "FAILED")
        self._runs(sweep)[key] = (run_id, True)

    def publish_run(self, run: TrackedRun) -> None:
        run_id = self._child(run.sweep, run.key, run.name, run.tags | {"harness.kind": "run"})
        final = {name: [(run.steps, value)] for name, value in run.final.items()}
        self._log(run_id, run.series | final, run.config)
        self._done(run.sweep, run.key, run_id, run.status == "completed")

    def publish_sweep(self, sweep: TrackedSweep) -> None:
        run_id = self._child(sweep.sweep, sweep.key, sweep.name, sweep.tags | {"harness.state": sweep.state})
        verdicts = {f"verdict/{name}": [(sweep.runs, value)] for name, value in sweep.metrics.items()}
        self._log(run_id, sweep.series | verdicts)
        self._show_on_parent(sweep)
        self._done(sweep.sweep, sweep.key, run_id, True)

    def _show_on_parent(self, sweep: TrackedSweep) -> None:
        """The parent shows the latest state: its verdict metrics by runs counted (never at a step
        below one already logged, so the newest value is the one MLflow calls latest; one the state
        lacks, of an arm withheld since or of a refused state, reads NaN), and exactly its summary
        tags (an earlier state's verdict, withheld or refused tag is deleted)."""
        parent = self._parent(sweep.sweep)
        shown = self.client.get_run(parent).data
        step = max(sweep.runs, int(shown.tags.get(PARENT_STEP, 0)))
        gone = {name: float("nan") for name in shown.metrics if name.startswith("verdict/")}
        self._log(parent, {name: [(step, value)] for name, value in
                           (gone | {f"verdict/{k}": v for k, v in sweep.metrics.items()}).items()})
        own = {KEY, DONE, "harness.sweep", "harness.kind", "harness.state", PARENT_STEP}
        for tag in shown.tags:
            if tag.startswith("harness.") and tag not in own and tag not in sweep.tags:
                self.client.delete_tag(parent, tag)
        for tag, value in sweep.tags.items():
            if tag != "harness.kind":
                self.client.set_tag(parent, tag, value)
        self.client.set_tag(parent, "harness.state", sweep.state)
        self.client.set_tag(parent, PARENT_STEP, str(step))
