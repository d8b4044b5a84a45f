"""The `harness` command line (Typer): argument parsing only. harness.cli.app holds the frame (the
app, shared options, one-line errors); runs the commands that train; inspect the ones that read;
track the one that publishes to trackers; imports the one that takes results made elsewhere."""

from harness.cli import imports, inspect, runs, track  # noqa: F401 - registers the commands
from harness.cli.app import app

__all__ = ["app"]
