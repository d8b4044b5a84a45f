"""The `harness` command line (Typer): argument parsing only. harness.cli.app holds the frame (the
app, shared options, one-line errors); runs the commands that train; inspect the ones that read;
track the one that publishes to trackers; imports the one that takes results made elsewhere."""

from harness.cli import inspect, runs, track  # noqa: F401 - registers the commands, in the order --help lists them
from harness.cli import imports  # noqa: F401 - `harness import` after them
from harness.cli.app import app

__all__ = ["app"]
