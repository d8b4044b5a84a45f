"""`harness status`: every planned run of a sweep counted per arm as done, running, queued, failed
or diverged, from the plan, the results store and the run folders' locks."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.planning.plan import build_plan
from harness.planning.request import SweepRequest
from harness.store.planfile import save_plan
from harness.launch.procs import is_running
from harness.store.record import RunResult, RunRow
from harness.store.results import ResultsStore
from harness.report.status import status_payload, sweep_names
from conftest import invoke


def row(spec, status: str, attempt: int = 1, test_loss: float = float("nan"), reason: str = "") -> RunRow:
    return RunRow.of(spec, attempt, RunResult(status=status, test_loss=test_loss, reason=reason), run_dir="x")



@pytest.fixture
def sweep(tmp_path):
    plan = build_plan(SweepRequest(("qkv_bias",), seeds=(0, 1, 2), preset="micro", tokens=1000, name="s1").check(),
                      1, False, tmp_path)
    save_plan(plan)
    store = ResultsStore(tmp_path)
    by = {(s.arm, s.seed): s for s in plan.specs}
    store.append(row(by["baseline", 0], "completed", test_loss=4.0))
    store.append(row(by["baseline", 1], "completed", test_loss=5.0))
    store.append(row(by["qkv_bias", 0], "failed", reason="workers exited with code 1: boom"))
    store.append(row(by["qkv_bias", 0], "failed", attempt=2, reason="workers exited with code 1: boom"))
    store.append(row(by["qkv_bias", 1], "failed", reason="oom"))
    store.append(row(by["qkv_bias", 1], "diverged", attempt=2, reason="non-finite training loss at step 3"))
    return tmp_path, plan, by


def hold_lock(run_dir):
    """A separate process holding the run folder's lock, as a running sweep or job does."""
    run_dir.mkdir(parents=True, exist_ok=True)
    code = ("import sys, time; from filelock import FileLock; l = FileLock(sys.argv[1]); l.acquire(); "
            "print('held', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(run_dir / ".lock")], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_states_per_arm(sweep):
    results, plan, by = sweep
    holder = hold_lock(ResultsStore(results).run_dir(by["baseline", 2].run_id))
    try:
        assert is_running(ResultsStore(results).run_dir(by["baseline", 2].run_id))
        payload = status_payload(results)
    finally:
        holder.kill()
        holder.wait()
    info = payload["s1"]
    assert info["totals"] == {"done": 2, "running": 1, "failed": 1, "diverged": 1, "queued": 1}
    base, qkv = info["arms"]["baseline"], info["arms"]["qkv_bias"]
    assert (base["runs"], base["done"], base["running"], base["mean_test_loss"]) == (3, 2, 1, 4.5)
    assert (qkv["runs"], qkv["failed"], qkv["diverged"], qkv["queued"], qkv["mean_test_loss"]) == (3, 1, 1, 1, None)
    runs = {(r["arm"], r["seed"]): r for r in info["runs"]}
    assert runs["qkv_bias", 0]["attempts"] == 2 and "boom" in runs["qkv_bias", 0]["detail"]
    assert [r["run_id"] for r in info["runs"]] == [s.run_id for s in plan.specs]  # seed-major plan order
    assert not is_running(ResultsStore(results).run_dir(by["baseline", 2].run_id))


def test_running_detail_and_sweeps_without_a_plan(sweep):
    results, plan, by = sweep
    run_dir = ResultsStore(results).run_dir(by["qkv_bias", 2].run_id)
    run_dir.mkdir(parents=True)
    (run_dir / "log.txt").write_text("=== attempt 1\nPROGRESS " + json.dumps(
        {"step": 7, "steps": 40, "tokens": 1792, "loss": 3.25, "tokens_per_s": 10.0}) + "\nsome output\n")
    holder = hold_lock(run_dir)
    try:
        runs = {r["run_id"]: r for r in status_payload(results, "s1")["s1"]["runs"]}
    finally:
        holder.kill()
        holder.wait()
    assert runs[by["qkv_bias", 2].run_id]["detail"] == "step 7/40, loss 3.2500"
    other = by["baseline", 0]
    moved = row(other, "completed", attempt=9, test_loss=3.0)
    moved.sweep = "old"
    ResultsStore(results).append(moved)
    assert sweep_names(results) == ["s1", "old"]
    assert status_payload(results, "old")["old"]["totals"] == {"done": 1}


def test_cli_status(sweep):
    results, _, _ = sweep
    code, out, err = invoke("status", "--results", str(results), "--runs")
    assert code == 0, err
    assert "sweep s1: 2/6 done" in out and "runs of s1" in out and "4.5000" in out
    code, out, _ = invoke("status", "--results", str(results), "--sweep", "s1", "--json")
    assert code == 0 and json.loads(out)["s1"]["totals"]["done"] == 2
    code, _, err = invoke("status", "--results", str(results), "--sweep", "nope")
    assert code == 2 and "no sweep 'nope'" in err and "s1" in err and err.count("\n") == 1
    code, out, _ = invoke("status", "--results", str(results / "empty"))
    assert code == 0 and "no sweeps" in out


def test_a_running_multi_node_run_shows_its_nodes(sweep):
    """Without Slurm the nodes come from each node's log header in the shared run folder."""
    from io import StringIO

    from rich.console import Console

    from harness.report.status import print_status

    results, _, by = sweep
    run_dir = ResultsStore(results).run_dir(by["qkv_bias", 2].run_id)
    run_dir.mkdir(parents=True)
    (run_dir / "log.txt").write_text("=== attempt 1 at 2026-01-01 00:00:00 on node 0 (gpu-a): torchrun ...\n")
    (run_dir / "log.node1.txt").write_text("=== attempt 1 at 2026-01-01 00:00:00 on node 1 (gpu-b): torchrun ...\n")
    holder = hold_lock(run_dir)
    try:
        payload = status_payload(results, "s1")
    finally:
        holder.kill()
        holder.wait()
    runs = {r["run_id"]: r for r in payload["s1"]["runs"]}
    assert runs[by["qkv_bias", 2].run_id]["nodes"] == "gpu-a,gpu-b"
    assert {r["nodes"] for rid, r in runs.items() if rid != by["qkv_bias", 2].run_id} == {""}
    out = StringIO()
    print_status(payload, Console(file=out, width=250), show_runs=True)
    assert "nodes" in out.getvalue() and "gpu-a,gpu-b" in out.getvalue()
