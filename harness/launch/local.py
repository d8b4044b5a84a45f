"""Running a sweep's plan on this machine: skip what is done, resume, retry, stop cleanly on Ctrl-C.

Running a plan (see harness.planning.plan) skips what the store already holds for this sweep, resumes
interrupted runs from their checkpoints, retries a failed run as harness.store.record.RetryPolicy says,
and leaves runs that another sweep process holds to that process (waiting for them at the end).
Each question to the store ("has this run settled?") is one cached, verified read.
"""

from __future__ import annotations

import dataclasses
import queue
import shlex
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape

from harness.planning.adaptive import rounds
from harness.launch import warm
from harness.launch.torchrun import WORKER_ENV, Processes, Outcome, await_record, execute
from harness.core.scheme import trainer_table
from harness.planning.plan import Plan
from harness.store.planfile import save_plan
from harness.launch.procs import ctrl_c_latch, interrupted, stop_runs
from harness.launch.progress import RunProgress
from harness.store.record import COMPLETED, FAILED, FINAL, RetryPolicy, RunSpec
from harness.store.results import ResultsStore


@dataclass
class SweepOutcome:
    done: dict[str, str] = field(default_factory=dict)  # run_id -> final status

    def record(self, spec: RunSpec, status: str) -> None:
        self.done[spec.run_id] = status

    @property
    def all_completed(self) -> bool:
        return all(status == COMPLETED for status in self.done.values())


def settled(store: ResultsStore, spec: RunSpec, policy: RetryPolicy) -> str | None:
    """The run's settled status in its sweep, or None when it still has to run."""
    return policy.settled(store.history(spec.sweep, spec.run_id).statuses)


def continue_command() -> str:
    return " ".join(shlex.quote(a) for a in ["harness", *sys.argv[1:]])


def execute_plan(plan: Plan, processes: Processes, console: Console, retries: int = 1, jobs: int = 1,
                 on_progress: Callable[[RunSpec, dict[str, Any]], None] | None = None,
                 on_recorded: Callable[[RunSpec], None] | None = None) -> SweepOutcome:
    """Run every run of the plan that the store does not hold yet, up to `jobs` at once (each in
    its own slot: GPUs or CPU cores), started in seed-major order; Ctrl-C stops every running run.
    An adaptive plan runs in rounds until every arm is decided (harness.planning.adaptive).

    on_progress(spec, progress_dict) also gets every PROGRESS line (e.g. --log tensorboard), and
    on_recorded(spec) hears of every attempt this process recorded (the other trackers)."""
    per_slot, shared = processes.for_jobs(jobs)
    own_worker = not any(trainer_table(s.config) is not None for s in plan.specs)  # a trainer starts its own process
    if warm.enabled() and processes.world_size == 1 and own_worker:  # a warm worker per slot: torch imported once per slot
        per_slot = [dataclasses.replace(one, warm=warm.WarmWorker(WORKER_ENV | one.slot.env())) for one in per_slot]
    store = ResultsStore(plan.results)
    store.ensure_writable()
    save_plan(plan)
    if shared:
        console.print(f"note: {jobs} runs at once share this machine's "
                      f"{'GPUs' if per_slot[0].slot.gpus else 'CPU cores'} (more jobs than it holds)")
    policy = RetryPolicy(retries)
    outcome = SweepOutcome()
    try:
        with ctrl_c_latch():
            for specs in rounds(plan, console):
                runner = _Runner(plan, store, specs, console, policy, per_slot, on_progress, on_recorded)
                try:
                    runner.run()
                finally:
                    runner.stop()
                    outcome.done.update(runner.outcome.done)
    except KeyboardInterrupt:
        done = sum(policy.settled(store.history(s.sweep, s.run_id).statuses) in FINAL for s in plan.specs)
        console.print(f"\nstopped: {done} of {len(plan.specs)} planned runs done in sweep {plan.sweep}; "
                      f"continue with: {continue_command()}")
        raise SystemExit(130) from None
    finally:
        for one in per_slot:
            if one.warm is not None:
                one.warm.close()
    return outcome


class _Runner:
    """The scheduling loop of execute_plan: free slots take the next pending run (seed-major); a
    finished run is settled, retried (at the front of the queue) or counted; a run that another
    sweep process holds is left to it and looked at again once nothing else is running."""

    def __init__(self, plan: Plan, store: ResultsStore, specs: list[RunSpec], console: Console, policy: RetryPolicy,
                 per_slot: list[Processes], on_progress: Callable[[RunSpec, dict[str, Any]], None] | None,
                 on_recorded: Callable[[RunSpec], None] | None = None):
        self.plan, self.store, self.console, self.policy, self.per_slot = plan, store, console, policy, per_slot
        self.on_progress, self.on_recorded = on_progress, on_recorded
        self.outcome = SweepOutcome()
        self.pending: deque[RunSpec] = deque(specs)
        self.busy: list[RunSpec] = []
        self.free = list(range(len(per_slot)))
        self.running: dict[str, tuple[int, threading.Thread]] = {}
        self.finished: queue.Queue[tuple[RunSpec, Outcome | None, BaseException | None]] = queue.Queue()

    def run(self) -> None:
        with RunProgress(self.console, len(self.pending)) as self.progress:
            while self.pending or self.running or self.busy:
                self._start_what_fits()
                if not self.running:
                    if self.busy:  # held by another sweep process: come back to them
                        time.sleep(2.0)
                        self.pending.extend(self.busy)
                        self.busy.clear()
                    continue
                try:
                    spec, result, error = self.finished.get(timeout=1.0)
                except queue.Empty:
                    if interrupted():
                        raise KeyboardInterrupt from None  # pressed while a run was being forked
                    continue
                self._finish(spec, result, error)

    def _start_what_fits(self) -> None:
        while self.free and self.pending:
            spec = self.pending.popleft()
            label = run_label(spec)
            status = settled(self.store, spec, self.policy)
            if status is not None:
                self.outcome.record(spec, status)
                self.progress.finish_run(spec.run_id, f"{describe(self.store, spec, status, label)} "
                                                      "(already in the store)")
                continue
            slot = self.free.pop(0)
            self.progress.start_run(spec.run_id, label, spec.steps)
            worker = threading.Thread(target=self._work, args=(spec, self.per_slot[slot]),
                                      name=f"run-{spec.run_id}", daemon=True)
            self.running[spec.run_id] = (slot, worker)
            worker.start()

    def _work(self, spec: RunSpec, processes: Processes) -> None:
        """One run in its own thread, with its own store object (the store's cache is per object)."""
        store = ResultsStore(self.store.root)

        def watch(p: dict[str, Any]) -> None:
            self.progress.update(spec.run_id, p)
            if self.on_progress is not None:
                self.on_progress(spec, p)

        try:
            result = execute(spec, store, processes, on_progress=watch,
                             should_run=lambda: settled(store, spec, self.policy) is None)
            self.finished.put((spec, result, None))
        except BaseException as err:  # noqa: BLE001 - handed to the scheduling thread
            self.finished.put((spec, None, err))

    def _finish(self, spec: RunSpec, result: Outcome | None, error: BaseException | None) -> None:
        slot, worker = self.running.pop(spec.run_id)
        worker.join()
        self.free.append(slot)
        self.free.sort()
        if error is not None:
            self.progress.drop_run(spec.run_id)
            raise error
        if result is None:  # another sweep process holds this run
            self.progress.drop_run(spec.run_id)
            self.busy.append(spec)
            return
        label = run_label(spec)
        if result.interrupted:  # its workers were stopped from outside: so is the sweep
            self.progress.drop_run(spec.run_id)
            self.console.print(f"{escape(label)} was interrupted by {result.interrupted} (not counted as a "
                               "failed attempt; it resumes from its checkpoint)")
            raise KeyboardInterrupt
        if result.row and result.row.status == FAILED and self.per_slot[0].records:  # node 0 says what counts
            self.console.print(f"[yellow]{escape(label)} failed[/yellow]: {escape(result.row.reason)} "
                               f"(log: {escape(str(result.log))})")
        if self.per_slot[0].records:
            if result.row is not None and self.on_recorded is not None:
                self.on_recorded(spec)
            status = settled(self.store, spec, self.policy)
        else:  # a non-first node of a multi-node run: node 0 records, and this node follows its record
            if result.row is not None:
                await_record(self.store, spec, result.row.attempt)
            status = settled(self.store, spec, self.policy)
        if status is None:  # retried at once, before the runs that come after it
            self.progress.drop_run(spec.run_id)
            self.pending.appendleft(spec)
            return
        self.outcome.record(spec, status)
        self.progress.finish_run(spec.run_id, describe(self.store, spec, status, label))

    def stop(self) -> None:
        """Stop every run still running (their processes are terminated) and wait for their threads."""
        if not self.running:
            return
        stop_runs()
        for _, worker in list(self.running.values()):
            worker.join(timeout=120)


def run_label(spec: RunSpec) -> str:
    """How a run is named in progress lines: arm and seed (and a noise study's varied stream)."""
    return (f"{spec.arm} seed {spec.seed}" + (f" ({spec.vary})" if spec.vary else "")
            + (f" at {spec.budget_factor:g}x budget" if spec.budget_factor != 1.0 else ""))


def describe(store: ResultsStore, spec: RunSpec, status: str, label: str) -> str:
    """One line for a settled run: its test loss and speed, or why it did not complete."""
    history = store.history(spec.sweep, spec.run_id)
    row = history.counted if status == COMPLETED else None
    if row is not None:
        return (f"{label}: test loss {row['test_loss']:.6f} ({row['tokens_seen']:,} tokens, "
                f"{row['wall_time_s']:.1f}s, {row['tokens_per_s']:,.0f} tok/s)")
    if history.rows:
        last = history.rows[-1]
        return f"{label}: {status}: {last['reason']} (log: {last['run_dir']}/log.txt)"
    return f"{label}: {status}"
