"""Shared test helpers: a small corpus, a per-session token cache, the CLI as a user runs it (cli: a subprocess;\ninvoke: in this process), kill_mid_run for a crash mid-way, flip_bit to damage a file, and free_port for a server of a test's own."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_WORKERS = 4  # each test file may run whole sweeps with a process per CPU of its own


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto` (the default, pyproject's addopts): one pytest worker per CPU this process may
    use, at most MAX_WORKERS. Files go to workers whole (--dist loadfile), so a module's fixtures
    (a sweep, a Slurm cluster, an MLflow server) are built once."""
    from harness.core.placement import usable_cores

    return max(1, min(len(usable_cores()), MAX_WORKERS))


def corpus(folder: Path) -> Path:
    """A deterministic ~48 KB text: enough for 3,000-token micro runs, with a small test split so
    evaluation takes milliseconds (the embedded Shakespeare's test split takes seconds)."""
    path = folder / "corpus.txt"
    if not path.exists():
        rng = random.Random(7)
        words = ["the", "king", "shall", "speak", "of", "love", "and", "war", "my", "lord", "thou", "art",
                 "a", "fool", "night", "day", "sweet", "prince", "honour", "crown", "blood", "fair"]
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + "."
                 for _ in range(1100)]
        path.write_text("\n".join(lines) + "\n")
    return path


# a switch as a maintainer adds one: off by default, so every stored run computes what it did
NEUTRAL_KEYS = ('    qk_norm: bool = documented(False, "RMS-normalise queries and keys")\n',
                '    z_loss: float = documented(0.0, "weight of the squared log-partition term in the loss")\n')


def add_keys(model_config: Path, train_config: Path, keys: tuple[str, str] = NEUTRAL_KEYS) -> None:
    """Add a key to ModelConfig (model/config.py) and one to TrainConfig (harness/core/config.py):
    the source lines `keys`, each before a field that follows it in the class."""
    for path, line, before in ((model_config, keys[0], "    vocab_multiple: int ="),
                               (train_config, keys[1], "    shuffle: bool =")):
        text = path.read_text()
        assert text.count(before) == 1, f"{path} no longer has {before!r}"
        path.write_text(text.replace(before, line + before))


def newer_harness(folder: Path, keys: tuple[str, str] = NEUTRAL_KEYS) -> dict[str, str]:
    """A later version of harness: this checkout's package, laid out as installed under `folder`,
    with `keys` added (add_keys). Returns the environment under which `cli` runs it and its workers
    (give cli a cwd other than the checkout, whose own harness/ would come first)."""
    import shutil

    root = folder / "harness"
    shutil.copytree(REPO / "harness", root, ignore=shutil.ignore_patterns("__pycache__"))
    for sub in ("model", "sweeps"):
        shutil.copytree(REPO / sub, root / sub, ignore=shutil.ignore_patterns("__pycache__"))
    add_keys(root / "model" / "config.py", root / "core" / "config.py", keys)
    return {"PYTHONPATH": str(folder)}


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """corpus() once per session: for end-to-end tests whose runs need not read Shakespeare."""
    return corpus(tmp_path_factory.mktemp("small-corpus"))


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


def kill_mid_run(args: list[str], results: Path, timeout: float = 120) -> int:
    """Start `harness ARGS --results RESULTS`, SIGKILL its whole process group once a run has saved
    a checkpoint, and return that checkpoint's step (a run killed mid-way, as a crash leaves it)."""
    proc = subprocess.Popen([sys.executable, "-m", "harness", *args, "--results", str(results)], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout
    while not list(results.glob("runs/*/checkpoint/meta.json")) and time.time() < deadline:
        time.sleep(0.01)  # the window can be a second (test_worth): look often
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    metas = list(results.glob("runs/*/checkpoint/meta.json")) or list(results.glob("runs/*/checkpoint.old/meta.json"))
    return int(json.loads(metas[0].read_text())["step"])  # .old: killed between a commit's two renames


def flip_bit(path: Path, offset: int, mask: int = 0x01) -> None:
    """Damage a file in place: XOR one byte (offset taken modulo the size; negative counts from the end)."""
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= mask
    path.write_bytes(bytes(data))


def free_port() -> int:
    """A localhost TCP port nothing listens on now (the kernel's pick), for a server a test starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def run_cli():
    return cli


@pytest.fixture(params=["c", "torch"])
def cpu_kernel_set(request, monkeypatch) -> str:
    """Each CPU kernel set in turn: the C kernels (harness.model.native), then torch's operations,
    which the model takes where the C kernels cannot be built."""
    if request.param == "torch":
        from harness.model import native

        monkeypatch.setattr(native, "library", lambda: None)
    return request.param
