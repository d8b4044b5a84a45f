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

import os
import signal
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from harness.launch.torchrun import Launcher
from harness.store.record import FAILED, FINAL, RetryPolicy, RunSpec
from harness.store.results import ResultsStore

_TERMINATING = threading.Event()


@dataclass(frozen=True)
class JobLauncher(Launcher):
    """A Launcher that does not record a run whose job Slurm is terminating (preemption)."""

    @property
    def records(self) -> bool:
        return self.node_rank == 0 and not _TERMINATING.is_set()


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001
    # Slurm sends SIGTERM to every process of a preempted or cancelled job: torchrun dies too,
    # and that attempt must not be recorded as a failure. submitit requeues on its own signal.
    _TERMINATING.set()


def _before(handler):
    """A USR2 handler that marks the job as terminating, then runs submitit's (which requeues it)."""
    def on_usr2(signum, frame) -> None:
        _TERMINATING.set()
        if callable(handler):
            handler(signum, frame)
    return on_usr2


class RunJob:
    """One run as a submitit job: resumable, requeued with the same arguments on preemption."""

    def __init__(self, spec: dict[str, Any], results: str, nproc: int, retries: int, tensorboard: bool = False):
        self.spec, self.results, self.nproc = spec, results, nproc
        self.retries, self.tensorboard = retries, tensorboard

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
        launcher = JobLauncher(nproc=self.nproc, nnodes=env.num_nodes, node_rank=env.node, rdzv_endpoint=endpoint)
        if env.node:
            return self._follow(spec, store, launcher)
        return self._lead(spec, store, launcher)

    def _lead(self, spec: RunSpec, store: ResultsStore, launcher: JobLauncher) -> dict[str, Any]:
        from harness.launch.torchrun import execute

        tb = None
        if self.tensorboard:
            from harness.launch.tensorboard import TensorBoardLog

            tb = TensorBoardLog(store.root)
        policy = RetryPolicy(self.retries)
        while True:
            history = store.history(spec.sweep, spec.run_id)
            status = policy.settled(history.statuses)
            if status in FINAL:
                return {"run_id": spec.run_id, "status": status}
            if status == FAILED:
                raise RuntimeError(f"run {spec.run_id} failed {len(history.rows)} time(s): "
                                   f"{history.rows[-1]['reason']} (log: {store.run_dir(spec.run_id) / 'log.txt'})")
            result = execute(spec, store, launcher,
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
                _TERMINATING.clear()

    def _follow(self, spec: RunSpec, store: ResultsStore, launcher: JobLauncher) -> dict[str, Any]:
        """Nodes after the first run torchrun for the same run and leave the recording to node 0."""
        run_dir = store.run_dir(spec.run_id)
        spec_path = run_dir / "spec.json"
        for _ in range(1 + self.retries):
            if any(st in FINAL for st in store.history(spec.sweep, spec.run_id).statuses) or (run_dir / "result.json").exists():
                break
            with (run_dir / f"log.node{launcher.node_rank}.txt").open("a") as log:
                subprocess.run(launcher.command(spec_path, spec.run_id), stdout=log, stderr=subprocess.STDOUT,
                               env=os.environ | launcher.env, check=False)
        return {"run_id": spec.run_id, "node": launcher.node_rank}
