"""Crash anywhere: SIGKILL a sweep's whole process group at a chosen or random moment (training,
checkpointing, evaluation, result writing), sometimes damage what it leaves, run the same sweep
again, and check that every run completed exactly once with the uninterrupted sweep's test loss,
bit for bit, and that nothing is left running.

Kills come from faulthook/sitecustomize.py (at the n-th event of a kind, in the harness process or
in a training worker, which kills the sweep's group) or from a timer. torchrun starts its workers
in their own sessions, so a killed group leaves them running: the second sweep must deal with them.
The fast test runs 3 trials; `-m slow` runs 20 more on a 4-run sweep.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from conftest import flip_bit
from relkit import (slow_only,  # noqa: F401 - a fixture
                    check_sweep, corpus, env, faults, kill_leftovers, losses, processes_using, record_figure,
                    run, start, sweep_args, wait_for)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return corpus(tmp_path_factory.mktemp("corpus"))


_references: dict[int, dict] = {}


def reference(tmp_path_factory, data: Path, seeds: int) -> dict:
    """The uninterrupted sweep's test losses (computed once per module and sweep size)."""
    if seeds not in _references:
        results = tmp_path_factory.mktemp(f"reference{seeds}")
        proc = run(sweep_args(results, data, seeds))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        _references[seeds] = losses(results)
        assert len(_references[seeds]) == 2 * seeds
    return _references[seeds]


class Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def plant_pickle(folder: Path, marker: Path) -> None:
    torch.save({"optimizer": Payload(marker), "scaler": {}}, folder / "optimizer.pt")
    meta = json.loads((folder / "meta.json").read_text())
    meta["sha256"]["optimizer.pt"] = hashlib.sha256((folder / "optimizer.pt").read_bytes()).hexdigest()
    (folder / "meta.json").write_text(json.dumps(meta))


def flip_weights(folder: Path) -> None:
    flip_bit(folder / "model.safetensors", -7, 0x04)


def trial(results: Path, data: Path, expected: dict, seeds: int, fault: dict | None = None,
          timer: float | None = None, damage=None, label: str = "") -> dict:
    """One crash trial; returns its figures. fault: a faulthook description; timer: SIGKILL the
    group after this many seconds instead; damage(results): applied to what the crash left."""
    log = results.parent / f"{results.name}-faults.jsonl"
    if fault is not None:
        fault = {"log": str(log), **fault}
    t0 = time.monotonic()
    proc = start(sweep_args(results, data, seeds), env(fault))
    try:
        if timer is not None:
            try:
                proc.wait(timeout=timer)
            except Exception:  # noqa: BLE001 - still running: the moment has come
                os.killpg(proc.pid, signal.SIGKILL)
                log.write_text(json.dumps({"point": "timer", "time": time.time(), "after_s": timer}) + "\n")
        proc.wait(timeout=600)
        killed = proc.returncode == -signal.SIGKILL
        left = processes_using(results)
        notes = damage(results) if (damage and killed) else None
        t1 = time.monotonic()
        again = run(sweep_args(results, data, seeds))
        assert again.returncode == 0, again.stdout + again.stderr
        figures = check_sweep(results, expected)
        assert figures["lost"] == figures["duplicates"] == figures["mismatched"] == 0, (label, figures)
        assert figures["failed_rows"] == 0, (label, figures)
        assert "Traceback" not in again.stdout + again.stderr
        assert wait_for(lambda: not processes_using(results), 10), processes_using(results)
    finally:
        kill_leftovers(results)
    out = {"label": label, "killed": killed, "fired": [f["point"] for f in faults(log)], "orphans_after_kill": len(left),
           "first_sweep_s": round(t1 - t0, 1), "rerun_s": round(time.monotonic() - t1, 1), **figures,
           "rerun_output": again.stdout + again.stderr, "notes": notes}
    record_figure("crash-trial", **{k: v for k, v in out.items() if k != "rerun_output"})
    return out


@pytest.mark.slow  # CI time: a killed run resuming bit-identically (test_run.py) and a killed worker's retry (test_workers.py) stay in the fast tier
def test_three_crashes_at_different_moments(tmp_path, tmp_path_factory, data):
    expected = reference(tmp_path_factory, data, seeds=1)
    rng = random.Random(int(os.environ.get("HARNESS_TRIAL_SEED", "11")))

    # 1. checkpointing: a worker is killed with its sweep between checkpoint -> checkpoint.old and the
    #    swap-in of the new one; then the only checkpoint left is bit-flipped: quarantined, run from scratch.
    #    The kill takes the whole sweep, so the other run may be caught mid-removal of its checkpoint.old
    #    (weights already gone): only folders that still hold weights are flipped.
    def corrupt_old(results: Path):
        kill_leftovers(results)
        folders = list(results.glob("runs/*/checkpoint.old")) + list(results.glob("runs/*/checkpoint"))
        folders = [f for f in folders if (f / "model.safetensors").exists()]
        assert any(f.name == "checkpoint.old" and f.parent.name.startswith("qkv_bias-s0-") for f in folders), folders
        for folder in folders:
            flip_weights(folder)
        return [str(f) for f in folders]

    out = trial(tmp_path / "ckpt", data, expected, 1, label="checkpointing+corrupt",
                fault={"role": "worker", "run": "qkv_bias-s0-", "point": "ckpt-swap:after", "nth": rng.randint(2, 10),
                       "action": "killall"},
                damage=corrupt_old)
    assert out["killed"] and out["fired"] == ["ckpt-swap:after"] and out["notes"]
    assert "failed its checksum" in out["rerun_output"] and "quarantine" in out["rerun_output"]
    assert list((tmp_path / "ckpt").glob("runs/qkv_bias-s0-*/quarantine/checkpoint*"))

    # 2. result writing: the harness process dies after a run's journal entry, before the tables
    out = trial(tmp_path / "record", data, expected, 1, label="result-writing",
                fault={"role": "parent", "point": "journal:after", "nth": rng.randint(1, 2)})
    assert out["killed"] and out["fired"] == ["journal:after"]

    # 3. training: killed mid-step; then a pickle that would run code is planted in the checkpoint
    marker = tmp_path / "pwned"

    def plant(results: Path):
        kill_leftovers(results)
        folder = next(results.glob("runs/baseline-s0-*/checkpoint"))
        plant_pickle(folder, marker)
        return str(folder)

    out = trial(tmp_path / "train", data, expected, 1, label="training+malicious-pickle",
                fault={"role": "worker", "run": "baseline-s0-", "point": "train-step", "nth": rng.randint(3, 10),
                       "action": "killall"},
                damage=plant)
    assert out["killed"] and out["fired"] == ["train-step"]
    assert "refuses" in out["rerun_output"] and not marker.exists()
    assert list((tmp_path / "train").glob("runs/baseline-s0-*/quarantine/checkpoint*"))


# the slow part: 20 trials on a 4-run sweep, fault points and moments drawn at random (seeded)
POINTS = [
    ("worker", "train-step", 1, 12), ("worker", "ckpt-meta:before", 1, 12), ("worker", "ckpt-swap:after", 1, 11),
    ("worker", "ckpt-commit:after", 1, 12), ("worker", "eval", 1, 2), ("worker", "result:before", 1, 1),
    ("worker", "result:after", 1, 1), ("parent", "spec:after", 1, 4), ("parent", "journal:before", 1, 4),
    ("parent", "journal:after", 1, 4), ("parent", "curves:after", 1, 4), ("parent", "runs:before", 1, 4),
    ("parent", "runs:after", 1, 4), ("parent", "manifest:after", 1, 8), ("timer", None, 3, 45),
]
RUNS4 = ["baseline-s0-", "qkv_bias-s0-", "baseline-s1-", "qkv_bias-s1-"]


@pytest.mark.slow
@pytest.mark.parametrize("index", range(20))
def test_crash_anywhere_trial(slow_only, tmp_path, tmp_path_factory, data, index):
    expected = reference(tmp_path_factory, data, seeds=2)
    rng = random.Random(1000 + index + int(os.environ.get("HARNESS_TRIAL_SEED", "0")))
    role, point, lo, hi = POINTS[index % len(POINTS)] if index < len(POINTS) else rng.choice(POINTS)
    if role == "timer":
        out = trial(tmp_path / "r", data, expected, 2, timer=rng.uniform(lo, hi), label=f"timer#{index}")
    else:
        fault = {"role": role, "point": point, "nth": rng.randint(lo, hi)}
        if role == "worker":
            fault["run"] = rng.choice(RUNS4)
        out = trial(tmp_path / "r", data, expected, 2, fault=fault, label=f"{role}:{point}#{index}")
    assert out["killed"] or role == "timer", out  # every targeted moment is reached
