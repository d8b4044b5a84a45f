"""`harness track`: publish what a results store holds to experiment trackers (MLflow, W&B, trackio).

The same agents that `--log` uses (harness.trackers.publish), waiting as long as it takes: every
recorded attempt becomes a tracker run, every sweep a parent (MLflow) or group (W&B, trackio) with
its report's verdicts and paired-difference curve. What a tracker already holds is not added again.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.cli.app import ResultsOpt, command, console
from harness.core.errors import UserError


@command("track")
def track_cmd(
    to: Annotated[list[str], typer.Option(
        "--to", help="mlflow (MLFLOW_TRACKING_URI, MLFLOW_EXPERIMENT_NAME), wandb (WANDB_MODE, WANDB_PROJECT, "
                     "WANDB_DIR) or trackio (TRACKIO_DIR, TRACKIO_PROJECT); repeatable or comma-separated.")],
    sweep: Annotated[Optional[str], typer.Option(help="Only this sweep (default: every sweep in the store).")] = None,
    results: ResultsOpt = Path("results"),
):
    """Publish a results store's runs and each sweep's verdicts to experiment trackers; publishing
    again adds nothing, so run it whenever a tracker missed something."""
    from harness.store.results import ResultsStore
    from harness.trackers.publish import TENSORBOARD, TRACKERS, Publisher, installed, parse_log, split_names

    if TENSORBOARD in split_names(to):
        raise UserError(f"--to {TENSORBOARD}: TensorBoard is written as runs record, by --log {TENSORBOARD}; "
                        f"--to takes {', '.join(TRACKERS)}")
    names = parse_log(to, option="--to", choices=TRACKERS)
    if not names:
        raise UserError(f"--to: give one of {', '.join(TRACKERS)}")
    for name in names:
        if not installed(name):
            raise UserError(f"--to {name}: {name} is not installed here: pip install 'harness[{name}]'")
    if not (Path(results) / "runs.parquet").exists():
        raise UserError(f"{results} holds no results store (runs.parquet); give --results")
    store = ResultsStore(Path(results))
    sweeps = store.sweeps()
    if sweep is not None and sweep not in sweeps:
        raise UserError(f"--sweep {sweep!r} has no recorded runs in {results}; it has: {', '.join(sweeps) or 'none'}")
    publisher = Publisher(names, Path(results), console, timeout=math.inf, progress=True)
    runs = store.runs_frame()
    try:
        for name in [sweep] if sweep else sweeps:
            publisher.catch_up(name, sorted(set(runs.loc[runs["sweep"] == name, "run_id"])), summary=True)
        return 0 if publisher.finish() else 1
    except BaseException:
        publisher.finish(interrupted=True)
        raise
