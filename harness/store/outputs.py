"""Where a command may write: never over its own inputs, never inside a results store's runs or
tables (trained weights, checkpoints, journals: harness alone writes those), never a results
folder that is a file. Every command that writes a user-named destination asks here first.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.core.errors import UserError
from harness.core.files import user_path
from harness.store.results import CURVES, MANIFEST, RUNS


def require_folder(results: Path) -> None:
    """One message, for every command, for a --results that is something other than a folder."""
    if Path(results).exists() and not Path(results).is_dir():
        raise UserError(f"--results {results} is not a folder (expected a results folder holding {RUNS})")


def is_store(folder: Path) -> bool:
    """Whether `folder` is a results store (its run folders and a table or manifest)."""
    return (folder / "runs").is_dir() and any((folder / name).exists() for name in (RUNS, CURVES, MANIFEST))


def _inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def guard_destination(dest: Path, flag: str, inputs: dict[str, Path] | None = None,
                      may_contain_inputs: bool = False) -> None:
    """An output never overwrites an input: `dest` may not lie in a results store's run folders
    (trained weights, checkpoints, journals) or be one of its tables, nor be, lie inside or
    (unless may_contain_inputs) contain one of the command's `inputs` (what -> path)."""
    d = Path(os.path.abspath(user_path(dest)))
    for store in (d, *d.parents):
        if not is_store(store):
            continue
        if _inside(d, store / "runs") or d in {store / RUNS, store / CURVES, store / MANIFEST}:
            raise UserError(f"{flag} {dest}: that is inside the results store {store} (its runs and tables are "
                            "written only by harness); choose a folder outside it")
    for what, path in (inputs or {}).items():
        p = Path(os.path.abspath(user_path(path)))
        if _inside(d, p) or (not may_contain_inputs and _inside(p, d)):
            raise UserError(f"{flag} {dest}: that would overwrite {what} ({p}); choose another destination")
