"""The command line's frame: the Typer app, the options several commands share, and the wrapper
that turns every bad input into one line on stderr and exit code 2 (harness.cli.runs and
harness.cli.inspect hold the commands; a command's options are its parameters, Typer's way, and
its body only builds the option groups and calls the library).
"""

from __future__ import annotations

import functools
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

from harness.core import config as cfgmod
from harness.core.bounds import check_int
from harness.core.definitions import ENV as SWEEPS_ENV
from harness.core.definitions import Library
from harness.core.errors import UserError
from harness.core.files import environment_failure, user_path

app = typer.Typer(help="Seed-sweep benchmarking for from-scratch GPT-2 training: did this change "
                       "really make the model better, or is it noise?",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(width=None if sys.stdout.isatty() else 160)  # logs and CI get untruncated tables
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 300)

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="Preset name (see `harness list`).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override any config key for every arm, e.g. --set lr=1e-3 (repeatable).")]


def a_path(text: str | Path) -> Path:
    """A path option's value: an empty one is refused, not taken as the current folder."""
    if isinstance(text, Path):  # a default
        return text
    if not text.strip():
        raise typer.BadParameter("an empty path; give a folder (use . for the current one)")
    return user_path(text)


def a_destination(text: str) -> str:
    """An output option's value, as written: 'dir/' names a folder even before it exists."""
    if not text.strip():
        raise typer.BadParameter("an empty path; give a file or a folder")
    return text


ResultsOpt = Annotated[Path, typer.Option("--results", help="Results folder.", parser=a_path)]
TokensOpt = Annotated[Optional[int], typer.Option(
    "--tokens", help="Fixed token budget for every arm (rounded up to whole global batches).")]
DataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="Training data for every arm (shorthand for --set data=PATH): 'shakespeare', a text "
                   "file or folder, or a folder of shards such as `harness data prepare` writes.")]
LogOpt = Annotated[Optional[list[str]], typer.Option(
    "--log", help="Also log to experiment trackers (repeatable, or comma-separated): 'tensorboard' (loss curves "
                  "in RESULTS/tensorboard/<sweep>/<run_id>), 'mlflow' (MLFLOW_TRACKING_URI), 'wandb' (WANDB_MODE, "
                  "WANDB_PROJECT), 'trackio' (TRACKIO_DIR); each needs its extra: harness\\[tensorboard], harness\\[mlflow] ... "
                  "A tracker that is down never stops a run: `harness track` publishes later.")]
VaryOpt = Annotated[Optional[str], typer.Option(
    "--vary", help="Vary only this random stream with the seed (init, data or dropout); the other two take seed "
                   "0's values. For noise studies by hand (harness noise does it for you).")]
InitSeedOpt = Annotated[Optional[int], typer.Option("--init-seed", help="Fix the initial weights' seed for every run.")]
DataSeedOpt = Annotated[Optional[int], typer.Option("--data-seed", help="Fix the data order's seed for every run.")]
DropoutSeedOpt = Annotated[Optional[int], typer.Option("--dropout-seed", help="Fix the dropout masks' seed for every run.")]
SweepsOpt = Annotated[Optional[list[Path]], typer.Option(
    "--sweeps", help=f"A folder of your own presets/ and interventions/ (TOML), searched before ${SWEEPS_ENV}, "
                     "./sweeps and the built-ins (repeatable; `harness list` shows what comes from where).",
    parser=a_path)]
BudgetOpt = Annotated[str, typer.Option(
    "--budget", help="'baseline': every arm trains on the baseline's Chinchilla budget (default, "
                     "as the seed author did); 'own': each arm on its own Chinchilla count.")]


def command(name: str, group: typer.Typer = app):
    """Register a sub-command of `group` whose UserErrors become one red line and exit code 2, and
    whose Ctrl-C becomes exit code 130 without a traceback; an int return value becomes the exit code."""
    def register(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                for key, value in kwargs.items():  # every number a user gives is bounded before use
                    if isinstance(value, int) and not isinstance(value, bool):
                        check_int(key, value)
                    if isinstance(value, float) and not math.isfinite(value):
                        raise UserError(f"--{key.replace('_', '-')} {value}: must be a finite number")
                rv = fn(*args, **kwargs)
            except UserError as err:
                err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except OSError as err:  # the machine's failure (disk full, permissions) where no write wrapped it
                if not environment_failure(err):
                    raise
                where = f" ({err.filename})" if getattr(err, "filename", None) else ""
                err_console.print(f"[red]error:[/red] {escape(err.strerror or str(err))}{escape(where)}; what is "
                                  "recorded is intact: free space (or fix permissions) and run the same command again",
                                  highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                err_console.print("interrupted", highlight=False)
                raise typer.Exit(130) from None
            if isinstance(rv, int) and rv:
                raise typer.Exit(rv)
        return group.command(name)(wrapper)
    return register


def positive(value: int | None, name: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{name} must be >= 1, got {value}")


def parse_sets(items: list[str] | None) -> dict:
    return dict(cfgmod.parse_set(item) for item in items or [])


def definitions(folders: list[Path] | None) -> Library:
    """The definitions a command sees: --sweeps folders, then $HARNESS_SWEEPS, ./sweeps, the built-ins."""
    return Library.from_environment(folders or ())


data_app = typer.Typer(help="Prepare training data: tokenize a dataset into uint16 shards.",
                       no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(data_app, name="data")
