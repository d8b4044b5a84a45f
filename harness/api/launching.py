"""Running a plan: how (retries, runs at once, trackers) and where (a backend), shown first.

A backend is where a plan's runs go: `Here` runs them on this machine under torchrun, several at
once; `Jobs` submits each as a Slurm job (or submitit's local executor) and may wait for them.
The command line and the Python API both call `launch` and `launch_ladder`; nothing else chooses
between the backends.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from rich.console import Console

from harness.core.errors import UserError
from harness.core.bounds import non_negative


@dataclass(frozen=True)
class Execution:
    """How a plan runs, checked before it is built (which reads corpora): retries of a failed run,
    runs at once here (None: auto), and the trackers to log to (harness.trackers.publish)."""

    retries: int = 1
    jobs: int | None = None
    log: tuple[str, ...] = ()

    @property
    def progress_log(self) -> Callable[[Path], Any] | None:
        """What writes the runs' curves as they arrive (TensorBoard under --log tensorboard), or None."""
        if "tensorboard" not in self.log:
            return None
        from harness.trackers.tensorboard import TensorBoardLog

        return TensorBoardLog

    @classmethod
    def checked(cls, retries: int = 1, jobs: str | int | None = "auto", log: list[str] | tuple[str, ...] | None = None,
                backend: "Backend | None" = None) -> "Execution":
        from harness.core.placement import parse_jobs
        from harness.trackers.publish import parse_log

        non_negative(retries, "--retries")
        jobs_asked = parse_jobs(str(jobs) if jobs is not None else "auto")
        if backend is not None:
            backend.check_jobs(jobs_asked)
        return cls(retries, jobs_asked, parse_log(list(log) if log else None))


class Backend(Protocol):
    """Where a plan's runs go."""

    def check_jobs(self, jobs: int | None) -> None:
        """Refuse --jobs where it means nothing."""

    def slots(self, processes, jobs: int | None) -> int:
        """Runs at once on this machine."""

    def execute(self, plan, processes, how: Execution, slots: int, console: Console) -> int:
        """Run or submit the plan's runs; an exit code."""

    def say_where(self, results: Path, what: str, name: str, console: Console) -> None:
        """Where the results are, once the runs have run here."""


@dataclass(frozen=True)
class Here:
    """This machine, under torchrun: `slots` runs at once, each on its own GPUs or cores."""

    def check_jobs(self, jobs: int | None) -> None:
        return None

    def slots(self, processes, jobs: int | None) -> int:
        return processes.jobs(jobs)

    def execute(self, plan, processes, how: Execution, slots: int, console: Console) -> int:
        outcome = run_here(plan, processes, how.retries, how.log, slots, console)
        return 0 if outcome.all_completed else 1

    def say_where(self, results: Path, what: str, name: str, console: Console) -> None:
        console.print(f"results: {results / 'runs.parquet'} ({what} {name!r}); report with:\n"
                      f"  harness report --sweep {name} --results {results}")


@dataclass(frozen=True)
class Jobs:
    """Slurm jobs (or submitit's local executor) with the cluster's options; the trackers get what
    was recorded once the command stops waiting for the jobs."""

    cluster: Any  # harness.cluster.slurm.ClusterOptions, checked

    def check_jobs(self, jobs: int | None) -> None:
        if jobs is not None:
            raise UserError(f"--jobs is for runs on this machine; --launcher {self.cluster.launcher} runs jobs in "
                            "parallel by itself (--slurm-array-parallelism)")

    def slots(self, processes, jobs: int | None) -> int:
        return 1

    def execute(self, plan, processes, how: Execution, slots: int, console: Console) -> int:
        from harness.cluster.slurm import submit_plan

        with publishing(plan, how.log, console):
            return submit_plan(plan, processes, self.cluster, how.retries, console, progress_log=how.progress_log)

    def say_where(self, results: Path, what: str, name: str, console: Console) -> None:
        return None


def backend_for(cluster) -> Backend:
    """The backend of checked ClusterOptions: torchrun is this machine, slurm and local are jobs."""
    return Here() if cluster.launcher == "torchrun" else Jobs(cluster)


def launch(plan, processes, backend: Backend, how: Execution, dry_run: bool = False,
           console: Console | None = None) -> int:
    """Show the plan, then run it (or submit it) unless `dry_run`; an exit code."""
    from harness.planning.preview import print_plan
    from harness.store.planfile import check_saved

    console = console or Console()
    check_saved(plan)  # before anything is shown: a command that would change a sweep's design is refused
    slots = backend.slots(processes, how.jobs)
    print_plan(plan, console, slots)
    if dry_run:
        return 0
    code = backend.execute(plan, processes, how, slots, console)
    backend.say_where(plan.results, "study" if plan.noise else "sweep", plan.sweep, console)
    return code


def launch_ladder(ladder, processes, backend: Backend, how: Execution, dry_run: bool = False,
                  console: Console | None = None) -> int:
    """Show every rung, then run (or submit) the rungs one after another, smallest first."""
    from harness.planning.preview import print_ladder
    from harness.store.planfile import check_saved, save_ladder

    console = console or Console()
    for rung in ladder.rungs:  # every rung is checked before anything runs or is shown
        check_saved(rung.plan)
    save_ladder(ladder, check_only=True)
    slots = backend.slots(processes, how.jobs)
    print_ladder(ladder, console, slots)
    if dry_run:
        return 0
    save_ladder(ladder)
    code = 0
    for i, rung in enumerate(ladder.rungs, 1):
        console.print(f"rung {i} of {len(ladder.rungs)}: {rung.size.label} ({rung.params:,} parameters), "
                      f"sweep {rung.sweep}", highlight=False)
        code = max(code, backend.execute(rung.plan, processes, how, slots, console))
    backend.say_where(ladder.rungs[0].plan.results, "ladder", ladder.name, console)
    return code


@contextlib.contextmanager
def publishing(plan, log: tuple[str, ...], console: Console):
    """The plan's trackers other than TensorBoard (None when there are none): each run as it is
    recorded, then everything of the plan and its report, waiting for them boundedly."""
    from harness.trackers.publish import TENSORBOARD, Publisher

    if not set(log) - {TENSORBOARD}:
        yield None
        return
    publisher = Publisher(log, plan.results, console)
    try:
        yield publisher
    except BaseException:  # Ctrl-C (SystemExit 130), a refusal: the agents stop now, saying what is missing
        publisher.finish(interrupted=True)
        raise
    publisher.catch_up(plan.sweep, [s.run_id for s in plan.specs], summary=not plan.noise)
    publisher.finish()


def run_here(plan, processes, retries: int, log: tuple[str, ...], jobs: int = 1, console: Console | None = None):
    """Execute a plan on this machine; TensorBoard gets live curves then test losses, the other
    trackers each run as it is recorded. Returns harness.launch.local's outcome."""
    from harness.launch.local import execute_plan
    from harness.store.results import ResultsStore
    from harness.trackers.tensorboard import TensorBoardLog

    console = console or Console()
    tb = TensorBoardLog(plan.results) if "tensorboard" in log else None
    with publishing(plan, log, console) as publisher:
        try:
            return execute_plan(plan, processes, console, retries=retries, jobs=jobs,
                                on_progress=tb.progress if tb else None,
                                on_recorded=publisher.recorded if publisher else None)
        finally:
            if tb is not None:
                tb.from_store(ResultsStore(plan.results), plan.specs)
