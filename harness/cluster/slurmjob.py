"""One run as a Slurm (or local) job: the callable that submitit pickles and runs in the allocation.

The job runs harness.launch.torchrun.execute for its run: torchrun (or the single worker) with the job's
processes on each of its nodes, meeting at a c10d rendezvous on the first node; only the first
node records the result. Slurm signals every process of the job's step: USR2 shortly before the
time limit or on preemption (submitit then requeues the job with the same arguments), SIGTERM
when it ends or requeues the job. The workers stop too, and execute() judges that attempt by how
they stopped (interrupted, so not recorded), not by which handler ran first; the requeued job
resumes the run from its newest checkpoint. A run that really fails is retried (--retries)
inside its job, under the same RetryPolicy as a local sweep.
"""

from __future__ import annotations

import signal
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from harness.launch.torchrun import Processes
from harness.store.record import FAILED, FINAL, RetryPolicy, RunSpec
from harness.store.results import ResultsStore

_TERMINATING = threading.Event()
_terminating_since: list[float | None] = [None]  # when (time.monotonic()) the termination began
# Slurm signals the nodes of a job one after another: an attempt whose workers ended this little
# before the signal reached this node may have ended because another node was signalled first
SIGNAL_SKEW_S = 2.0


@dataclass(frozen=True)
class JobProcesses(Processes):
    """Processes that do not record an attempt that Slurm's termination of the job (preemption,
    a time limit, a cancel, a lost node) ended: one whose workers were still running when it began."""

    @property
    def records(self) -> bool:
        return self.node_rank == 0 and not _TERMINATING.is_set()

    def records_attempt(self, ended: float) -> bool:
        if self.nnodes == 1:  # one node: its workers' exit status says whether the signal stopped them
            return self.records
        since = _terminating_since[0]
        return self.node_rank == 0 and (since is None or ended < since - SIGNAL_SKEW_S)


def _terminating() -> None:
    if not _TERMINATING.is_set():
        _terminating_since[0] = time.monotonic()
    _TERMINATING.set()


def _not_terminating() -> None:
    _terminating_since[0] = None
    _TERMINATING.clear()


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001
    # Slurm sends SIGTERM to every process of a preempted or cancelled job: torchrun dies too,
    # and that attempt must not be recorded as a failure. submitit requeues on its own signal.
    _terminating()


def _before(handler):
    """A USR2 handler that marks the job as terminating, then runs submitit's (which requeues it)."""
    def on_usr2(signum, frame) -> None:
        _terminating()
        if callable(handler):
            handler(signum, frame)
    return on_usr2


class RunJob:
    """One run as a submitit job: resumable, requeued with the same arguments on preemption."""

    def __init__(self, spec: dict[str, Any], results: str, nproc: int, retries: int,
                 progress_log: Callable[[Path], Any] | None = None):
        self.spec, self.results, self.nproc = spec, results, nproc
        self.retries, self.progress_log = retries, progress_log  # e.g. TensorBoardLog: built from the results folder

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this on preemption/timeout: requeue the same run (it resumes from its checkpoint)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)

    def __call__(self) -> dict[str, Any]:
        import submitit

        # Slurm signals every process of the job's step: the workers stop too, and execute()
        # judges that attempt by how they stopped (interrupted, not failed), whichever handler runs first.
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGUSR2, _before(signal.getsignal(signal.SIGUSR2)))
        env = submitit.JobEnvironment()
        spec = RunSpec(**self.spec)
        store = ResultsStore(Path(self.results))
        endpoint = ""
        if env.num_nodes > 1:
            port = 20000 + zlib.crc32(str(env.job_id).encode()) % 20000
            endpoint = f"{env.hostnames[0]}:{port}"
        processes = JobProcesses(nproc=self.nproc, nnodes=env.num_nodes, node_rank=env.node, rdzv_endpoint=endpoint)
        if env.node:
            return self._follow(spec, store, processes)
        return self._lead(spec, store, processes)

    def _lead(self, spec: RunSpec, store: ResultsStore, processes: JobProcesses) -> dict[str, Any]:
        from harness.launch.torchrun import execute

        tb = self.progress_log(store.root) if self.progress_log else None
        policy = RetryPolicy(self.retries)
        while True:
            history = store.history(spec.sweep, spec.run_id)
            status = policy.settled(history.statuses)
            if status in FINAL:
                return {"run_id": spec.run_id, "status": status}
            if status == FAILED:
                raise RuntimeError(f"run {spec.run_id} failed {len(history.rows)} time(s): "
                                   f"{history.rows[-1]['reason']} (log: {store.run_dir(spec.run_id) / 'log.txt'})")
            result = execute(spec, store, processes,
                             on_progress=(lambda p: tb.progress(spec, p)) if tb else None,
                             should_run=lambda: policy.settled(store.history(spec.sweep, spec.run_id).statuses) is None)
            if result is None:  # another process (a duplicate job, a local sweep) runs it: wait for it
                time.sleep(15)
                continue
            if tb is not None:
                tb.finish(spec, result.row.columns() if result.row else None)
            if result.interrupted or _TERMINATING.is_set():
                # preempted, timed out or cancelled (the attempt was not recorded): Slurm ends or requeues
                # this job now; should it go on after all, the run resumes from its checkpoint
                _TERMINATING.wait(600)
                time.sleep(60)
                _not_terminating()

    def _follow(self, spec: RunSpec, store: ResultsStore, processes: JobProcesses) -> dict[str, Any]:
        """Nodes after the first run their part of each attempt (execute: their own lock, spec file
        and log, log.nodeK.txt) and leave the recording to node 0, whose record of each attempt
        they wait for before they join the next (await_record)."""
        from harness.launch.torchrun import await_record, execute

        policy = RetryPolicy(self.retries)
        while not _TERMINATING.is_set():
            if policy.settled(store.history(spec.sweep, spec.run_id).statuses) is not None:
                break
            result = execute(spec, store, processes)
            if result is None:  # another process of this node holds its part: let it
                time.sleep(5)
                continue
            if result.interrupted or result.row is None:
                break
            await_record(store, spec, result.row.attempt, stop=_TERMINATING.is_set)
        return {"run_id": spec.run_id, "node": processes.node_rank}
