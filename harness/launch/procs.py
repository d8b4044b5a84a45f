"""Process handling for runs: the run lock, finding and killing worker process trees, Ctrl-C.

torchrun starts its workers in their own sessions, so killing a sweep's process group can leave
them training; these helpers find them through Linux's /proc and kill whole trees. The run lock
is an flock whose descriptor torchrun inherits, so it stays held while torchrun lives. Ctrl-C is
latched: a sweep stops after the current run even where Python cannot raise the interrupt (while
torchrun is being forked).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import signal
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_ctrl_c = threading.Event()    # set by ctrl_c_latch's handler
_deferring = threading.Event()  # set inside deferred_ctrl_c
_pressed_deferred = threading.Event()  # a press that deferred_ctrl_c only remembered


def on_ctrl_c(signum, frame) -> None:
    """Python's own SIGINT handler, which also remembers the press: the entry point installs it
    before anything loads, so that whatever a Ctrl-C breaks on its way (an import it cut short,
    which a library then half-retries) still ends as an interrupt, not as that library's error."""
    _ctrl_c.set()
    if _deferring.is_set() and not _pressed_deferred.is_set():
        _pressed_deferred.set()
    else:  # also a second press inside deferred_ctrl_c: a hung import stays interruptible
        raise KeyboardInterrupt


@contextmanager
def deferred_ctrl_c(raise_after: bool = False) -> Iterator[None]:
    """Inside the block a Ctrl-C is only remembered (interrupted()), for code that cannot take an
    exception from the signal handler: Popen forking torchrun (one raised inside Python's at-fork
    hooks is printed as "Exception ignored" and lost), importing torch (one raised inside its
    pybind11 callbacks aborts the process); a second press raises at once. With raise_after, a press
    inside the block raises KeyboardInterrupt when it ends. One block at a time, so the window stays
    exact (not re-entrant)."""
    with _defer_lock:
        _pressed_deferred.clear()
        _deferring.set()
        try:
            yield
        finally:
            _deferring.clear()
        pressed = _pressed_deferred.is_set()
    if raise_after and pressed:
        raise KeyboardInterrupt


@contextmanager
def ctrl_c_latch() -> Iterator[threading.Event]:
    """Ctrl-C raises KeyboardInterrupt and is also remembered, so a sweep stops after the current
    run even where the exception cannot be raised. While torchrun is being forked the handler only
    remembers it: an exception raised inside Python's at-fork hooks would be printed as "Exception
    ignored" with a traceback and lost; _launch raises it as soon as the fork is done."""
    _ctrl_c.clear()
    before = signal.getsignal(signal.SIGINT)
    if (threading.current_thread() is not threading.main_thread()
            or before not in (signal.default_int_handler, on_ctrl_c)):
        yield _ctrl_c  # SIGINT ignored or handled by an embedding program: leave it alone
        return
    signal.signal(signal.SIGINT, on_ctrl_c)
    try:
        yield _ctrl_c
    finally:
        signal.signal(signal.SIGINT, before)


def stop_runs() -> None:
    """Make every run that this process is running stop, as Ctrl-C does (launch._launch polls it)."""
    _ctrl_c.set()


def interrupted() -> bool:
    """Whether Ctrl-C was pressed under ctrl_c_latch (also while torchrun was being forked)."""
    return _ctrl_c.is_set()


def spawn(cmd: list[str], env: dict[str, str], keep_fd: int | None, cpus: tuple[int, ...] = (),
          cwd: str | None = None) -> subprocess.Popen:
    """Start `cmd` with its output on a pipe, as a child that dies with this process, holding
    `keep_fd` open, pinned to `cpus` (if any; its children inherit them); a Ctrl-C during the
    fork is only latched (see ctrl_c_latch)."""
    def in_child() -> None:  # after fork, before exec: nothing that takes a lock another thread may hold
        set_parent_death_signal(signal.SIGTERM)  # no orphan keeps training
        if cpus:
            os.sched_setaffinity(0, cpus)

    with deferred_ctrl_c():
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                errors="replace", env=env, preexec_fn=in_child, bufsize=1, cwd=cwd or None,
                                pass_fds=(keep_fd,) if keep_fd is not None else ())


def _libc_prctl():
    """libc's prctl, loaded once here: loading a library in a forked child could deadlock."""
    try:
        return ctypes.CDLL("libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_prctl = _libc_prctl()


def set_parent_death_signal(sig: int) -> None:
    """This process gets `sig` when the thread that forked it ends (Linux PR_SET_PDEATHSIG)."""
    if _prctl is not None:
        _prctl(1, sig)
_defer_lock = threading.Lock()


class RunLock:
    """An exclusive flock on runs/<id>/.lock whose descriptor the run's processes inherit (pass_fds),
    so the lock outlives this process for as long as they do. Compatible with filelock.FileLock
    (also flock)."""

    def __init__(self, path: Path):
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                return False
            raise
        self.fd = fd
        return True

    def release(self) -> None:
        # close, never LOCK_UN: a worker that still holds the inherited descriptor keeps the lock
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

def is_running(run_dir: Path) -> bool:
    """Whether another process holds the run folder's lock (a sweep, or a Slurm/local job runs it)."""
    lock_file = Path(run_dir) / ".lock"
    if not lock_file.exists():
        return False
    lock = RunLock(lock_file)
    try:
        if not lock.acquire():
            return True
    except OSError:
        return False
    lock.release()
    return False


def _proc_table() -> dict[int, int]:
    """pid -> parent pid of every process (Linux /proc)."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
                table[int(entry.name)] = int(stat[stat.rfind(")") + 2:].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    return table


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:][:1] not in ("Z", "X")


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    children: dict[int, list[int]] = {}
    for child, parent in _proc_table().items():
        children.setdefault(parent, []).append(child)
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def sigkill(pids: list[int]) -> None:
    """SIGKILL each process; one that is already gone is not an error."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def kill_tree(pid: int) -> None:
    """SIGKILL a process and every descendant (torchrun's workers live in their own sessions)."""
    for _ in range(3):  # again, for children forked while we were looking
        sigkill(process_tree(pid))
        time.sleep(0.05)


SPEC_VARIABLE = "HARNESS_SPEC"  # in an external trainer's environment: its run's spec.json (stale_workers)


def stale_workers(spec_path: Path) -> list[int]:
    """Processes (torchrun or its workers, or an external trainer's) still training this run, left
    by a killed attempt."""
    target = str(spec_path.resolve())
    mark = f"{SPEC_VARIABLE}={target}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if mark in Path(entry.path, "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
                continue
        except OSError:
            pass
        try:
            args = Path(entry.path, "cmdline").read_bytes().decode(errors="replace").split("\0")
            if "harness.training.worker" not in args or not any(a.endswith("spec.json") for a in args):
                continue
            cwd = os.readlink(Path(entry.path, "cwd"))
        except OSError:
            continue
        if any(a.endswith("spec.json") and os.path.normpath(os.path.join(cwd, a)) == target for a in args):
            found.append(int(entry.name))
    return found


def stale_warm_worker(run_dir: Path) -> list[int]:
    """A warm worker's child (harness.launch.warm) still running this run: the pid its pid file
    names, if that process is alive and started when the file says (not a pid reused since)."""
    try:
        pid, started = (run_dir / ".worker.pid").read_text().split()
        stat = Path(f"/proc/{int(pid)}/stat").read_text()
    except (OSError, ValueError):
        return []
    return [int(pid)] if stat[stat.rfind(")") + 2:].split()[19] == started and _alive(int(pid)) \
        and int(pid) != os.getpid() else []


def kill_stale_workers(spec_path: Path, timeout: float = 30.0) -> list[int]:
    """Kill the leftovers of an earlier attempt and wait until they are gone."""
    pids = stale_workers(spec_path) + stale_warm_worker(spec_path.parent)
    sigkill(pids)
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return pids
