"""Warm workers: one process per slot that imports torch once and forks a fresh child per run.

A cold worker (`python -m harness.training.worker`) spends about 2.5 s of every run importing
torch and torch._dynamo (building a torch.optim optimiser imports the latter). A warm worker is a
`python -m harness.launch.warm` process, started once per slot of a sweep, that imports them and
the worker's modules, then waits. For each single-process run the parent sends it the run's spec
path, its whole environment and CPU list, and two descriptors (the write end of the run's output
pipe and the run folder's lock); it forks a child, which takes them as its stdout/stderr and
environment and runs harness.training.worker.entry, exactly the cold worker's code, and reports
the child's pid and then its exit status (negative for a signal, as subprocess does).

Isolation: every run is a new process forked from the same clean state (the warm process never
trains, seeds, sets threads or touches CUDA), so a crash, a kill, a leaked global setting or a
compiled graph of one run dies with it. The child is in the parent's process group (Ctrl-C and a
group kill reach it, as they reach a cold worker); it dies with the warm process (PDEATHSIG), and
the warm process exits when its socket to the parent closes, which also happens when the parent
is killed. A run whose parent died is found by its pid file (procs.stale_workers). Multi-process
runs keep torchrun; HARNESS_WARM_WORKERS=0 makes every run cold.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

WARM_ENV = "HARNESS_WARM_WORKERS"
PID_FILE = ".worker.pid"  # in the run folder: "pid starttime" of a warm child (procs.stale_workers)
READY_TIMEOUT_S = 120.0
MESSAGE = 1 << 20


def enabled() -> bool:
    return os.environ.get(WARM_ENV, "1").strip() not in ("0", "false", "no", "off")


class WarmProcess:
    """A run's child as _launch sees a process: its output, its pid, wait() and send_signal()."""

    def __init__(self, worker: "WarmWorker", pid: int, stdout: IO[str]):
        self.worker, self.pid, self.stdout = worker, pid, stdout
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.worker.exit_status(timeout=0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self.returncode = self.worker.exit_status(timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired("warm worker child", timeout or 0)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        try:
            os.kill(self.pid, sig)
        except OSError:
            pass


class WarmWorker:
    """The parent's end of one slot's warm process, started on first use; None-safe fallback: a
    warm process that cannot start leaves the slot cold (start() returns None)."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self._proc: subprocess.Popen | None = None
        self._sock: socket.socket | None = None
        self._broken = False
        self._lock = threading.Lock()

    def _ensure(self) -> bool:
        if self._broken:
            return False
        if self._proc is not None and self._proc.poll() is None:
            return True
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = subprocess.Popen([sys.executable, "-m", "harness.launch.warm", str(theirs.fileno())],
                                          env=os.environ | self.env, pass_fds=(theirs.fileno(),),
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
        finally:
            theirs.close()
        self._sock = ours
        ready, _, _ = select.select([ours], [], [], READY_TIMEOUT_S)
        reply = self._reply() if ready else None
        if not reply or not reply.get("ready"):
            self.close()
            self._broken = True
            return False
        return True

    def _reply(self) -> dict | None:
        try:
            data = self._sock.recv(MESSAGE)
        except OSError:
            return None
        return json.loads(data) if data else None

    def start(self, spec_path: Path, env: dict[str, str], keep_fd: int | None,
              cpus: tuple[int, ...] = ()) -> WarmProcess | None:
        """Fork the run's child; None when this slot has no warm process (the caller starts it cold)."""
        with self._lock:
            if not self._ensure():
                return None
            read, write = os.pipe()
            try:
                request = json.dumps({"spec": str(spec_path), "env": env, "cpus": list(cpus)}).encode()
                socket.send_fds(self._sock, [request], [write] + ([keep_fd] if keep_fd is not None else []))
            finally:
                os.close(write)
            reply = self._reply()
            if not reply or "pid" not in reply:
                os.close(read)
                return None
            return WarmProcess(self, int(reply["pid"]), os.fdopen(read, "r", errors="replace", buffering=1))

    def exit_status(self, timeout: float | None) -> int | None:
        """The running child's exit status once the warm process reports it (None: not yet)."""
        if self._sock is None:
            return -signal.SIGKILL
        ready, _, _ = select.select([self._sock], [], [], timeout)
        if not ready:
            return None
        reply = self._reply()
        if reply is None:  # the warm process died with its child
            self._broken = True
            return -signal.SIGKILL
        return int(reply["exit"])

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None


# ----------------------------------------------------------------------------- the warm process


def _child(request: dict, out_fd: int, lock_fd: int | None, sock: socket.socket) -> None:
    """In the forked child: become the run's worker (never returns)."""
    code = 1
    try:
        from harness.launch.procs import set_parent_death_signal
        from harness.training import worker

        set_parent_death_signal(signal.SIGKILL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sock.close()
        os.dup2(out_fd, 1)
        os.dup2(out_fd, 2)
        os.close(out_fd)
        os.environ.clear()
        os.environ.update(request["env"])
        if request["cpus"]:
            os.sched_setaffinity(0, request["cpus"])
        sys.argv = [worker.__file__, request["spec"]]
        code = worker.entry(request["spec"])
    except BaseException:  # noqa: BLE001 - whatever happens, the child reports through its exit status
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rfind(")") + 2:].split()[19]
    except (OSError, IndexError):
        return ""


def serve(fd: int) -> int:
    """The warm process: import, say ready, then fork one child per request until the parent goes."""
    sock = socket.socket(fileno=fd)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent and the running child
    try:
        import numpy  # noqa: F401
        import torch  # noqa: F401
        import torch._dynamo  # noqa: F401 - building an optimiser imports it: once here, not per run

        from harness.launch import procs  # noqa: F401 - loads libc's prctl before any fork
        from harness.model import native
        from harness.training import worker  # noqa: F401

        native.library()  # the CPU kernels: built (first time on this machine) and loaded once, not per run
    except BaseException as err:  # noqa: BLE001 - told to the parent, which then starts its runs cold
        sock.send(json.dumps({"ready": False, "error": repr(err)}).encode())
        return 1
    sock.send(b'{"ready": true}')
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, MESSAGE, 2)
        except OSError:
            return 0
        if not data:  # the parent has gone: so do we (and a running child, by PDEATHSIG)
            return 0
        request = json.loads(data)
        out_fd, lock_fd = fds[0], (fds[1] if len(fds) > 1 else None)
        pid = os.fork()
        if pid == 0:
            _child(request, out_fd, lock_fd, sock)
        os.close(out_fd)
        if lock_fd is not None:
            os.close(lock_fd)
        try:
            (Path(request["spec"]).parent / PID_FILE).write_text(f"{pid} {_start_time(pid)}\n")
        except OSError:
            pass
        sock.send(json.dumps({"pid": pid}).encode())
        exited = os.pidfd_open(pid)  # readable the moment the child exits
        try:
            while True:
                ready, _, _ = select.select([sock, exited], [], [])
                if exited in ready:
                    break
                if not sock.recv(MESSAGE, socket.MSG_PEEK):
                    os.kill(pid, signal.SIGKILL)  # the parent has gone mid-run
                    os.waitpid(pid, 0)
                    return 0
        finally:
            os.close(exited)
        _, status = os.waitpid(pid, 0)
        sock.send(json.dumps({"exit": os.waitstatus_to_exitcode(status)}).encode())


if __name__ == "__main__":
    # os._exit: the server has nothing to flush, and tearing down an interpreter that holds torch
    # took about 1 s that the parent waited for at the end of every command
    os._exit(serve(int(sys.argv[1])))
