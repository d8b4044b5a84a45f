"""Sweeps against a real Slurm 22.05 (tests/slurmkit.py: a throw-away single-node cluster, no
accounting): CPU-only and (fake) GPU partitions, status from squeue, preemption by requeue, by
USR2 and by a real time limit resuming bit-identically, no double submission, adaptive rounds,
and sbatch's refusals as one line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, cli, invoke
from slurmkit import ClusterUnavailable, SlurmCluster

pytest.importorskip("submitit")


@pytest.fixture(scope="module")
def micro(small_corpus) -> list[str]:
    """A few-second run on the small corpus (its test split evaluates in milliseconds)."""
    return ["--preset", "micro", "--tokens", "1500", "--set", f"data={small_corpus}"]


@pytest.fixture(scope="module")
def long_run(small_corpus) -> list[str]:
    """800 steps (about 8 s) with a checkpoint every 50: long enough to be preempted half-way."""
    return ["--preset", "micro", "--tokens", "204800", "--set", "checkpoint_every=50", "--set",
            f"data={small_corpus}", "--set", "allow_repeat=true"]


def _start(tmp_path_factory, gpus: int) -> SlurmCluster:
    try:
        return SlurmCluster(tmp_path_factory.mktemp(f"slurm{gpus}"), gpus=gpus).start()
    except ClusterUnavailable as err:
        pytest.skip(f"no test Slurm cluster here: {str(err).splitlines()[0]}")


@pytest.fixture(scope="module")
def cpu_cluster(tmp_path_factory):
    cluster = _start(tmp_path_factory, 0)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="module")
def gpu_cluster(tmp_path_factory):
    cluster = _start(tmp_path_factory, 2)
    yield cluster
    cluster.stop()


def harness(cluster: SlurmCluster, *args: str, check: bool = True, timeout: float = 600):
    return cli(*args, env=cluster.env | {"HARNESS_SLURM_POLL_S": "1"}, check=check, timeout=timeout)


def scripts(results: Path) -> list[str]:
    return [p.read_text() for p in sorted((results / "submitit").rglob("*_submission.sh"))]


def rows(results: Path) -> pd.DataFrame:
    return pd.read_parquet(results / "runs.parquet")


def wait_for(predicate, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def status(cluster: SlurmCluster, results: Path, sweep: str) -> dict:
    return json.loads(harness(cluster, "status", "--json", "--results", str(results)).stdout)[sweep]


# slow tier: the adaptive rounds are tested end to end locally (test_adaptive.py), Slurm's
# submission, requeue and status by this file's other tests
@pytest.mark.slow
def test_adaptive_sweep_on_a_cpu_only_partition(cpu_cluster, tmp_path, micro):
    """No GPUs asked of a partition without any; round by round; quiet waiting without accounting."""
    results = tmp_path / "results"
    proc = harness(cpu_cluster, "sweep", "qkv_bias", *micro, "--until-decided", "--min-seeds", "2",
                   "--max-seeds", "2", "--launcher", "slurm", "--wait", "--name", "cpu", "--results", str(results))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sacct" not in proc.stdout + proc.stderr and "Warning" not in proc.stderr
    table = rows(results)
    assert set(table["status"]) == {"completed"} and table["seed"].nunique() == 2
    assert proc.stdout.count("submitted 2 runs as Slurm job array") == table["seed"].nunique()  # one round per seed
    assert all("--gpus-per-node" not in s and "--partition" not in s for s in scripts(results))
    report = harness(cpu_cluster, "report", "--results", str(results), "--sweep", "cpu", "--no-plots",
                     "--out", str(tmp_path / "cpu.md"))
    assert "qkv_bias" in report.stdout


@pytest.mark.slow  # CI time: the class stays covered by a shorter test in the fast tier
def test_sweep_on_a_gpu_partition(gpu_cluster, tmp_path, micro):
    results = tmp_path / "results"
    harness(gpu_cluster, "sweep", "qkv_bias", "--seeds", "1", *micro, "--launcher", "slurm", "--wait",
            "--name", "gpu", "--results", str(results))
    assert set(rows(results)["status"]) == {"completed"}
    assert any("#SBATCH --gpus-per-node=1\n" in s for s in scripts(results))
    assert status(gpu_cluster, results, "gpu")["totals"] == {"done": 2}


@pytest.mark.slow  # CI time: Slurm submission stays in the fast tier (the requeue test here, test_slurm.py's job array), status in test_status.py
def test_status_asks_slurm_and_a_second_sweep_submits_nothing_twice(cpu_cluster, tmp_path, long_run):
    results = tmp_path / "results"
    # ten times the long run (about 80 s each): none may finish before the cancel, which costs nothing
    args = ["sweep", "qkv_bias", "--seeds", "2", *long_run, "--tokens", "2048000", "--launcher", "slurm",
            "--slurm-array-parallelism", "1", "--name", "st", "--results", str(results)]
    first = harness(cpu_cluster, *args)
    assert "submitted 4 runs" in first.stdout
    wait_for(lambda: "running" in status(cpu_cluster, results, "st")["totals"], what="a running job")
    st = status(cpu_cluster, results, "st")
    assert st["totals"] == {"running": 1, "queued": 3}, st["totals"]
    assert any("pending (JobArrayTaskLimit)" in r["detail"] for r in st["runs"])
    again = harness(cpu_cluster, *args)
    assert "4 running or queued elsewhere" in again.stdout and "submitted" not in again.stdout
    assert len(scripts(results)) == 1
    cpu_cluster.run("scancel", "--name", "harness-st")
    wait_for(lambda: not cpu_cluster.jobs(), what="the cancelled jobs to leave the queue")
    st = status(cpu_cluster, results, "st")
    assert set(st["totals"]) <= {"cancelled", "lost", "interrupted"} and "queued" not in st["totals"], st["totals"]
    third = harness(cpu_cluster, *args)  # cancelled runs are submitted again
    assert "submitted 4 runs" in third.stdout
    cpu_cluster.run("scancel", "--name", "harness-st")


def test_preemption_by_requeue_and_by_usr2_resumes_bit_identically(cpu_cluster, tmp_path, long_run):
    """The array's two jobs run at once; the first is requeued by `scontrol requeue`, the second
    signalled USR2 (as before a time limit or on preemption): both resume from their checkpoints
    to the uninterrupted test loss."""
    results, reference = tmp_path / "results", tmp_path / "reference"
    args = ["qkv_bias", "--seeds", "1", *long_run]
    local = subprocess.Popen([sys.executable, "-m", "harness", "sweep", *args, "--jobs", "1", "--results",
                              str(reference)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    harness(cpu_cluster, "sweep", *args, "--launcher", "slurm", "--name", "pre", "--results", str(results))
    jobs = {job: run_id for run_id, job in json.loads((results / "sweeps" / "pre.jobs.json").read_text()).items()}
    for job, preempt in zip(sorted(jobs), (["scontrol", "requeue"], ["scancel", "--signal=USR2"])):
        meta = results / "runs" / jobs[job] / "checkpoint" / "meta.json"
        wait_for(meta.exists, what=f"job {job}'s first checkpoint")
        cpu_cluster.run(*preempt, job)
    for job in jobs:  # both preempted first: waiting for one must not let the other finish unpreempted
        wait_for(lambda: cpu_cluster.jobs().get(job) != "RUNNING", what=f"job {job} to be requeued")
    cpu_cluster.wait_empty(timeout=300)
    assert local.wait(timeout=300) == 0, local.stdout.read()
    got, want = rows(results), rows(reference)
    assert list(got["status"]) == ["completed", "completed"] and list(got["attempt"]) == [1, 1]  # counted once
    assert dict(zip(got["run_id"], got["test_loss"])) == dict(zip(want["run_id"], want["test_loss"]))
    for run_id in jobs.values():
        log = (results / "runs" / run_id / "log.txt").read_text()
        assert log.count("=== attempt") == 2, log[-2000:]
        resumed = log.split("=== attempt")[2]
        assert json.loads(next(ln for ln in resumed.splitlines() if ln.startswith("PROGRESS "))[9:])["step"] > 50


@pytest.mark.slow
def test_a_real_time_limit_requeues_and_resumes(cpu_cluster, tmp_path, small_corpus):
    """--time 1: Slurm signals USR2 before the limit, the job is requeued and resumes (about 3 minutes)."""
    results, reference = tmp_path / "results", tmp_path / "reference"
    args = ["--seeds", "1", "--preset", "micro", "--tokens", "9000000", "--set", "checkpoint_every=200",
            "--set", f"data={small_corpus}", "--set", "allow_repeat=true"]
    harness(cpu_cluster, "sweep", "qkv_bias", *args, "--launcher", "slurm", "--time", "1", "--wait",
            "--name", "tl", "--results", str(results), timeout=900)
    harness(cpu_cluster, "sweep", "qkv_bias", *args, "--jobs", "2", "--results", str(reference), timeout=900)
    got, want = rows(results), rows(reference)
    assert list(got["attempt"]) == [1, 1]
    assert dict(zip(got["run_id"], got["test_loss"])) == dict(zip(want["run_id"], want["test_loss"]))
    assert all((results / "runs" / r / "log.txt").read_text().count("=== attempt") >= 2 for r in got["run_id"])


def test_slurm_refusals_are_one_line_and_leave_nothing_submitted(cpu_cluster, tmp_path, monkeypatch, micro):
    from harness.report.status import status_payload

    results = tmp_path / "results"
    common = ["sweep", "qkv_bias", "--seeds", "1", *micro, "--launcher", "slurm", "--name", "x", "--results", str(results)]
    cases = [
        (None, [], r"sinfo failed: .*configuration"),  # no SLURM_CONF and no /etc/slurm/slurm.conf
        (str(cpu_cluster.conf), ["--partition", "nope"], r"--partition 'nope': Slurm has no such partition \(it has: cpu\)"),
        (str(cpu_cluster.conf), ["--gpus-per-node", "1"], r"sbatch refused the jobs: .*(gres|GRES|generic resource).*"
                                                          "nothing was submitted"),
    ]
    for conf, extra, message in cases:
        if conf is None:
            monkeypatch.delenv("SLURM_CONF", raising=False)
        else:
            monkeypatch.setenv("SLURM_CONF", conf)
        code, out, err = invoke(*common, *extra)
        assert code == 2, out + err
        assert err.count("\n") == 1 and re.search(message, err), err
        assert not (results / "sweeps" / "x.json").exists() and not list((results / "runs").glob("*/spec.json"))
        assert not (results / "submitit").exists() or not list((results / "submitit").rglob("*.pkl"))
        assert status_payload(results) == {}
