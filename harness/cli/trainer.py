"""`harness example-trainer`: the example external trainers (harness.planning.trainer), copied out to
start a user's own."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from harness.cli.app import command, console


@command("example-trainer")
def example_trainer_cmd(
    folder: Annotated[Path, typer.Argument(help="Where to copy them (made if need be; nothing is overwritten).")],
):
    """Copy the example trainers (the book's GPT-2 in a script of its own) and their sweep files into
    FOLDER: a start for sweeping your own training script."""
    from harness.api import example_trainers

    copied = example_trainers(folder)
    console.print(f"copied {', '.join(p.name for p in copied)} into {folder}; sweep and report with:\n"
                  f"  cd {folder} && harness sweep gpt2_script.toml && harness report", highlight=False)
