"""Run one planned run under torchrun and record its outcome in the results store.

The parent never trains: it writes spec.json into the run's folder, starts torchrun with an
argument list (no shell), streams the workers' output into log.txt, forwards PROGRESS lines to a
callback, and appends the result row. A run folder is locked while a process runs it, so two
sweeps on one results folder never run the same run at once; a run whose workers finished but
whose row was never written (a crash in between) is recorded without training again.

Reliability, in the order execute() works:
  * the run folder's lock (flock on runs/<id>/.lock) is also handed to torchrun, so it stays held
    while torchrun lives even if this process is killed;
  * workers of an earlier, killed attempt (torchrun starts them in their own sessions, so killing
    a sweep's process group leaves them running) are found through /proc and killed first;
  * journal entries (runs/<id>/attempts/) that never reached the tables are recorded;
  * a damaged or unsafe checkpoint is quarantined before any worker starts (checkpoint.latest);
  * a stall watchdog kills the whole torchrun process tree when the workers print nothing for
    HARNESS_STALL_TIMEOUT seconds (default 1800), and the attempt is recorded as failed with
    the reason "no progress for N s"; a dead worker makes torchrun stop the group by itself, and a
    hung collective ends after HARNESS_COLLECTIVE_TIMEOUT (read by harness.training.worker).

One module, on purpose: the process shape, the launch, the reading of a failed attempt's logs
(one node's or several) and the recording are one run's lifecycle, and each step reads what the
one before wrote into the run folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from harness.core.errors import UserError
from harness.core.files import WriteError, atomic_write_bytes, quarantine, write_error
from harness.core.placement import Slot, auto_jobs, slots
from harness.core.scheme import TRAINED_BY, trainer_table
from harness.launch.procs import (SPEC_VARIABLE, RunLock, deferred_ctrl_c, interrupted, kill_stale_workers, kill_tree,
                                  spawn)
from harness.store import contract
from harness.launch.warm import WarmWorker
from harness.store.record import (ATTEMPT_ENDED, CONFIG, DATA_CHANGED, ENVIRONMENT, FAILED, NODE_HEADER, UNRUNNABLE,
                                  RunResult, RunRow, RunSpec, attempt_header, attempt_part, find_ranks, find_stopped,
                                  parse_progress)
from harness.store.results import ResultsStore
from harness.core.versions import git_commit, versions

DEFAULT_STALL_TIMEOUT = 1800.0
WORKER = "harness.training.worker"  # the module every worker process runs
WORKER_ENV = {"PYTHONUNBUFFERED": "1", "PYTHONSAFEPATH": "1"}

@dataclass(frozen=True)
class Processes:
    """How to start a run's processes: per node, the multi-node rendezvous if any, and the slot
    (GPUs or CPU cores) it may use when several runs share the machine."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)
    slot: Slot = Slot()
    gpus: bool | None = None  # whether the runs use GPUs (None: they run here, so ask torch)
    warm: WarmWorker | None = field(default=None, compare=False)  # this slot's warm worker (single-process runs)

    def uses_gpus(self) -> bool:
        return self.gpus if self.gpus is not None else gpu_count() > 0

    @property
    def env(self) -> dict[str, str]:
        """The run's environment additions: unbuffered output, no working directory on sys.path
        (PYTHONSAFEPATH: a user's model.py or harness.py beside them never shadows harness in the
        workers), its slot's devices, and for a single process started without torchrun the
        variables torchrun would have set."""
        ranks = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1"} \
            if self.world_size == 1 else {}
        return WORKER_ENV | ranks | self.extra_env | self.slot.env()

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    def node_file(self, name: str) -> str:
        """This node's own file in the shared run folder: the first node's spec.json, log.txt and
        .lock, node K's nodeK.spec.json, log.nodeK.txt and .lock.nodeK. Its workers are told its own
        spec file, so a leftover worker is looked for (and killed) on its own node only."""
        if self.node_rank == 0:
            return name
        return {"spec.json": f"node{self.node_rank}.spec.json", "log.txt": f"log.node{self.node_rank}.txt",
                ".lock": f".lock.node{self.node_rank}"}[name]

    @property
    def where(self) -> str:
        """' on node K (host)' for a multi-node run, else nothing (how its log lines say where they ran)."""
        return f" on node {self.node_rank} ({socket.gethostname()})" if self.nnodes > 1 else ""

    @property
    def records(self) -> bool:
        """Only the first node's parent writes results (every node runs the same plan)."""
        return self.node_rank == 0

    def records_attempt(self, ended: float) -> bool:
        """Whether this process records an attempt whose workers ended at `ended` (time.monotonic())."""
        return self.records

    @classmethod
    def checked(cls, nproc: int | None = None, nnodes: int = 1, node_rank: int = 0,
                rdzv_endpoint: str = "") -> "Processes":
        """From command-line values (nproc None: one per GPU, else 1), with one clear error for a bad one."""
        nproc = default_nproc() if nproc is None else nproc
        for flag, value in (("--nproc", nproc), ("--nnodes", nnodes)):
            if value < 1:
                raise UserError(f"{flag} must be >= 1, got {value}")
        if not 0 <= node_rank < nnodes:
            raise UserError(f"--node-rank must be in [0, {nnodes - 1}], got {node_rank}")
        if nnodes > 1 and not rdzv_endpoint:
            raise UserError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the first node's address)")
        return cls(nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)

    def jobs(self, asked: int | None) -> int:
        """Runs at once: as asked, or (None) as many as fit without sharing (placement.auto_jobs)."""
        if self.nnodes > 1:
            if asked not in (None, 1):
                raise UserError("--jobs above 1 is for runs on one node: a multi-node run takes every node's GPUs")
            return 1
        return asked if asked is not None else auto_jobs(self.nproc, gpu_count())

    def for_jobs(self, jobs: int) -> tuple[list["Processes"], bool]:
        """Processes for each concurrent run, each with its own slot (GPUs or CPU cores), and whether
        the slots had to share devices (more jobs than the machine holds)."""
        found, shared = slots(jobs, self.nproc, gpu_count())
        return [dataclasses.replace(self, slot=s) for s in found], shared

    def command(self, spec_path: Path, run_id: str, program: list[str] | None = None) -> list[str]:
        """torchrun for DDP; a single process is the worker itself (no torchrun process to start,
        no third import of torch). `program`: an external trainer's argument list in the worker's place."""
        if self.world_size == 1:
            return program or [sys.executable, "-m", WORKER, str(spec_path)]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(self.nproc)]
        if self.nnodes == 1:
            cmd.append("--standalone")
        else:
            cmd += ["--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank),
                    "--rdzv-backend", "c10d", "--rdzv-endpoint", self.rdzv_endpoint, "--rdzv-id", run_id]
        return cmd + (["--no-python", *program] if program else ["-m", WORKER, str(spec_path)])


def gpu_count() -> int:
    """CUDA devices visible here (imports torch: call it only when the value is needed). A Ctrl-C
    during the import ends it as an interrupt once the import is done (deferred_ctrl_c)."""
    with deferred_ctrl_c(raise_after=True):
        import torch
    return torch.cuda.device_count()


def default_nproc() -> int:
    """One process per GPU, else 1."""
    return gpu_count() or 1


def stall_timeout() -> float:
    raw = os.environ.get("HARNESS_STALL_TIMEOUT", "")
    if not raw.strip():
        return DEFAULT_STALL_TIMEOUT
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UserError(f"HARNESS_STALL_TIMEOUT={raw!r}: expected a number of seconds > 0")
    return value


def _attempt_text(log: Path, attempt: int | None = None) -> str:
    """The last attempt's part of a run's log, or that attempt's (record.attempt_part)."""
    try:
        return attempt_part(log.read_text(errors="replace"), attempt)
    except OSError:
        return ""


def _failure_reason(log: Path, returncode: int) -> str:
    """Why an attempt failed, from the last attempt's part of its log (_attempt_failure)."""
    rank, detail = _attempt_failure(_attempt_text(log))
    detail = f"rank {rank}: {detail}" if rank is not None else detail
    return f"workers exited with code {returncode}: {detail[:300]}"


def _attempt_failure(text: str) -> tuple[str | None, str]:
    """(rank, the most telling line) of an attempt's log: the exception (or signal) of the rank that
    torchrun names as the root cause, else the workers' last exception, else their last signal."""
    lines = text.splitlines()
    exceptions: list[tuple[str | None, str]] = []
    for ln in lines:  # torchrun prefixes each worker's lines with [rankN]: (or [defaultN]:)
        m = RANK_PREFIX.match(ln)
        body = m.group(2) if m else ln
        if EXCEPTION_LINE.match(body) and "elastic" not in body:
            exceptions.append((m.group(1) if m else None, body.strip()))
    root_rank = root_signal = None
    if "Root Cause (first observed failure):" in lines:
        for ln in lines[lines.index("Root Cause (first observed failure):") + 1:][:12]:
            m = re.match(r"\s*rank\s*:\s*(\d+)", ln)
            if m and root_rank is None:
                root_rank = m.group(1)
            if SIGNAL.search(ln) and root_signal is None:
                root_signal = SIGNAL.search(ln).group(0)
    signals = [m.group(0) for ln in lines for m in [SIGNAL.search(ln)] if m]
    own = [body for rank, body in exceptions if rank == root_rank and rank is not None]
    plain = [body for rank, body in exceptions if rank is None]
    if own:
        return root_rank, own[-1]
    if root_signal:
        return root_rank, root_signal
    if plain or exceptions:
        return next((e for e in reversed(exceptions) if e[0] is None), exceptions[-1])
    return None, signals[-1] if signals else "no error message in the log"


# ----------------------------------------------------------------------------- several nodes

# what a rank says when another rank, not its own work, failed: the connection to it closed or
# timed out, or the rendezvous (torchrun's store on the first node) went away
LOST_PEER = re.compile(r"Connection (?:closed|reset) by peer|Broken pipe|Timed out waiting|timed out|Connection refused|"
                       r"DistNetworkError|DistStoreError|Rendezvous\w*Error|recvBytes|sendBytes|Watchdog caught", re.I)
DEFAULT_NODE_WORD_S = 15.0


def node_word_seconds() -> float:
    """How long the first node waits for the others to say how a failed attempt ended on them
    (HARNESS_NODE_WORD_S, default 15 s); a node that says nothing by then is named as such."""
    raw = os.environ.get("HARNESS_NODE_WORD_S", "").strip()
    try:
        value = float(raw) if raw else DEFAULT_NODE_WORD_S
    except ValueError:
        value = float("nan")
    if not 0 <= value < 3600:
        raise UserError(f"HARNESS_NODE_WORD_S={raw!r}: expected seconds between 0 and 3600")
    return value


RECORD_WAIT_S = 900.0


def await_record(store: ResultsStore, spec: RunSpec, attempt: int, stop: Callable[[], bool] = lambda: False,
                 timeout: float = RECORD_WAIT_S) -> None:
    """On a node after the first, once its part of an attempt ended: wait until node 0 has recorded
    that attempt in the shared results folder, so that a retry (or the next run) meets node 0 at the
    same rendezvous. A folder that node 0 never wrote into is not shared: one clear error."""
    run_dir = store.run_dir(spec.run_id)
    if not (run_dir / "spec.json").exists():
        raise UserError(f"{run_dir} holds no spec.json of node 0: the results folder is not shared between the "
                        "nodes; give every node the same --results folder on a shared filesystem")
    deadline = time.monotonic() + timeout
    # the run's table rows, which the retry policy reads (its journal entry comes a moment before them)
    while len(store.history(spec.sweep, spec.run_id).rows) < attempt and not stop():
        if time.monotonic() > deadline:
            raise UserError(f"node 0 did not record attempt {attempt} of run {spec.run_id} within {timeout:g} s "
                            "(is it still running?); this node stops")
        time.sleep(0.5)


def node_sections(run_dir: Path, processes: Processes, attempt: int, wait_s: float) -> list[tuple[int, str]]:
    """Every node's part of this attempt's log in the shared run folder, (node, text), once each
    node after the first has said how its part ended or `wait_s` (HARNESS_NODE_WORD_S) has passed."""
    deadline = time.monotonic() + wait_s
    out = []
    for k in range(processes.nnodes):
        log = run_dir / dataclasses.replace(processes, node_rank=k).node_file("log.txt")
        section = _attempt_text(log, attempt)
        while k and ATTEMPT_ENDED not in section and time.monotonic() < deadline:
            time.sleep(0.2)
            section = _attempt_text(log, attempt)
        out.append((k, section))
    return out


def _exit_code(section: str) -> int | None:
    m = re.search(rf"^{ATTEMPT_ENDED} \d+ .*: exit code (-?\d+)$", section, re.M)
    return int(m.group(1)) if m else None


def nodes_interrupted(sections: list[tuple[int, str]]) -> str | None:
    """The signal that stopped any node's workers from outside (Ctrl-C there, Slurm's termination
    reaching that node first): then the whole attempt was interrupted, not failed."""
    for _, section in sections:
        code = _exit_code(section)
        sig = interrupt_signal(code, section) if code is not None else None
        if sig is not None:
            return sig
    return None


def nodes_failure_reason(sections: list[tuple[int, str]], node_word_s: float, returncode: int) -> str:
    """Why a multi-node attempt failed, from every node's part of the log: first the ranks that
    failed on their own (killed, an exception), then the nodes that gave no word (lost, or
    hanging), then the ranks that failed only because they lost a peer. Each named with its node."""
    own, silent, lost_peer = [], [], []
    for k, section in sections:
        header = NODE_HEADER.search(section.partition("\n")[0])
        node = f"node {k} ({header.group(2)})" if header else f"node {k}"
        ranks = find_ranks(section)
        of_node = f"rank{'s' if len(ranks) > 1 else ''} {','.join(map(str, ranks))} on {node}" if ranks else node
        code = _exit_code(section)
        if k and code is None:
            silent.append(f"{of_node} gave no word within {node_word_s:g} s (lost, or hanging)")
            continue
        if code == 0:
            continue
        rank, detail = _attempt_failure(section)
        word = f"{f'rank {rank} on {node}' if rank is not None else of_node}: {detail[:200]}"
        (lost_peer if LOST_PEER.search(detail) else own).append(word)
    return f"workers exited with code {returncode}: {'; '.join(own + silent + lost_peer)}"[:800]


EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b(:|$)")
RANK_PREFIX = re.compile(r"^\[(?:rank|default)(\d+)\]:\s?(.*)$")
SIGNAL = re.compile(r"Signal \d+ \(\w+\)")
# Signals that stop a run from outside (Ctrl-C, Slurm's preemption and time limit, a closed
# terminal): the attempt is interrupted, not failed, and resumes from its checkpoint.
INTERRUPTS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR2)
TORCHRUN_SIGNALLED = re.compile(r"Received (?:Signals\.)?(SIG[A-Z0-9]+) death signal")
# a worker's traceback ending in KeyboardInterrupt: Ctrl-C reached it (also while it was still importing torch)
KEYBOARD_INTERRUPT = re.compile(r"^(?:\[(?:rank|default)\d+\]:\s?)?KeyboardInterrupt\s*$", re.M)


def interrupt_signal(returncode: int, attempt_log: str) -> str | None:
    """The signal that stopped the workers from outside, from their exit status (a process killed
    by it, or exiting 128+N as a shell reports it), torchrun's own word that it got one, or a
    worker's traceback ending in KeyboardInterrupt; None for a failure of the run itself. The
    attempt is judged by what happened to its processes, so it does not depend on which of two
    signal handlers (this process's, the worker's) ran first."""
    if returncode == 0:
        return None
    for sig in INTERRUPTS:
        if returncode in (-sig, 128 + sig):
            return sig.name
    if KEYBOARD_INTERRUPT.search(attempt_log):
        return signal.SIGINT.name
    m = TORCHRUN_SIGNALLED.search(attempt_log)
    if m and m.group(1) in {s.name for s in INTERRUPTS}:
        return m.group(1)
    return None


# ----------------------------------------------------------------------------- running a run


@dataclass
class Outcome:
    row: RunRow | None  # None: nothing recorded (another process finished it, or interrupted)
    log: Path
    interrupted: str | None = None  # the signal that stopped the workers from outside (nothing recorded)


def _notice(message: str, log: Path | None = None) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)
    if log is not None:
        try:
            with log.open("a", encoding="utf-8") as f:
                f.write(f"warning: {message}\n")
        except OSError:
            pass


def execute(spec: RunSpec, store: ResultsStore, processes: Processes,
            on_progress: Callable[[dict[str, Any]], None] | None = None,
            should_run: Callable[[], bool] | None = None) -> Outcome | None:
    """Run (or resume) one run and record it; None when another process holds this run.

    `should_run` is asked again once the run's lock is held, so a run that another process
    finished in the meantime is not run (or recorded) twice."""
    run_dir = store.run_dir(spec.run_id)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = RunLock(run_dir / processes.node_file(".lock"))
        held = lock.acquire()
    except WriteError:
        raise
    except OSError as err:
        raise write_error(run_dir, err, "nothing was run") from err
    if not held:
        return None
    try:
        spec_path = run_dir / processes.node_file("spec.json")
        killed = kill_stale_workers(spec_path)
        if killed:
            _notice(f"killed {len(killed)} leftover worker process(es) of an earlier attempt of run "
                    f"{spec.run_id}{processes.where} (pids {', '.join(map(str, killed))})",
                    run_dir / processes.node_file("log.txt"))
        if processes.records:
            store.replay(spec.run_id)
        if should_run is not None and not should_run():
            return Outcome(None, run_dir / processes.node_file("log.txt"))
        return _execute_locked(spec, store, processes, run_dir, on_progress, lock)
    finally:
        lock.release()


def _execute_locked(spec: RunSpec, store: ResultsStore, processes: Processes, run_dir: Path, on_progress,
                    lock: RunLock) -> Outcome:
    """One attempt, under the run's lock: start it, read how it ended, record it. One function on
    purpose (about 70 lines): each step reads what the step before wrote (the log, the result, the
    other nodes' endings), and a split would pass all of it between the pieces."""
    spec_path, log = run_dir / processes.node_file("spec.json"), run_dir / processes.node_file("log.txt")
    result_path = run_dir / "result.json"
    attempt = store.attempts(spec.run_id) + 1
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    stalled, broken = None, None
    if not result_path.exists() and trainer_table(spec.config) is not None:
        returncode, stalled, broken = _run_trainer(spec, processes, run_dir, spec_path, log, attempt, on_progress, lock)
    elif not result_path.exists():
        atomic_write_bytes(spec_path, spec.to_json().encode())
        if processes.records:  # node 0 only: nodes sharing a run folder must not move it under each other
            from harness.training import checkpoint  # torch: here, so that the CLI checks its options without it

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                checkpoint.latest(run_dir, quarantine_bad=True)
            for w in caught:
                _notice(str(w.message), log)
        returncode, stalled = _launch(processes.command(spec_path, spec.run_id), log, attempt, processes.env,
                                      on_progress, lock, stall_timeout(), processes.slot.cpus,
                                      processes.warm if processes.world_size == 1 else None, spec_path, processes.where)
    else:
        returncode = 0
    ended = time.monotonic()
    if result_path.exists():  # written by this attempt's workers (or an earlier one that was never recorded)
        try:
            result = RunResult.load(result_path)
            if not result.final:
                raise ValueError("not a finished run's result")
        except (OSError, ValueError, TypeError) as err:  # a damaged result: set it aside and train again next time
            moved = quarantine(result_path, run_dir)
            _notice(f"{result_path} is unreadable ({err}); moved it to {moved}", log)
            result = _failed(f"result.json was unreadable ({err}); moved to {moved}")
    elif stalled is not None:
        result = _failed(stalled)
    elif broken is not None:  # the same script writes the same broken result again: not retried
        result = _failed(str(broken), UNRUNNABLE if broken.final else FAILED)
    else:
        text = _attempt_text(log)
        word_s = node_word_seconds() if processes.node_rank == 0 and processes.nnodes > 1 else None
        sections = node_sections(run_dir, processes, attempt, word_s) if word_s is not None else []
        stopped_by = interrupt_signal(returncode, text) or nodes_interrupted(sections)
        if stopped_by is not None:
            _notice(f"run {spec.run_id} was interrupted by {stopped_by}; it resumes from its checkpoint "
                    "when run again (not counted as a failed attempt)", log)
            return Outcome(None, log, interrupted=stopped_by)
        why = find_stopped(text)
        if why is not None and why[0] == ENVIRONMENT:  # the machine's failure: nothing is counted
            raise WriteError(f"run {spec.run_id} stopped: {why[1]}; nothing was recorded, and the run resumes from "
                             "its last checkpoint when the same command runs again (once there is space)")
        if why is not None and why[0] == DATA_CHANGED:  # another experiment than the one planned: nothing counts
            raise UserError(f"run {spec.run_id} stopped: {why[1]}; nothing was recorded")
        if why is not None and why[0] == CONFIG:
            result = _failed(why[1], UNRUNNABLE)
        elif interrupted():  # Ctrl-C here too: this process's own stop, not the run's failure
            raise KeyboardInterrupt
        elif sections:
            result = _failed(nodes_failure_reason(sections, word_s, returncode))
        else:
            result = _failed(_failure_reason(log, returncode))
    row = RunRow.of(spec, attempt, result, git_commit=git_commit(), started_at=started, run_dir=str(run_dir))
    try:
        if processes.records_attempt(ended):
            store.append(row)
    except WriteError as err:
        kept = store.journal_path(spec.run_id, attempt)
        where = kept if kept.exists() else result_path if result_path.exists() else None
        if where is None:
            raise
        raise WriteError(f"{err}; the attempt is kept in {where}: run the same command again once the disk has "
                         "space, and it is recorded without training again") from err
    return Outcome(row, log)


def _run_trainer(spec: RunSpec, processes: Processes, run_dir: Path, spec_path: Path, log: Path, attempt: int,
                 on_progress, lock: RunLock) -> tuple[int, str | None, contract.BrokenResult | None]:
    """One attempt of an external trainer's run (harness.store.contract): its files checked against
    the plan, its command started in its folder with the contract's variables, and its result
    checked and written as result.json. (exit code, stall reason, why its result breaks the contract)."""
    from harness.planning.trainer import changed_files

    changed = changed_files(spec)
    if changed:
        raise UserError(f"{', '.join(changed)} in {spec.workdir} changed since sweep {spec.sweep!r} planned run "
                        f"{spec.run_id}: its runs would not be one experiment; restore the file, or start a new "
                        "sweep (--name) for the changed trainer")
    answer = run_dir / contract.RESULT_FILE
    resume = log.exists()  # an earlier attempt started here: the trainer may continue its own checkpoint
    answer.unlink(missing_ok=True)  # an earlier attempt's answer never speaks for this one
    atomic_write_bytes(spec_path, spec.to_json().encode())
    values = contract.passed(spec, run_dir, resume)
    trainer = spec.config[TRAINED_BY]
    program = contract.command(shlex.split(trainer["command"]), values, trainer["settings"])
    env = {k: v for k, v in processes.env.items() if k != "PYTHONSAFEPATH"}  # its script's folder is its sys.path
    env |= contract.environment(values) | {SPEC_VARIABLE: str(spec_path.resolve())}
    began = time.monotonic()
    returncode, stalled = _launch(processes.command(spec_path, spec.run_id, program), log, attempt, env, on_progress,
                                  lock, stall_timeout(), processes.slot.cpus, None, spec_path, processes.where,
                                  cwd=spec.workdir)
    if returncode != 0 or stalled is not None or not processes.records:
        return returncode, stalled, None
    try:
        data = contract.read_result(answer, spec.tokens)
    except contract.BrokenResult as err:
        _notice(f"run {spec.run_id}: {err}", log)
        return returncode, None, err
    result = contract.run_result(data, spec, time.monotonic() - began, versions())
    atomic_write_bytes(run_dir / "result.json", json.dumps(result.to_dict(), default=str).encode())
    return returncode, None, None


def _failed(reason: str, status: str = FAILED) -> RunResult:
    """The result of an attempt that trained nothing to the end: FAILED, or UNRUNNABLE (never retried)."""
    return RunResult(status=status, reason=reason, versions=versions(),
                     finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"))


def _launch(cmd: list[str], log: Path, attempt: int, extra_env: dict[str, str], on_progress,
            lock: RunLock, stall_s: float, cpus: tuple[int, ...] = (), warm: WarmWorker | None = None,
            spec_path: Path | None = None, where: str = "", cwd: str | None = None) -> tuple[int, str | None]:
    """(the workers' exit code, the stall reason if the watchdog killed them). With a warm worker
    the run is its forked child (harness.launch.warm), else `cmd` started cold. A node of a
    multi-node run (`where`) also writes how its attempt ended, which the first node reads.
    Twelve parameters and about 80 lines on purpose: one supervised process (start, watchdog,
    Ctrl-C, the ending) whose pieces share the process handle, the log and the lock."""
    env = os.environ | extra_env
    try:
        out = log.open("a", encoding="utf-8", buffering=1)  # line by line: other nodes and a crash read it
    except OSError as err:
        raise write_error(log, err, "the run was not started") from err
    with out:
        proc = warm.start(spec_path, env, lock.fd, cpus) if warm is not None and spec_path is not None else None
        how = "a warm worker's fork of " if proc is not None else ""
        try:
            out.write(attempt_header(attempt, time.strftime('%Y-%m-%d %H:%M:%S'), where, how + " ".join(cmd)))
            out.flush()
        except OSError as err:
            if proc is not None:
                kill_tree(proc.pid)
            raise write_error(log, err, "the run was not started") from err
        if proc is None:
            proc = spawn(cmd, env, lock.fd, cpus, cwd)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            try:
                for line in proc.stdout:
                    lines.put(line)
            finally:
                lines.put(None)

        reader = threading.Thread(target=pump, name="torchrun-output", daemon=True)
        reader.start()
        stalled = None
        try:
            last = time.monotonic()
            while True:
                if interrupted():
                    raise KeyboardInterrupt  # pressed while torchrun was being forked
                try:
                    line = lines.get(timeout=min(1.0, stall_s))
                except queue.Empty:
                    if time.monotonic() - last >= stall_s:
                        stalled = (f"no progress for {stall_s:g} s: the workers printed nothing, so the stall "
                                   f"watchdog killed them (HARNESS_STALL_TIMEOUT)")
                        out.write(f"=== {stalled}\n")
                        kill_tree(proc.pid)
                        break
                    continue
                if line is None:
                    break
                last = time.monotonic()
                try:
                    out.write(line)
                except OSError:
                    pass  # a full disk must not stop the run; the log is a convenience
                progress = parse_progress(line)
                if progress is not None and on_progress:
                    on_progress(progress)
            returncode = proc.wait()
            reader.join(timeout=10)
            if where:
                try:
                    out.write(f"{ATTEMPT_ENDED} {attempt}{where}: exit code {returncode}\n")
                    out.flush()
                except OSError:
                    pass
            return returncode, stalled
        except BaseException:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            kill_tree(proc.pid)
            proc.wait()
            raise
