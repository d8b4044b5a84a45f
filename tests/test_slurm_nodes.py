"""Runs across nodes, for real: a Slurm 22.05 cluster of two nodes (tests/slurmkit.py: a controller
and two slurmd, each in its own network namespace with its own hostname and address), and
torchrun's multi-node options with two agents on one machine.

A two-node sweep equals its one-node twin and `harness status` names its nodes. A rank killed, a
rank stopped (SIGSTOP: it hangs) and a whole node lost mid-run (its link cut, its processes
killed) each end in bounded time, are recorded as a failed attempt whose reason names the rank
and node, are retried under the one retry policy, and resume from the last checkpoint to the
uninterrupted run's test loss. What bounds each: a dead rank closes its connections (the others
fail at once); a hung or lost peer leaves the others in a collective until
HARNESS_COLLECTIVE_TIMEOUT; a lost node is declared down by Slurm after its SlurmdTimeout, which
ends the job (Slurm requeues it; it resumes once the node is back).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, free_port
from reliability.relkit import faults, record_figure
from slurmkit import ClusterUnavailable, SlurmCluster

pytest.importorskip("submitit")

HOOK = Path(__file__).resolve().parent / "reliability" / "faulthook"
COLLECTIVE_S = 10  # HARNESS_COLLECTIVE_TIMEOUT here: how long a rank waits for a hung or lost peer
SLURMD_TIMEOUT_S = 30  # the cluster's SlurmdTimeout: how long Slurm waits for a silent node
NODE_WORD_S = 15  # the default HARNESS_NODE_WORD_S: how long node 0 waits for the others' word


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    try:
        c = SlurmCluster(tmp_path_factory.mktemp("slurm2"), nodes=2, slurmd_timeout_s=SLURMD_TIMEOUT_S).start()
    except ClusterUnavailable as err:
        pytest.skip(f"no two-node test Slurm cluster here: {str(err).splitlines()[0]}")
    yield c
    c.stop()


@pytest.fixture(scope="module")
def long_run(small_corpus) -> list[str]:
    """200 steps (a few seconds across two nodes) with a checkpoint every 20."""
    return ["baseline", "--seeds", "1", "--preset", "micro", "--tokens", "51200", "--set", "checkpoint_every=20",
            "--set", f"data={small_corpus}", "--set", "allow_repeat=true"]


def harness(cluster: SlurmCluster, *args: str, env: dict | None = None, timeout: float = 600):
    """`harness ARGS` on the login node (the controller's namespace)."""
    environ = cluster.env | {"HARNESS_SLURM_POLL_S": "1", "COLUMNS": "200",
                             "HARNESS_COLLECTIVE_TIMEOUT": str(COLLECTIVE_S)} | (env or {})
    return subprocess.run([*cluster.prefix, sys.executable, "-m", "harness", *args], cwd=REPO, env=environ,
                          capture_output=True, text=True, timeout=timeout)


def rows(results: Path) -> list[dict]:
    return pd.read_parquet(results / "runs.parquet").to_dict("records")


def wait_for(predicate, timeout: float = 180, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture(scope="module")
def one_node(tmp_path_factory, long_run) -> dict[int, float]:
    """The same run on one node: 2 processes (the two-node run's world size) and 1 process."""
    out = {}
    for nproc in (2, 1):
        results = tmp_path_factory.mktemp(f"one-node-{nproc}")
        proc = subprocess.run([sys.executable, "-m", "harness", "sweep", *long_run, "--nproc", str(nproc),
                               "--results", str(results)], cwd=REPO, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        out[nproc] = rows(results)[0]["test_loss"]
    return out


@pytest.fixture(scope="module")
def two_nodes(cluster, tmp_path_factory, long_run) -> dict:
    """The uninterrupted two-node run, watched through `harness status` while it runs."""
    results = tmp_path_factory.mktemp("two-nodes")
    args = ["sweep", *long_run, "--launcher", "slurm", "--nodes", "2", "--name", "two", "--results", str(results)]
    t0 = time.monotonic()
    submitted = harness(cluster, *args)
    assert submitted.returncode == 0 and "submitted 1 runs" in submitted.stdout, submitted.stdout + submitted.stderr
    seen = {}

    def running() -> bool:  # the run trains for several seconds, `harness status` answers in about two
        st = json.loads(harness(cluster, "status", "--json", "--results", str(results)).stdout)["two"]
        seen.update(st["runs"][0])
        assert seen["state"] != "done", "the run finished before status ever saw it running"
        return seen["state"] == "running" and bool(seen["nodes"])

    wait_for(running, what="the two-node job to start")
    waited = harness(cluster, *args, "--wait")
    assert waited.returncode == 0, waited.stdout + waited.stderr
    return {"results": results, "status": seen, "wall_s": time.monotonic() - t0,
            "row": rows(results)[0]}


def test_a_two_node_sweep_equals_its_one_node_twin(two_nodes, one_node):
    row, results = two_nodes["row"], two_nodes["results"]
    assert (row["status"], row["attempt"], row["world_size"]) == ("completed", 1, 2)
    assert row["test_loss"] == pytest.approx(one_node[2], abs=1e-6)  # placement invariance across nodes
    assert row["test_loss"] == pytest.approx(one_node[1], abs=1e-6)
    run_dir = results / "runs" / row["run_id"]
    hosts = {json.loads(ln.split("HARNESS-RANK ", 1)[1])["host"]
             for log in ("log.txt", "log.node1.txt") for ln in (run_dir / log).read_text().splitlines()
             if "HARNESS-RANK " in ln}
    assert hosts == {"hnode1", "hnode2"}  # one rank on each node
    record_figure("two-node-sweep", wall_s=round(two_nodes["wall_s"], 1), test_loss=row["test_loss"],
                  one_node_2proc=one_node[2], one_node_1proc=one_node[1])


def test_status_names_a_multi_node_runs_nodes(two_nodes):
    assert two_nodes["status"]["nodes"] == "hnode[1-2]", two_nodes["status"]  # Slurm's node list


def failing_sweep(cluster, tmp_path, long_run, fault: dict | None = None, during=None) -> dict:
    """The long run on two nodes with a fault in it (faulthook), or `during(results)` done to it."""
    results = tmp_path / "results"
    env = {}
    if fault is not None:
        fault = fault | {"role": "worker", "once": str(tmp_path / "fired"), "log": str(tmp_path / "faults.jsonl")}
        env = {"PYTHONPATH": str(HOOK), "HARNESS_TEST_FAULT": json.dumps(fault)}
    args = ["sweep", *long_run, "--launcher", "slurm", "--nodes", "2", "--name", "f", "--results", str(results)]
    t0 = time.monotonic()
    proc = subprocess.Popen([*cluster.prefix, sys.executable, "-m", "harness", *args, "--wait"], cwd=REPO,
                            env=cluster.env | {"HARNESS_SLURM_POLL_S": "1", "HARNESS_COLLECTIVE_TIMEOUT": str(COLLECTIVE_S)}
                            | env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        fault_time = during(results) if during is not None else None
        out, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    if fault is not None:
        fired = faults(tmp_path / "faults.jsonl")
        assert len(fired) == 1, fired
        fault_time = fired[0]["time"]
    assert proc.returncode == 0, out
    journal = next(results.glob("runs/*/attempts/1.json"))
    return {"rows": rows(results), "out": out, "wall_s": time.monotonic() - t0,
            "ended_s": journal.stat().st_mtime - fault_time}  # the fault -> the failed attempt recorded


def check_retried(got: dict, two_nodes: dict, *words: str) -> None:
    table = got["rows"]
    assert [(r["attempt"], r["status"]) for r in table] == [(1, "failed"), (2, "completed")], table
    for word in words:
        assert word in table[0]["reason"], table[0]["reason"]
    assert table[1]["test_loss"] == two_nodes["row"]["test_loss"]  # resumed from its checkpoint, bit-identical
    assert "Traceback" not in got["out"], got["out"][-3000:]


@pytest.mark.slow  # CI time: a killed worker's attempt and retry stay in the fast tier (reliability/test_workers.py)
def test_a_killed_rank_on_the_second_node_fails_the_attempt_at_once_and_the_retry_resumes(
        cluster, two_nodes, tmp_path, long_run):
    got = failing_sweep(cluster, tmp_path, long_run, {"host": "hnode2", "point": "train-step", "nth": 30,
                                                      "action": "kill_self"})
    check_retried(got, two_nodes, "on node 1 (hnode2): Signal 9 (SIGKILL)", "rank ")
    record_figure("two-node-killed-rank", ended_s=round(got["ended_s"], 2), sweep_s=round(got["wall_s"], 1),
                  reason=got["rows"][0]["reason"][:200])
    assert got["ended_s"] < 20


@pytest.mark.slow
def test_a_stopped_rank_ends_by_the_collective_timeout(cluster, two_nodes, tmp_path, long_run):
    got = failing_sweep(cluster, tmp_path, long_run, {"host": "hnode2", "point": "train-step", "nth": 30,
                                                      "action": "stop_self"})
    check_retried(got, two_nodes, f"on node 1 (hnode2) gave no word within {NODE_WORD_S} s", "rank ",
                  f"Timed out waiting {COLLECTIVE_S * 1000}ms")
    record_figure("two-node-stopped-rank", ended_s=round(got["ended_s"], 2), sweep_s=round(got["wall_s"], 1),
                  reason=got["rows"][0]["reason"][:200])
    assert COLLECTIVE_S <= got["ended_s"] < COLLECTIVE_S + NODE_WORD_S + 15


@pytest.mark.slow
def test_a_lost_node_ends_the_attempt_and_the_requeued_job_resumes_once_it_is_back(
        cluster, two_nodes, tmp_path, long_run):
    marks = {}

    def lose_and_repair(results: Path) -> float:
        wait_for(lambda: list(results.glob("runs/*/checkpoint/meta.json")), what="the first checkpoint")
        lost = time.time()
        cluster.lose_node("hnode2")
        wait_for(lambda: list(results.glob("runs/*/attempts/1.json")), what="the failed attempt to be recorded")
        wait_for(lambda: cluster.node_states().get("hnode2", "").startswith("down"), timeout=SLURMD_TIMEOUT_S * 3,
                 what="Slurm to declare the node down")
        marks["down_s"] = time.time() - lost
        cluster.restore_node("hnode2")
        wait_for(lambda: cluster.node_states().get("hnode2") in ("idle", "allocated", "mixed"),
                 what="the node to come back")
        marks["back_s"] = time.time() - lost
        return lost

    got = failing_sweep(cluster, tmp_path, long_run, during=lose_and_repair)
    check_retried(got, two_nodes, "node 1 (hnode2) gave no word", f"Timed out waiting {COLLECTIVE_S * 1000}ms")
    record_figure("two-node-lost-node", ended_s=round(got["ended_s"], 2), slurm_down_s=round(marks["down_s"], 1),
                  sweep_s=round(got["wall_s"], 1), reason=got["rows"][0]["reason"][:200])
    assert COLLECTIVE_S <= got["ended_s"] < COLLECTIVE_S + NODE_WORD_S + 15
    assert marks["down_s"] < SLURMD_TIMEOUT_S * 3


@pytest.mark.slow  # CI time: the two-node Slurm sweep (test_a_two_node_sweep_equals_its_one_node_twin) runs torchrun across nodes in the fast tier
def test_torchrun_across_two_agents_on_one_machine(tmp_path, small_corpus):
    """Without Slurm: the same sweep command on each 'node' with its --node-rank, one shared results
    folder; node 0 records, node 1 follows its record from run to run."""
    results = tmp_path / "results"
    args = [sys.executable, "-m", "harness", "sweep", "baseline", "--seeds", "2", "--preset", "micro", "--tokens",
            "3000", "--set", f"data={small_corpus}", "--nodes", "2", "--rdzv-endpoint", f"localhost:{free_port()}",
            "--results", str(results)]
    node1 = subprocess.Popen([*args, "--node-rank", "1"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True)
    node0 = subprocess.run([*args, "--node-rank", "0"], cwd=REPO, capture_output=True, text=True, timeout=300)
    out1, _ = node1.communicate(timeout=120)
    assert node0.returncode == 0 and node1.returncode == 0, node0.stdout + node0.stderr + out1
    table = rows(results)
    assert [(r["seed"], r["attempt"], r["status"], r["world_size"]) for r in table] == \
        [(0, 1, "completed", 2), (1, 1, "completed", 2)]
    reference = subprocess.run([*args[:-6], "--nproc", "2", "--results", str(tmp_path / "one")], cwd=REPO,
                               capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stdout + reference.stderr
    want = {r["seed"]: r["test_loss"] for r in rows(tmp_path / "one")}
    assert {r["seed"]: r["test_loss"] for r in table} == pytest.approx(want, abs=1e-6)
