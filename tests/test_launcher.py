"""torchrun command lines (an argument list, no shell; single node standalone, multi-node c10d) and Ctrl-C."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness import launch, procs
from harness.launch import Launcher
from conftest import cli


def test_single_node_is_standalone():
    cmd = Launcher(nproc=2).command(Path("/r/spec.json"), "run-1")
    assert cmd[1:] == ["-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone",
                       "-m", "harness.train", "/r/spec.json"]


def test_multi_node_passes_rendezvous_through():
    launcher = Launcher(nproc=8, nnodes=4, node_rank=3, rdzv_endpoint="node0:29500")
    cmd = launcher.command(Path("/r/spec.json"), "run-1")
    assert launcher.world_size == 32 and not launcher.records
    joined = " ".join(cmd)
    assert "--nnodes 4 --node-rank 3 --rdzv-backend c10d --rdzv-endpoint node0:29500 --rdzv-id run-1" in joined
    assert "--standalone" not in cmd


def test_multi_node_needs_an_endpoint(tmp_path):
    proc = cli("sweep", "qkv_bias", "--nnodes", "2", "--results", str(tmp_path))
    assert proc.returncode == 2 and "--rdzv-endpoint" in proc.stderr


def test_ctrl_c_while_torchrun_forks_is_deferred_then_stops_the_run(tmp_path, monkeypatch, capfd):
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


def test_ctrl_c_outside_a_fork_raises_at_once():
    with pytest.raises(KeyboardInterrupt), procs.ctrl_c_latch() as pressed:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    assert pressed.is_set()
