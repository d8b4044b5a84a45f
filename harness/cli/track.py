"""`harness track`: publish what a results store holds to experiment trackers (MLflow, W&B, trackio);
the command over harness.api.track (harness.trackers.publish.publish_store).

The same agents that `--log` uses, waiting as long as it takes: every
recorded attempt becomes a tracker run, every sweep a parent (MLflow) or group (W&B, trackio) with
its report's verdicts and paired-difference curve. What a tracker already holds is not added again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.cli.app import ResultsOpt, command, console


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
    from harness.api import track

    return 0 if track(to, results, sweep=sweep, console=console) else 1
