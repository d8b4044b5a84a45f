"""Command lines (an argument list, no shell: the worker itself for one process, torchrun standalone for
one node, c10d for several), placement of concurrent runs on their own cores or GPUs, and Ctrl-C."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.launch import torchrun as launch

from harness.core import placement

from harness.launch import procs
from harness.core.errors import UserError
from harness.launch.torchrun import Processes
from harness.core.placement import Slot
from conftest import cli


def test_one_process_runs_the_worker_itself_with_torchruns_variables():
    processes = Processes()
    assert processes.command(Path("/r/spec.json"), "run-1")[1:] == ["-m", "harness.training.worker", "/r/spec.json"]
    assert processes.env == {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                            "PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1"}  # the working directory is not on sys.path
    assert "RANK" not in Processes(nproc=2).env


def test_concurrent_runs_get_their_own_cores_or_gpus(monkeypatch):
    monkeypatch.setattr(placement, "usable_cores", lambda: [0, 1, 2, 3])
    monkeypatch.delenv("HARNESS_CPU_THREADS", raising=False)
    assert placement.auto_jobs(1, 0) == 4 and placement.auto_jobs(2, 0) == 2 and placement.auto_jobs(8, 0) == 1
    found, shared = placement.slots(2, 2, 0)
    assert [s.cpus for s in found] == [(0, 1), (2, 3)] and not shared and found[0].env() == {"OMP_NUM_THREADS": "1"}
    found, shared = placement.slots(3, 2, 0)  # asked for more than the machine holds: shared, round-robin
    assert shared and [s.cpus for s in found] == [(0, 1), (2, 3), (0, 1)]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert placement.auto_jobs(1, 4) == 4 and placement.auto_jobs(2, 4) == 2
    found, shared = placement.slots(2, 2, 4)
    assert [s.env() for s in found] == [{"CUDA_VISIBLE_DEVICES": "4,5"}, {"CUDA_VISIBLE_DEVICES": "6,7"}]
    assert placement.slots(1, 8, 8) == ([Slot()], False)
    with pytest.raises(UserError, match="--jobs above 1 is for runs on one node"):
        Processes(nproc=1, nnodes=2, rdzv_endpoint="h:1").jobs(2)
    assert Processes(nproc=1, nnodes=2, rdzv_endpoint="h:1").jobs(None) == 1
    for bad in ("0", "-1", "x", "1.5", "2000"):
        with pytest.raises(UserError, match="--jobs"):
            placement.parse_jobs(bad)
    assert placement.parse_jobs("auto") is None and placement.parse_jobs(" 3 ") == 3


def test_single_node_is_standalone():
    cmd = Processes(nproc=2).command(Path("/r/spec.json"), "run-1")
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                       "-m", "harness.training.worker", "/r/spec.json"]


def test_multi_node_passes_rendezvous_through():
    processes = Processes(nproc=8, nnodes=4, node_rank=3, rdzv_endpoint="node0:29500")
    cmd = processes.command(Path("/r/spec.json"), "run-1")
    assert processes.world_size == 32 and not processes.records
    joined = " ".join(cmd)
    assert "--nnodes 4 --node-rank 3 --rdzv-backend c10d --rdzv-endpoint node0:29500 --rdzv-id run-1" in joined
    assert "--standalone" not in cmd


def test_each_node_has_its_own_files_in_the_shared_run_folder():
    first, second = Processes(nnodes=2, rdzv_endpoint="h:1"), Processes(nnodes=2, node_rank=1, rdzv_endpoint="h:1")
    assert [first.node_file(n) for n in ("spec.json", "log.txt", ".lock")] == ["spec.json", "log.txt", ".lock"]
    assert [second.node_file(n) for n in ("spec.json", "log.txt", ".lock")] == \
        ["node1.spec.json", "log.node1.txt", ".lock.node1"]
    assert second.where.startswith(" on node 1 (") and Processes().where == ""


def _node_log(run_dir: Path, name: str, node: int, host: str, body: str, ended: int | None) -> None:
    text = f"=== attempt 1 at 2026-01-01 00:00:00 on node {node} ({host}): torchrun ...\n{body}"
    if ended is not None:
        text += f"=== ended attempt 1 on node {node} ({host}): exit code {ended}\n"
    (run_dir / name).write_text(text)


ROOT_CAUSE = """Root Cause (first observed failure):
[0]:
  host      : hb
  rank      : 1 (local_rank: 0)
  exitcode  : -9 (pid: 12)
  error_file: <N/A>
  traceback : Signal 9 (SIGKILL) received by PID 12
"""


def test_a_multi_node_failure_names_the_rank_that_failed_first_and_the_node(tmp_path, monkeypatch):
    """The rank that failed on its own comes before the ranks that only lost their peer; a node
    that never said how its part ended is named as silent."""
    monkeypatch.setenv("HARNESS_NODE_WORD_S", "0.5")
    processes = Processes(nnodes=2, rdzv_endpoint="ha:1")
    peer_lost = 'HARNESS-RANK {"rank": 0, "world": 2, "host": "ha", "pid": 11}\n' \
                "RuntimeError: [pair.cc:537] Read error [10.0.0.2]:4823: Connection reset by peer\n"
    _node_log(tmp_path, "log.txt", 0, "ha", peer_lost, 1)
    _node_log(tmp_path, "log.node1.txt", 1, "hb", 'HARNESS-RANK {"rank": 1, "world": 2, "host": "hb", "pid": 12}\n'
              + ROOT_CAUSE, 1)
    sections = launch.node_sections(tmp_path, processes, 1, launch.node_word_seconds())
    assert launch.nodes_interrupted(sections) is None
    reason = launch.nodes_failure_reason(sections, 0.5, 1)
    assert reason.startswith("workers exited with code 1: rank 1 on node 1 (hb): Signal 9 (SIGKILL); "
                             "rank 0 on node 0 (ha): RuntimeError:"), reason
    _node_log(tmp_path, "log.node1.txt", 1, "hb", 'HARNESS-RANK {"rank": 1, "world": 2, "host": "hb", "pid": 12}\n', None)
    t0 = time.monotonic()
    sections = launch.node_sections(tmp_path, processes, 1, launch.node_word_seconds())
    assert 0.5 <= time.monotonic() - t0 < 5
    reason = launch.nodes_failure_reason(sections, 0.5, 1)
    assert "rank 1 on node 1 (hb) gave no word within 0.5 s (lost, or hanging); rank 0 on node 0 (ha)" in reason
    monkeypatch.setenv("HARNESS_NODE_WORD_S", "soon")
    with pytest.raises(UserError, match="HARNESS_NODE_WORD_S='soon'"):
        launch.node_word_seconds()


def test_an_attempt_that_a_signal_stopped_on_any_node_is_interrupted_not_failed(tmp_path, monkeypatch):
    """Ctrl-C on node 1, or Slurm's termination reaching it first: node 0's workers only lost their
    peer, but the attempt was stopped from outside (not counted, it resumes)."""
    monkeypatch.setenv("HARNESS_NODE_WORD_S", "0")
    processes = Processes(nnodes=2, rdzv_endpoint="ha:1")
    _node_log(tmp_path, "log.txt", 0, "ha", "RuntimeError: Connection closed by peer\n", 1)
    _node_log(tmp_path, "log.node1.txt", 1, "hb", "torchrun: Received SIGTERM death signal, shutting down\n", 1)
    assert launch.nodes_interrupted(launch.node_sections(tmp_path, processes, 1, launch.node_word_seconds())) == "SIGTERM"
    _node_log(tmp_path, "log.node1.txt", 1, "hb", "", -2)
    assert launch.nodes_interrupted(launch.node_sections(tmp_path, processes, 1, launch.node_word_seconds())) == "SIGINT"


def test_a_slurm_job_records_a_multi_node_attempt_only_if_it_failed_before_the_termination(monkeypatch):
    from harness.cluster import slurmjob

    monkeypatch.setattr(slurmjob, "_terminating_since", [None])
    many, one = slurmjob.JobProcesses(nnodes=2, rdzv_endpoint="h:1"), slurmjob.JobProcesses()
    assert many.records_attempt(100.0) and one.records_attempt(100.0)
    slurmjob._terminating_since[0] = 100.0 + slurmjob.SIGNAL_SKEW_S + 1  # the workers failed well before it
    assert many.records_attempt(100.0)
    slurmjob._terminating_since[0] = 100.5  # they ended as it came: maybe because of it
    assert not many.records_attempt(100.0)
    monkeypatch.setattr(slurmjob, "_TERMINATING", type("E", (), {"is_set": staticmethod(lambda: False)})())
    assert one.records_attempt(100.0)  # one node: judged by the workers' exit status alone, as before
    assert not slurmjob.JobProcesses(nnodes=2, node_rank=1, rdzv_endpoint="h:1").records_attempt(0.0)


def test_a_node_after_the_first_refuses_a_results_folder_that_is_not_shared(tmp_path):
    from types import SimpleNamespace

    from harness.store.results import ResultsStore

    store = ResultsStore(tmp_path)
    spec = SimpleNamespace(run_id="baseline-s0-abc", sweep="s")  # await_record reads only these
    store.run_dir(spec.run_id).mkdir(parents=True)
    with pytest.raises(UserError, match="not shared between the nodes"):
        launch.await_record(store, spec, 1, timeout=0)


def test_multi_node_needs_an_endpoint(tmp_path):
    proc = cli("sweep", "qkv_bias", "--nnodes", "2", "--results", str(tmp_path))
    assert proc.returncode == 2 and "--rdzv-endpoint" in proc.stderr


def test_ctrl_c_while_torchrun_forks_is_deferred_then_stops_the_run(tmp_path, monkeypatch, capfd, request):
    """A KeyboardInterrupt raised inside Python's at-fork hooks is printed as "Exception ignored"
    and lost; the latch holds it until the fork is done, then the run is stopped and cleaned up."""
    real_popen = subprocess.Popen
    started = []

    def popen_interrupted_mid_fork(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)  # delivered while the latch knows a fork is under way
        proc = real_popen(*args, **kwargs)
        started.append(proc)
        return proc

    monkeypatch.setattr(procs.subprocess, "Popen", popen_interrupted_mid_fork)
    # as in a terminal, also where the tests were started in the background (SIGINT ignored: the latch leaves that alone)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    lock = procs.RunLock(tmp_path / ".lock")
    assert lock.acquire()
    sleeper = [sys.executable, "-c", "import time; time.sleep(120)"]
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt), procs.ctrl_c_latch() as pressed:
        launch._launch(sleeper, tmp_path / "log.txt", 1, {}, None, lock, stall_s=600)
    assert pressed.is_set() and time.monotonic() - t0 < 30
    assert started and started[0].poll() is not None  # the child was stopped, not left running
    assert "Exception ignored" not in capfd.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_ctrl_c_while_the_command_imports_torch_ends_after_the_import(monkeypatch, request):
    """A KeyboardInterrupt raised inside torch's pybind11 callbacks aborts the process (SIGABRT, no
    exit 130): gpu_count's import only remembers a press, then raises it; an earlier, stale press
    (another command in this process) raises nothing."""
    import builtins

    previous = signal.signal(signal.SIGINT, procs.on_ctrl_c)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    request.addfinalizer(procs._ctrl_c.clear)  # no press left behind for later tests in this process
    procs.stop_runs()  # a stale press
    assert launch.gpu_count() >= 0
    real_import = builtins.__import__
    pressed_inside = []

    def import_interrupted(name, *args, **kwargs):
        if name == "torch":
            os.kill(os.getpid(), signal.SIGINT)  # delivered while the import runs
            time.sleep(0.1)
            pressed_inside.append(True)  # reached: the handler did not raise inside the import
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", import_interrupted)
    with pytest.raises(KeyboardInterrupt):
        launch.gpu_count()
    assert pressed_inside
    with pytest.raises(KeyboardInterrupt), procs.deferred_ctrl_c():  # a second press: a hung import stays interruptible
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        pressed_inside.append("first press remembered")
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert pressed_inside[-1] == "first press remembered"


def test_ctrl_c_outside_a_fork_raises_at_once(request):
    # as in a terminal, also where the tests were started in the background (SIGINT ignored: the latch leaves that alone)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    request.addfinalizer(lambda: signal.signal(signal.SIGINT, previous))
    with pytest.raises(KeyboardInterrupt), procs.ctrl_c_latch() as pressed:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert pressed.is_set()


@pytest.mark.parametrize("returncode, log, stopped_by", [
    (-signal.SIGTERM, "", "SIGTERM"), (-signal.SIGUSR2, "", "SIGUSR2"), (130, "", "SIGINT"), (143, "", "SIGTERM"),
    (1, "Traceback (most recent call last):\n  File \"x\", line 1\nKeyboardInterrupt\n", "SIGINT"),  # while importing
    (1, "[rank0]: KeyboardInterrupt\n", "SIGINT"), (1, "Received Signals.SIGTERM death signal, shutting down", "SIGTERM"),
    (1, "ValueError: bad\n", None), (-signal.SIGKILL, "", None), (0, "KeyboardInterrupt\n", None),
])
def test_an_attempt_is_judged_interrupted_by_how_its_workers_stopped(returncode, log, stopped_by):
    assert launch.interrupt_signal(returncode, log) == stopped_by


def test_the_local_launcher_refuses_several_nodes_before_writing_anything(tmp_path):
    pytest.importorskip("submitit")
    from conftest import invoke

    code, _, err = invoke("sweep", "qkv_bias", "--seeds", "1", "--launcher", "local", "--nodes", "2",
                          "--results", str(tmp_path))
    assert code == 2 and "--launcher local runs on this machine only" in err and err.count("\n") == 1, err
    assert not list(tmp_path.rglob("spec.json"))


def test_a_follower_waits_for_node_0s_table_row_not_just_its_journal_entry(tmp_path):
    """The journal entry of an attempt is written a moment before its table row, and the retry
    policy reads the rows: a follower that went on at the journal entry saw the run unsettled and
    started a ghost attempt that node 0 never records."""
    from harness.planning.plan import build_plan
    from harness.planning.request import SweepRequest
    from harness.store.record import RunResult, RunRow
    from harness.store.results import ResultsStore

    plan = build_plan(SweepRequest(("qkv_bias",), seeds=(0,), preset="micro", tokens=1000, name="s").check(),
                      1, False, tmp_path)
    spec, store = plan.specs[0], ResultsStore(tmp_path)
    store.append(RunRow.of(spec, 1, RunResult(status="failed", reason="boom"), run_dir="x"))
    (store.run_dir(spec.run_id) / "spec.json").write_text(spec.to_json())
    launch.await_record(store, spec, 1, timeout=0)  # recorded: returns at once
    (store.run_dir(spec.run_id) / "attempts" / "2.json").write_text("{}")  # attempt 2's journal entry only
    assert store.attempts(spec.run_id) == 2
    with pytest.raises(UserError, match="did not record attempt 2"):
        launch.await_record(store, spec, 2, timeout=0.3)
