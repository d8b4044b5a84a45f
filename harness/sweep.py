"""Running a sweep's plan on this machine: skip what is done, resume, retry, stop cleanly on Ctrl-C.

Running a plan (see harness.plan) skips what the store already holds for this sweep, resumes
interrupted runs from their checkpoints, retries a failed run as harness.record.RetryPolicy says,
and leaves runs that another sweep process holds to that process (waiting for them at the end).
Each question to the store ("has this run settled?") is one cached, verified read.
"""

from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape

from harness.launch import execute
from harness.plan import Plan, save_plan
from harness.procs import ctrl_c_latch
from harness.progress import RunProgress
from harness.record import COMPLETED, FAILED, FINAL, RetryPolicy, RunSpec
from harness.results import ResultsStore


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


def execute_plan(plan: Plan, console: Console, retries: int = 1,
                 on_progress: Callable[[RunSpec, dict[str, Any]], None] | None = None) -> SweepOutcome:
    """Run every run of the plan that the store does not hold yet; Ctrl-C stops cleanly.

    on_progress(spec, progress_dict) also gets every PROGRESS line (e.g. --log tensorboard)."""
    plan.store.ensure_writable()
    save_plan(plan)
    policy = RetryPolicy(retries)
    outcome = SweepOutcome()
    pending = list(plan.specs)
    try:
        with RunProgress(console, len(plan.specs)) as progress, ctrl_c_latch() as pressed:
            while pending:
                busy = []
                for spec in pending:
                    label = f"{spec.arm} seed {spec.seed}"
                    status = settled(plan.store, spec, policy)
                    if status is not None:
                        outcome.record(spec, status)
                        progress.finish_run(f"{describe(plan.store, spec, status, label)} (already in the store)")
                        continue
                    while status is None:
                        progress.start_run(label, spec.steps)
                        watch = progress.update if on_progress is None else \
                            (lambda p, s=spec: (progress.update(p), on_progress(s, p)))
                        result = execute(spec, plan.store, plan.launcher, on_progress=watch,
                                         should_run=lambda s=spec: settled(plan.store, s, policy) is None)
                        if pressed.is_set():
                            raise KeyboardInterrupt
                        if result is None:  # another sweep process holds this run: come back to it
                            busy.append(spec)
                            break
                        if result.row and result.row.status == FAILED:
                            console.print(f"[yellow]{escape(label)} failed[/yellow]: {escape(result.row.reason)} "
                                          f"(log: {escape(str(result.log))})")
                        if plan.launcher.records:
                            status = settled(plan.store, spec, policy)
                        else:  # a non-first node of a multi-node run: node 0 records
                            status = result.row.status if result.row else COMPLETED
                    if status is not None:
                        outcome.record(spec, status)
                        progress.finish_run(describe(plan.store, spec, status, label))
                pending = busy
                if pending:
                    time.sleep(2.0)
    except KeyboardInterrupt:
        done = sum(policy.settled(plan.store.history(s.sweep, s.run_id).statuses) in FINAL for s in plan.specs)
        console.print(f"\nstopped: {done} of {len(plan.specs)} runs done in sweep {plan.sweep}; "
                      f"continue with: {continue_command()}")
        raise SystemExit(130) from None
    return outcome


def describe(store: ResultsStore, spec: RunSpec, status: str, label: str) -> str:
    """One line for a settled run: its test loss and speed, or why it did not complete."""
    history = store.history(spec.sweep, spec.run_id)
    row = history.settled_row(COMPLETED) if status == COMPLETED else None
    if row is not None:
        return (f"{label}: test loss {row['test_loss']:.6f} ({row['tokens_seen']:,} tokens, "
                f"{row['wall_time_s']:.1f}s, {row['tokens_per_s']:,.0f} tok/s)")
    if history.rows:
        last = history.rows[-1]
        return f"{label}: {status}: {last['reason']} (log: {last['run_dir']}/log.txt)"
    return f"{label}: {status}"
