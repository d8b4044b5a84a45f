"""Dead and stuck workers: with --nproc 2, one worker killed or frozen mid-step makes the attempt
fail within a bounded time, recorded as failed with its reason; the retry resumes from the last
checkpoint to the uninterrupted run's test loss; nothing hangs and nothing is left running.

The faults come from faulthook/sitecustomize.py in rank 1 only, once (a marker file), at its
5th training forward: kill_self (SIGKILL) or stop_self (SIGSTOP, a hang that no exit code shows).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from relkit import (slow_only,  # noqa: F401 - a fixture
                    corpus, env, faults, kill_leftovers, losses, processes_using, record_figure, rows, run,
                    wait_for)

ARGS = ["sweep", "baseline", "--seeds", "1", "--nproc", "2", "--preset", "micro", "--tokens", "3000",
        "--set", "checkpoint_every=2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data) -> dict:
    results = tmp_path_factory.mktemp("reference")
    proc = run([*ARGS, "--set", f"data={data}", "--results", str(results)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return losses(results)


def faulty_sweep(tmp_path: Path, data: Path, action: str, timeout: float = 400, **environ: str):
    results, log = tmp_path / "r", tmp_path / "faults.jsonl"
    fault = {"role": "worker", "rank": 1, "point": "train-step", "nth": 5, "action": action,
             "once": str(tmp_path / "fired"), "log": str(log)}
    t0 = time.monotonic()
    try:
        proc = run([*ARGS, "--set", f"data={data}", "--results", str(results)], env(fault, **environ), timeout=timeout)
        elapsed = time.monotonic() - t0
        assert wait_for(lambda: not processes_using(results), 15), "a worker was left running"
    finally:
        kill_leftovers(results)
    fired = faults(log)
    assert len(fired) == 1, fired
    got = rows(results)
    journal = next(results.glob("runs/*/attempts/1.json"))
    surfaced = journal.stat().st_mtime - fired[0]["time"]  # fault -> failed attempt recorded
    return proc, got, surfaced, elapsed


def check_retried(proc, got, reference, reason: str):
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [(r["attempt"], r["status"]) for r in got] == [(1, "failed"), (2, "completed")], got
    assert reason in got[0]["reason"], got[0]["reason"]
    assert got[1]["test_loss"] == reference[("baseline", 0)]  # resumed from the checkpoint, bit-identical
    assert "failed" in proc.stdout and "log.txt" in proc.stdout and "Traceback" not in proc.stdout + proc.stderr


def test_killed_worker_fails_the_attempt_fast_and_the_retry_completes(tmp_path, data, reference):
    proc, got, surfaced, elapsed = faulty_sweep(tmp_path, data, "kill_self")
    check_retried(proc, got, reference, "SIGKILL")
    record_figure("dead-worker", surfaced_s=round(surfaced, 2), sweep_s=round(elapsed, 1), reason=got[0]["reason"])
    assert surfaced < 60


def test_frozen_worker_is_caught_by_the_stall_watchdog(tmp_path, data, reference):
    # 15 s: the watchdog also times the workers' start (torch's import, gloo), which on a busy
    # machine (the suite runs in parallel) has taken several seconds
    proc, got, surfaced, elapsed = faulty_sweep(tmp_path, data, "stop_self", HARNESS_STALL_TIMEOUT="15")
    check_retried(proc, got, reference, "no progress for 15 s")
    record_figure("stuck-worker-watchdog", surfaced_s=round(surfaced, 2), sweep_s=round(elapsed, 1),
                  reason=got[0]["reason"])
    assert 15 <= surfaced < 50


@pytest.mark.slow
def test_frozen_worker_is_caught_by_the_collective_timeout(slow_only, tmp_path, data, reference):
    """Without the watchdog (its default 1800 s), gloo's collective timeout ends the attempt:
    rank 0 raises, torchrun tears the group down (SIGKILL for the frozen rank after its 30 s grace)."""
    proc, got, surfaced, elapsed = faulty_sweep(tmp_path, data, "stop_self", HARNESS_COLLECTIVE_TIMEOUT="10")
    check_retried(proc, got, reference, "Timed out waiting 10000ms")
    record_figure("stuck-worker-collective-timeout", surfaced_s=round(surfaced, 2), sweep_s=round(elapsed, 1),
                  reason=got[0]["reason"])
    assert 10 <= surfaced < 120
