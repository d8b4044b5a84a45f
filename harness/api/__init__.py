"""harness as a library: the plans, runs and reports of the command line, from Python.

    import harness.api as hx

    planned = hx.plan_sweep(["qkv_bias"], seeds=3, preset="micro", tokens=4096, results="results")
    hx.run(planned)                                  # on this machine, runs at once on its cores or GPUs
    report = hx.report("results", sweep=planned.plan.sweep)
    report.arms()                                    # a DataFrame: one row per arm, its verdict and interval
    report.forest_plot("forest.png")

Every function checks its arguments as the command does (a bad one raises harness.core.errors.
UserError with the command's one-line message) and computes exactly what the command computes:
`harness sweep` is `run(plan_sweep(...))` with the command's options as keywords (a sweep file with
a [trainer] table runs the user's own script: harness.planning.trainer), and `harness report` is
`report(...)` written out. A sweep runs under torchrun on this machine unless `cluster`
names Slurm options (harness.cluster.slurm.ClusterOptions).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from rich.console import Console

from harness.api.launching import Backend, Execution, Here, Jobs, backend_for, launch, launch_ladder
from harness.core.definitions import BASELINE, Library
from harness.core.errors import UserError

if TYPE_CHECKING:
    from harness.planning.adaptive import Adaptive
    from harness.planning.request import Streams
    from harness.report.build import Report

_LAZY = {"Adaptive": "harness.planning.adaptive", "Streams": "harness.planning.request", "Report": "harness.report.build"}

__all__ = ["Adaptive", "BASELINE", "Backend", "Execution", "Here", "Jobs", "Planned", "Report", "Streams",
           "UserError", "example_trainers", "import_results", "open_results", "plan_ladder", "plan_noise", "plan_sweep", "report", "run",
           "track"]


def __getattr__(name: str):
    """Adaptive, Streams and Report load on first use: the command line imports this package's
    launching module, and must not load scipy before it has checked its options."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'harness.api' has no attribute {name!r}")


@dataclass(frozen=True)
class Planned:
    """A plan (or a ladder of them) with the processes per run its budgets were computed for, and
    where its runs go. `plan` is harness.planning.plan.Plan: its runs (`specs`), budgets and sweep."""

    plan: Any = None  # harness.planning.plan.Plan; None for a ladder
    ladder: Any = None  # harness.planning.ladder.Ladder
    processes: Any = None  # harness.launch.torchrun.Processes
    backend: Backend = Here()

    @property
    def name(self) -> str:
        return self.ladder.name if self.ladder is not None else self.plan.sweep


def _shape(cluster, nproc: int | None, nnodes: int = 1, node_rank: int = 0,
           rdzv_endpoint: str = "") -> tuple[Any, Backend]:
    from harness.cluster.slurm import ClusterOptions

    cluster = (cluster or ClusterOptions()).checked()
    return cluster.processes(nproc, nnodes, node_rank, rdzv_endpoint), backend_for(cluster)


def _sets(sets: Mapping[str, Any] | None, data: str | None) -> dict[str, Any]:
    """`sets` checked as --set checks them, plus `data` (--data's shorthand)."""
    from harness.core.config import checked_set
    from harness.planning.request import with_data

    return with_data(dict(checked_set(str(k), v, f"sets[{k!r}]") for k, v in (sets or {}).items()), data)


def _seeds(seeds: int | Sequence[int] | None) -> tuple[int | None, str | None]:
    """seeds=N is --seeds N; a list of whole numbers is --seed-list; anything else is refused."""
    import numbers

    if seeds is None:
        return None, None
    if isinstance(seeds, numbers.Integral) and not isinstance(seeds, bool):
        return int(seeds), None
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence) or not all(
            isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
        raise UserError(f"seeds={seeds!r}: give a number of seeds (0..N-1) or a list of whole numbers, e.g. [7, 11]")
    return None, ",".join(str(int(s)) for s in seeds)


def plan_sweep(arms: str | Sequence[str], *, seeds: int | Sequence[int] | None = None, preset: str | None = None,
               sets: Mapping[str, Any] | None = None, tokens: int | None = None, budget: str | None = None,
               name: str | None = None, data: str | None = None, adaptive: Adaptive | None = None,
               streams: Streams | None = None, extend_baseline: float | None = None,
               results: str | Path = "results", nproc: int | None = None, nnodes: int = 1, node_rank: int = 0,
               rdzv_endpoint: str = "", cluster=None, sweeps: Sequence[str | Path] = ()) -> Planned:
    """`harness sweep`'s plan: one keyword per option of the command (so more than ten; every one
    optional, with the command's default). `arms` is intervention names or one sweep file; `seeds`
    a count (0..N-1) or a list; `sets` overrides by key; `adaptive` makes it an adaptive sweep.
    Multi-node runs under torchrun: the same call on each node with its `node_rank`, `nnodes` and
    `rdzv_endpoint` (host:port), the results folder shared; under Slurm `nnodes` is each job's nodes."""
    from harness.planning.plan import build_plan
    from harness.planning.request import Streams, sweep_request

    library = Library.from_environment([Path(p) for p in sweeps])
    count, listed = _seeds(seeds)
    request = sweep_request([arms] if isinstance(arms, str) else list(arms), seeds=count, seed_list=listed,
                            preset=preset, sets=_sets(sets, None), tokens=tokens, budget=budget, name=name, data=data,
                            library=library, adaptive=adaptive, streams=streams or Streams(), extend=extend_baseline)
    processes, backend = _shape(cluster, nproc, nnodes, node_rank, rdzv_endpoint)
    plan = build_plan(request, processes.world_size, processes.uses_gpus(), Path(results), library)
    return Planned(plan=plan, processes=processes, backend=backend)


def plan_noise(*, preset: str = "tiny", seeds: int = 8, arm: str | None = None, replicates: int = 2,
               sets: Mapping[str, Any] | None = None, tokens: int | None = None, data: str | None = None,
               name: str | None = None, results: str | Path = "results", nproc: int | None = None,
               cluster=None, sweeps: Sequence[str | Path] = ()) -> Planned:
    """`harness noise`'s plan: runs that vary one random stream at a time, all three and none. One
    keyword per option of the command (so more than ten), each with the command's default."""
    from harness.planning.plan import noise_plan
    from harness.planning.request import NoiseRequest

    request = NoiseRequest(preset=preset, arm=arm, seeds=seeds, replicates=replicates, sets=_sets(sets, data),
                           tokens=tokens, name=name).check()
    processes, backend = _shape(cluster, nproc)
    plan = noise_plan(request, processes.world_size, processes.uses_gpus(), Path(results),
                      Library.from_environment([Path(p) for p in sweeps]))
    return Planned(plan=plan, processes=processes, backend=backend)


def plan_ladder(arms: str | Sequence[str], *, preset: str = "tiny", seeds: int | Sequence[int] | None = None,
                adaptive: Adaptive | None = None, rungs: int | None = None, smallest: float | None = None,
                largest: float | None = None, sizes: str | None = None, target: str | None = None,
                sets: Mapping[str, Any] | None = None, data: str | None = None, name: str | None = None,
                results: str | Path = "results", nproc: int | None = None, cluster=None,
                sweeps: Sequence[str | Path] = ()) -> Planned:
    """`harness ladder`'s plan: one keyword per option of the command but multi-node (so more than ten): the
    same arms and paired seeds at every size, each rung on its own Chinchilla budget."""
    from harness.planning.ladder import LadderRequest, build_ladder
    from harness.planning.request import seed_values

    if sizes is not None and (rungs, smallest, largest) != (None, None, None):
        raise UserError("--sizes names the rungs; --rungs, --smallest and --largest choose them: give one or the other")
    count, listed = _seeds(seeds)
    spacing = {k: v for k, v in (("rungs", rungs), ("smallest", smallest), ("largest", largest)) if v is not None}
    request = LadderRequest(arms=(arms,) if isinstance(arms, str) else tuple(arms),
                            seeds=tuple(seed_values(count, listed, adaptive=adaptive)), preset=preset,
                            sets=_sets(sets, data), sizes=sizes, target=target, name=name,
                            adaptive=adaptive, **spacing)
    processes, backend = _shape(cluster, nproc)
    ladder = build_ladder(request, processes.world_size, processes.uses_gpus(), Path(results),
                          Library.from_environment([Path(p) for p in sweeps]))
    return Planned(ladder=ladder, processes=processes, backend=backend)


def run(planned: Planned, *, jobs: int | str | None = "auto", retries: int = 1, log: Sequence[str] = (),
        dry_run: bool = False, console: Console | None = None) -> int:
    """Show the plan, then run its runs (or submit them); 0 when every run completed. Runs already
    recorded are not run again, so calling it again resumes a stopped sweep. `jobs`: runs at once
    here ("auto", or a number); `log`: trackers ("tensorboard", "mlflow", "wandb", "trackio")."""
    how = Execution.checked(retries, jobs, list(log), planned.backend)
    if planned.ladder is not None:
        return launch_ladder(planned.ladder, planned.processes, planned.backend, how, dry_run, console)
    return launch(planned.plan, planned.processes, planned.backend, how, dry_run, console)


def report(results: str | Path = "results", sweep: str | None = None, *, baseline: str = BASELINE,
           alpha: float = 0.05, margin: float | None = None, allow_mismatch: bool = False) -> Report:
    """The report of a results folder (every sweep, or the one named, and their ladders) as an
    object: its tables are DataFrames (Report.arms(), .worth(), .text(), .pairing(), a ladder's
    .ladder_trend() and .ladder_rungs()), and it renders to markdown, JSON and the terminal and draws
    its plots. Warnings are in Report.warnings."""
    from harness.report.build import build_report

    return build_report(Path(results), sweep, baseline=baseline, alpha=alpha, margin=margin,
                        allow_mismatch=allow_mismatch)


def track(to: str | Sequence[str], results: str | Path = "results", *, sweep: str | None = None,
          console: Console | None = None) -> bool:
    """`harness track`: publish a results store's runs and each sweep's report (verdicts, k, the
    paired-difference curve) to experiment trackers ("mlflow", "wandb", "trackio"; their usual
    environment variables say where). Publishing again adds nothing. True when every tracker got
    everything; `run(..., log=...)` publishes as the runs record instead."""
    from harness.trackers.publish import publish_store

    return publish_store([to] if isinstance(to, str) else list(to), Path(results), sweep, console or Console())


def import_results(file: str | Path, results: str | Path = "results", *, sweep: str | None = None,
                   baseline: str = BASELINE) -> dict[str, int]:
    """Take a CSV, Parquet or JSON table of (arm, seed, test_loss) trained elsewhere into a results
    store as imported sweeps (harness.store.imported); sweep -> runs added (0: imported before)."""
    from harness.store.imported import import_table
    from harness.store.results import ResultsStore

    return import_table(file, ResultsStore(Path(results)), sweep, baseline)


def example_trainers(folder: str | Path) -> list[Path]:
    """Copy the example external trainers and their sweep files into `folder`; the copied paths."""
    from harness.planning.trainer import copy_examples

    return copy_examples(Path(folder))


def open_results(results: str | Path = "results"):
    """The results store of a folder (harness.store.results.ResultsStore), read verified against its
    manifest: `runs_frame()` (one row per recorded attempt), `sweep_frame(sweep)`, `curves()`."""
    from harness.store.results import ResultsStore

    return ResultsStore(Path(results))
