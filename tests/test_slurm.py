"""Sweeps through submitit: the local executor end to end (same job code as Slurm), a requeued job
resuming from its checkpoint, the sbatch script a Slurm submission writes, and bad cluster input."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import cli, invoke
from harness.cluster import slurmjob
from harness.core.errors import UserError
from harness.cluster.slurm import ClusterOptions, parse_time
from harness.cluster.slurmjob import JobProcesses, RunJob

submitit = pytest.importorskip("submitit")

FAKE_SBATCH = """#!/bin/sh
# Slurm's sbatch, as far as a submission needs it: keep the script, answer with a job id
for last; do :; done
cp "$last" "$FAKE_SBATCH_DIR/script.sh"
echo "$@" > "$FAKE_SBATCH_DIR/args.txt"
echo "Submitted batch job 4242"
"""



@pytest.mark.parametrize("text, minutes", [("90", 90), ("4:00:00", 240), ("1-02:00:00", 1560), ("2-3", 3060),
                                           ("30:30", 31), ("90m", 90), ("4h", 240), ("1.5d", 2160)])
def test_parse_time(text, minutes):
    assert parse_time(text) == minutes


def test_cluster_options_are_checked():
    for opts, message in [
        (ClusterOptions("torchrun", partition="gpu"), "--partition is a Slurm option"),
        (ClusterOptions("local", array_parallelism=4), "--slurm-array-parallelism is a Slurm option"),
        (ClusterOptions("torchrun", gpus_per_node=8), "with torchrun use --nproc"),
        (ClusterOptions("local", time="soon"), "--time 'soon'"),
        (ClusterOptions("local", gpus_per_node=-1), "--gpus-per-node must be >= 0"),
        (ClusterOptions("pbs"), "allowed: torchrun, local, slurm"),
    ]:
        with pytest.raises(UserError, match=message):
            opts.check()
    with pytest.raises(UserError, match="KEY=VALUE"):
        ClusterOptions("slurm", slurm_args=("=x",)).slurm_additional()
    assert ClusterOptions("slurm", slurm_args=("account=p", "exclusive")).slurm_additional() == {
        "account": "p", "exclusive": True}
    with pytest.raises(UserError, match="disagree"):
        ClusterOptions("slurm", gpus_per_node=8).nproc(4, 1)


def test_a_terminated_job_does_not_record_its_attempt():
    processes = JobProcesses(nproc=1)
    assert processes.records
    slurmjob._TERMINATING.set()
    try:
        assert not processes.records
    finally:
        slurmjob._TERMINATING.clear()


def test_slurm_options_without_slurm_are_one_line_and_exit_2(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    common = ["qkv_bias", "--seeds", "5", "--preset", "micro", "--results", str(tmp_path)]
    code, _, err = invoke("sweep", *common, "--launcher", "slurm", "--partition", "gpu", "--gpus-per-node", "8")
    assert code == 2 and err.count("\n") == 1 and "this machine has no Slurm" in err
    code, _, err = invoke("sweep", *common, "--partition", "gpu")
    assert code == 2 and err.count("\n") == 1 and "--partition is a Slurm option: use it with --launcher slurm" in err
    assert not (tmp_path / "runs.parquet").exists()


def test_slurm_submission_writes_one_job_array(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sinfo").write_text("#!/bin/sh\necho 'gpu*|gpu:8(S:0-1)'\n")
    (bin_dir / "squeue").write_text("#!/bin/sh\n[ -f \"$FAKE_SBATCH_DIR/script.sh\" ] && "
                                    "for i in 0 1 2 3; do echo \"4242_$i|PENDING|Priority\"; done\nexit 0\n")
    for tool in ("sbatch", "srun", "sinfo", "squeue"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SBATCH_DIR", str(tmp_path))
    results = tmp_path / "results"
    code, out, err = invoke("sweep", "qkv_bias", "--seeds", "2", "--preset", "micro", "--tokens", "3000",
                            "--set", "micro_batch=1", "--launcher", "slurm", "--partition", "gpu",
                            "--gpus-per-node", "8", "--time", "2:00:00", "--slurm-array-parallelism", "3",
                            "--slurm-arg", "account=proj", "--results", str(results), "--name", "cluster")
    assert code == 0, err
    assert "submitted 4 runs as Slurm job array 4242 (at most 3 at once)" in out
    script = (tmp_path / "script.sh").read_text()
    for line in ("--array=0-3%3", "--partition=gpu", "--gpus-per-node=8", "--nodes=1", "--ntasks-per-node=1",
                 "--time=120", "--signal=USR2@120", "--requeue", "--account=proj", "--job-name=harness-cluster"):
        assert f"#SBATCH {line}\n" in script, line
    assert "srun" in script and "submitit.core._submit" in script
    jobs = json.loads((results / "sweeps" / "cluster.jobs.json").read_text())
    assert sorted(jobs.values()) == ["4242_0", "4242_1", "4242_2", "4242_3"]
    spec = json.loads((results / "runs" / next(iter(jobs)) / "spec.json").read_text())
    assert spec["world_size"] == 8 and spec["sweep"] == "cluster"
    from harness.report.status import status_payload

    status = status_payload(results, "cluster")["cluster"]
    assert status["totals"] == {"queued": 4} and status["runs"][0]["detail"] == "Slurm job 4242_0 pending (Priority)"


@pytest.mark.slow  # the same job code runs on a real Slurm in CI (tests/test_slurm_cluster.py)
@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorboard") is None, reason="needs harness[tensorboard]")
def test_local_launcher_runs_the_sweep_like_torchrun(tmp_path):
    results = tmp_path / "results"
    args = ["sweep", "qkv_bias", "--seeds", "1", "--preset", "micro", "--tokens", "1500", "--launcher", "local",
            "--name", "loc", "--results", str(results)]
    proc = cli(*args, "--log", "tensorboard", check=True)
    assert "2 to submit (local)" in proc.stdout and "test loss" in proc.stdout
    rows = pd.read_parquet(results / "runs.parquet")
    assert len(rows) == 2 and set(rows["status"]) == {"completed"} and set(rows["sweep"]) == {"loc"}
    again = cli(*args, check=True)  # nothing left to do
    assert "2 done" in again.stdout and "0 to submit" in again.stdout and len(pd.read_parquet(results / "runs.parquet")) == 2
    # the same run through the default launcher gives the same test loss
    cli("run", "--preset", "micro", "--seed", "0", "--tokens", "1500", "--results", str(tmp_path / "direct"),
        "--log", "tensorboard", check=True)
    direct = pd.read_parquet(tmp_path / "direct" / "runs.parquet").iloc[0]
    local = rows[rows["arm"] == "baseline"].iloc[0]
    assert direct["run_id"] == local["run_id"] and direct["test_loss"] == local["test_loss"]
    # TensorBoard: live from the local job, from the store for the direct run
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for folder in (results / "tensorboard" / "loc" / local["run_id"],
                   tmp_path / "direct" / "tensorboard" / "adhoc" / direct["run_id"]):
        acc = EventAccumulator(str(folder))
        acc.Reload()
        assert {"train/loss", "test/loss"} <= set(acc.Tags()["scalars"]), folder
        assert [e.step for e in acc.Scalars("train/loss")][-1] == 6
        assert acc.Scalars("test/loss")[0].value == pytest.approx(local["test_loss"], rel=1e-6)


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


@pytest.mark.slow  # tests/test_slurm_cluster.py preempts real Slurm jobs in CI
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the job's process through /proc")
def test_a_preempted_job_is_requeued_and_resumes_from_its_checkpoint(tmp_path):
    from harness.core import config as cfgmod
    from harness.planning.budget import fixed_budget
    from harness.planning.plan import run_spec
    from harness.store.results import ResultsStore

    cfg = cfgmod.resolve("micro", "baseline", {"checkpoint_every": 5})
    spec = run_spec(cfg, 0, fixed_budget(cfg, 1, 25_600), "pre", 1)  # 100 steps
    results = tmp_path / "results"
    ResultsStore(results).ensure_writable()
    executor = submitit.AutoExecutor(folder=str(tmp_path / "jobs"), cluster="local")
    executor.update_parameters(timeout_min=60)
    job = executor.submit(RunJob(dataclasses.asdict(spec), str(results), 1, 0))
    run_dir = results / "runs" / spec.run_id
    deadline = time.time() + 240
    while not (run_dir / "checkpoint" / "meta.json").exists():
        assert time.time() < deadline and not job.done(), "the run never wrote a checkpoint"
        time.sleep(0.2)
    step = json.loads((run_dir / "checkpoint" / "meta.json").read_text())["step"]
    tasks = _children(job._process.pid)
    assert len(tasks) == 1
    os.kill(tasks[0], signal.SIGUSR2)  # what Slurm sends before a time limit or on preemption
    assert job.result(), "the requeued job did not finish"
    log = (run_dir / "log.txt").read_text().split("=== attempt")
    assert len(log) == 3, "the run was not started a second time"
    resumed = [json.loads(line[len("PROGRESS "):]) for line in log[2].splitlines() if line.startswith("PROGRESS ")]
    assert resumed[0]["step"] > step >= 5 and resumed[-1]["step"] == 100
    rows = pd.read_parquet(results / "runs.parquet")
    assert list(rows["status"]) == ["completed"]  # the interrupted attempt is not a failure
    assert "Requeued job" in job.stderr() or "requeue" in (job.stdout() or "").lower() + (job.stderr() or "").lower()
