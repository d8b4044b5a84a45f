"""The `harness` command line (Typer): argument parsing only. harness.cli.app holds the frame (the
app, shared options, one-line errors); runs the commands that train; inspect the ones that read;
track the one that publishes to trackers; imports the one that takes results made elsewhere; trainer
the one that copies out the example external trainers."""

from harness.cli import inspect, runs, track  # noqa: F401 - registers the commands, in the order --help lists them
from harness.cli import imports, trainer  # noqa: F401 - `harness import`, `harness example-trainer` after them
from harness.cli.app import app

__all__ = ["app"]
