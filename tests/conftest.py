"""Shared test helpers: a per-session token cache, the CLI as a user runs it (cli: a subprocess;\ninvoke: in this process), and flip_bit to damage a file."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def token_cache(tmp_path_factory) -> Path:
    """Tokenized corpora for the whole session, outside the user's home."""
    cache = tmp_path_factory.mktemp("harness-cache")
    os.environ["HARNESS_CACHE"] = str(cache)
    return cache


def cli(*args: str, cwd: Path | None = None, timeout: float = 300, check: bool = False,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`harness ARGS...` in a subprocess, exactly as a user would type it (env: added variables)."""
    proc = subprocess.run([sys.executable, "-m", "harness", *args], cwd=cwd or REPO, capture_output=True,
                          text=True, timeout=timeout, env=os.environ | {"COLUMNS": "200"} | (env or {}))
    if check and proc.returncode != 0:
        raise AssertionError(f"harness {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def invoke(*args: str) -> tuple[int, str, str]:
    """`harness ARGS...` in this process (a subprocess costs seconds of imports): (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from harness.cli import app

    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def flip_bit(path: Path, offset: int, mask: int = 0x01) -> None:
    """Damage a file in place: XOR one byte (offset taken modulo the size; negative counts from the end)."""
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= mask
    path.write_bytes(bytes(data))


@pytest.fixture
def run_cli():
    return cli
