"""What produced a result: package versions and the git commit, recorded with every run."""

from __future__ import annotations

import functools
import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("harness", "torch", "numpy", "tiktoken", "pandas", "pyarrow", "scipy", "statsmodels")


@functools.cache
def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = "absent"
    return found


@functools.cache
def git_commit() -> str:
    """The harness checkout's commit, with '+dirty' for local edits; '' for an installed package
    (its folder is not the top of a git checkout, even inside someone else's repository)."""
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists() or not (root / "harness" / "core" / "versions.py").exists():
        return ""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=5).stdout.strip()
        if not sha:
            return ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return ""
