"""The `harness` command line (Typer): argument parsing only. harness.cli.app holds the frame (the
app, shared options, one-line errors); runs the commands that train; inspect the ones that read."""

from harness.cli import inspect, runs  # noqa: F401 - registers the commands
from harness.cli.app import app

__all__ = ["app"]
