"""Warm workers (harness.launch.warm): a run forked from a slot's warm process gives bit for bit the
cold worker's result, each run is its own process (a crash or a kill of one never reaches the
next), and a killed sweep leaves no warm process or child behind and resumes exactly."""

from __future__ import annotations

import json
import os
import signal
import time

import pandas as pd
import pytest

from conftest import cli, invoke, kill_mid_run
from harness.launch.procs import process_tree
from harness.launch.torchrun import WORKER_ENV
from harness.launch.warm import WarmWorker

MICRO = ["--preset", "micro", "--tokens", "2000"]


def losses(results) -> pd.Series:
    return pd.read_parquet(results / "runs.parquet").set_index("run_id")["test_loss"].sort_index()


@pytest.mark.slow  # CI time: warm equals cold stays in the fast tier through test_code.py's built-ins end to end and the killed warm sweep below
def test_a_warm_run_is_bit_for_bit_a_cold_one(tmp_path, small_corpus):
    args = ["sweep", "qkv_bias", "no_dropout", "--seeds", "2", *MICRO, "--data", str(small_corpus), "--jobs", "2"]
    warm = cli(*args, "--results", str(tmp_path / "warm"), check=True)
    cold = cli(*args, "--results", str(tmp_path / "cold"), env={"HARNESS_WARM_WORKERS": "0"}, check=True)
    assert "Traceback" not in warm.stdout + warm.stderr + cold.stdout + cold.stderr
    assert losses(tmp_path / "warm").equals(losses(tmp_path / "cold"))  # bit for bit, every run
    logs = [p.read_text() for p in (tmp_path / "warm" / "runs").glob("*/log.txt")]
    assert len(logs) == 6 and all("a warm worker's fork of" in log for log in logs)
    assert not any("a warm worker's fork" in p.read_text() for p in (tmp_path / "cold" / "runs").glob("*/log.txt"))


def test_each_run_is_its_own_process(tmp_path, small_corpus):
    """On one warm process: a run that crashes, then one killed mid-way, then one that completes as
    a cold run does; and a warm process that died is replaced."""
    cli("run", *MICRO, "--data", str(small_corpus), "--results", str(tmp_path / "cold"),
        env={"HARNESS_WARM_WORKERS": "0"}, check=True)
    expected = losses(tmp_path / "cold").iloc[0]
    spec_dir = next((tmp_path / "cold" / "runs").iterdir())
    worker = WarmWorker(dict(WORKER_ENV))
    try:
        bad = tmp_path / "bad" / "spec.json"
        bad.parent.mkdir()
        bad.write_text("{not json")
        crash = worker.start(bad, dict(os.environ), None)
        out = crash.stdout.read()
        assert crash.wait(60) == 1 and "JSONDecodeError" in out
        (spec_dir / "result.json").unlink()
        killed = worker.start(spec_dir / "spec.json", dict(os.environ), None)
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(60) == -signal.SIGKILL
        first = worker._proc.pid
        done = worker.start(spec_dir / "spec.json", dict(os.environ), None, cpus=(0,))
        assert _pinned_to(done.pid, "0")  # a slot's cores bind the run's child
        done.stdout.read()
        assert done.wait(120) == 0 and worker._proc.pid == first  # the same warm process
        assert json.loads((spec_dir / "result.json").read_text())["test_loss"] == expected
        os.kill(first, signal.SIGKILL)  # the warm process itself dies: the next run gets a new one
        worker._proc.wait()
        again = worker.start(spec_dir / "spec.json", dict(os.environ), None)
        again.stdout.read()
        assert again.wait(120) == 0 and worker._proc.pid != first
    finally:
        worker.close()


def test_a_killed_sweep_leaves_no_warm_process_and_resumes_exactly(tmp_path, small_corpus):
    args = ["sweep", "qkv_bias", "--seeds", "1", "--preset", "micro", "--tokens", "30000", "--data",
            str(small_corpus), "--set", "checkpoint_every=20", "--jobs", "1"]
    cli(*args, "--results", str(tmp_path / "straight"), env={"HARNESS_WARM_WORKERS": "0"}, check=True)
    results = tmp_path / "killed"
    assert kill_mid_run(args, results) > 0
    deadline = time.time() + 10
    leftovers = []
    while time.time() < deadline:
        leftovers = [pid for pid in process_tree(1) if _runs_here(pid, results)]
        if not leftovers:
            break
        time.sleep(0.2)
    assert not leftovers, "a warm process or its child outlived the killed sweep"
    code, out, err = invoke(*args, "--results", str(results))
    assert code == 0, out + err
    assert losses(results).equals(losses(tmp_path / "straight"))
    assert len(pd.read_parquet(results / "runs.parquet")) == 2  # each run recorded once


def _pinned_to(pid: int, cpus: str, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            status = open(f"/proc/{pid}/status").read()
        except OSError:
            return False
        if f"Cpus_allowed_list:\t{cpus}\n" in status:
            return True
        time.sleep(0.01)
    return False


def _runs_here(pid: int, results) -> bool:
    """A process of harness's whose working files are in `results` (a warm process or its child)."""
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().decode(errors="replace")
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    if "harness.launch.warm" not in cmd:
        return False
    for fd in fds:
        try:
            if str(results) in os.readlink(f"/proc/{pid}/fd/{fd}"):
                return True
        except OSError:
            continue
    return False
