"""Helpers for the reliability suite: a small corpus, sweeps started as a user starts them, fault
injection through faulthook/sitecustomize.py, and the checks every trial ends with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from conftest import corpus  # noqa: F401 - the reliability suite's corpus is the shared one

from harness.launch.procs import sigkill

REPO = Path(__file__).resolve().parents[2]
HOOK = Path(__file__).resolve().parent / "faulthook"
MICRO = ["--preset", "micro", "--tokens", "3000"]
FIGURES = os.environ.get("HARNESS_RELIABILITY_FIGURES")  # a JSON-lines file the suite appends its figures to


def sweep_args(results: Path, data: Path, seeds: int = 1, arms=("qkv_bias",), extra=()) -> list[str]:
    return ["sweep", *arms, "--seeds", str(seeds), *MICRO, "--set", f"data={data}", *extra,
            "--results", str(results)]


def env(fault: dict | None = None, **extra: str) -> dict[str, str]:
    out = os.environ | {"COLUMNS": "200"} | extra
    if fault is not None:
        out["PYTHONPATH"] = os.pathsep.join([str(HOOK), *filter(None, [os.environ.get("PYTHONPATH")])])
        out["HARNESS_TEST_FAULT"] = json.dumps(fault)
        if fault.get("role") == "worker":  # the hook picks its process by its command line at start: a
            out["HARNESS_WARM_WORKERS"] = "0"  # warm worker's fork keeps its parent's, so faults go to cold ones
    return out


def start(args: list[str], environ: dict[str, str] | None = None, output=subprocess.DEVNULL) -> subprocess.Popen:
    """`harness ARGS` in its own process group (the group a test SIGKILLs)."""
    return subprocess.Popen([sys.executable, "-m", "harness", *args], cwd=REPO, env=environ or env(),
                            stdout=output, stderr=subprocess.STDOUT if output is subprocess.PIPE else output,
                            text=True, start_new_session=True)


def run(args: list[str], environ: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", *args], cwd=REPO, env=environ or env(),
                          capture_output=True, text=True, timeout=timeout)


def rows(results: Path) -> list[dict]:
    path = results / "runs.parquet"
    return pq.read_table(path).to_pylist() if path.exists() else []


def losses(results: Path) -> dict[tuple[str, int], float]:
    return {(r["arm"], r["seed"]): r["test_loss"] for r in rows(results) if r["status"] == "completed"}


def check_sweep(results: Path, expected: dict[tuple[str, int], float]) -> dict[str, int]:
    """Every run completed exactly once, nothing lost, losses bit-identical: the counts."""
    got = rows(results)
    completed = [(r["arm"], r["seed"]) for r in got if r["status"] == "completed"]
    lost = len(set(expected) - set(completed))
    keys = [(r["run_id"], r["attempt"]) for r in got]
    duplicates = (len(completed) - len(set(completed))) + (len(keys) - len(set(keys)))
    mismatched = sum(1 for r in got if r["status"] == "completed" and expected.get((r["arm"], r["seed"])) != r["test_loss"])
    return {"lost": lost, "duplicates": duplicates, "mismatched": mismatched, "rows": len(got),
            "failed_rows": sum(r["status"] != "completed" for r in got)}


def processes_using(folder: Path) -> list[int]:
    """Live processes whose command line mentions `folder` (leftover workers, torchruns)."""
    needle = str(folder)
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            cmd = Path(entry.path, "cmdline").read_bytes().decode(errors="replace")
            stat = Path(entry.path, "stat").read_text()
            cwd = os.readlink(Path(entry.path, "cwd"))
        except OSError:
            continue
        if stat[stat.rfind(")") + 2:][:1] in ("Z", "X"):
            continue
        if needle in cmd or (cwd.startswith(needle)):
            found.append(int(entry.name))
    return found


def kill_leftovers(folder: Path) -> list[int]:
    """Cleanup for a failed test: SIGKILL (by pid) what this test started and left behind."""
    pids = processes_using(folder)
    sigkill(pids)
    return pids


def wait_for(predicate, timeout: float, interval: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def faults(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def record_figure(kind: str, **values) -> None:
    """Append one measurement to $HARNESS_RELIABILITY_FIGURES (for the issue's closing figures)."""
    print(f"figure {kind}: {values}")
    if FIGURES:
        with open(FIGURES, "a") as f:
            f.write(json.dumps({"kind": kind, **values}) + "\n")


@pytest.fixture
def slow_only(request):
    """Slow tests also skip themselves unless asked for (-m slow, or HARNESS_SLOW=1), so a plain
    `python -m pytest` stays fast even where addopts does not deselect the slow marker."""
    expr = request.config.getoption("markexpr") or ""
    if "slow" in expr.replace("not slow", "") or os.environ.get("HARNESS_SLOW") == "1":
        return
    pytest.skip("slow reliability test: run with -m slow (or HARNESS_SLOW=1)")
