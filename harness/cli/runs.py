"""The commands that train: `harness run`, `harness sweep`, `harness noise`, `harness ladder`.

Each command's parameters are its options (Typer declares options as parameters, so these
functions have many); each body builds the option groups once (a SweepRequest or NoiseRequest,
the ClusterOptions and its backend, the adaptive settings), builds the plan, and hands everything
to harness.api.launching, the one place that runs a plan here or submits it to Slurm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.api.launching import Execution, backend_for, launch, launch_ladder, run_here
from harness.cli.app import (BudgetOpt, DataOpt, DataSeedOpt, DropoutSeedOpt, InitSeedOpt, LogOpt, PresetOpt,
                             ResultsOpt, SetOpt, SweepsOpt, TokensOpt, VaryOpt, command, console, definitions,
                             parse_sets)
from harness.core import config as cfgmod
from harness.planning.adaptive import DEFAULT_ALPHA
from harness.planning.request import BUDGETS, DEFAULT_LARGEST, DEFAULT_RUNGS, DEFAULT_SEEDS, DEFAULT_SMALLEST
from harness.stats.sequential import DEFAULT_MAX_SEEDS, DEFAULT_MIN_SEEDS
from harness.core.errors import UserError

NprocOpt = Annotated[Optional[int], typer.Option(help="Processes per node per run (default: GPUs, else 1).")]
NnodesOpt = Annotated[int, typer.Option(
    "--nnodes", "--nodes", help="Nodes per run: torchrun --nnodes (start the same command on each node with its "
                                "--node-rank, the results folder shared), or each Slurm job's --nodes.")]
NodeRankOpt = Annotated[int, typer.Option(help="This node's rank (torchrun --node-rank).")]
RdzvOpt = Annotated[str, typer.Option(help="host:port of the c10d rendezvous (multi-node).")]
RetriesOpt = Annotated[int, typer.Option(help="Retries of a failed run.")]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="Print the plan (runs, budgets, estimated time) and stop.")]
LauncherOpt = Annotated[str, typer.Option(
    help="torchrun: run here, --jobs runs at a time (default); slurm: submit each run as a Slurm job "
         "(one job array per sweep) through submitit; local: the same jobs through submitit's local executor.")]
PartitionOpt = Annotated[Optional[str], typer.Option(help="Slurm partition.")]
TimeOpt = Annotated[Optional[str], typer.Option(
    "--time", help="Slurm/local: each job's time limit (HH:MM:SS, D-HH:MM:SS, 90m, 4h; slurm default 24:00:00); "
                   "a job that reaches it is requeued and resumes from its checkpoint.")]
GpusPerNodeOpt = Annotated[Optional[int], typer.Option(
    help="Slurm/local: GPUs (torchrun processes) per node of each run; 0 for CPU-only jobs "
         "(Slurm default: 1 where the partition has GPUs, else 0).")]
ArrayParallelismOpt = Annotated[Optional[int], typer.Option(help="Slurm: runs of the array at once (default: all).")]
CpusOpt = Annotated[Optional[int], typer.Option(help="Slurm: CPUs per node of each job.")]
MemOpt = Annotated[Optional[float], typer.Option(help="Slurm: memory per node of each job, GB.")]
SlurmArgOpt = Annotated[Optional[list[str]], typer.Option(
    help="Slurm: any other sbatch option as KEY=VALUE, e.g. account=myproj, qos=high (repeatable).")]
SlurmSetupOpt = Annotated[Optional[list[str]], typer.Option(
    help="Slurm: a shell line to run before each job, e.g. 'module load cuda' (repeatable).")]
WaitOpt = Annotated[Optional[bool], typer.Option(
    "--wait/--no-wait", help="Slurm/local: wait for the jobs and print each outcome (default: local waits, "
                             "slurm returns once submitted).")]
SeedsOpt = Annotated[Optional[int], typer.Option(help=f"Seeds 0..N-1 for every arm (default {DEFAULT_SEEDS}).")]
SeedListOpt = Annotated[Optional[str], typer.Option(help="Explicit seeds, e.g. 7,11,13.")]
UntilDecidedOpt = Annotated[bool, typer.Option(
    "--until-decided", help="Adaptive: run seeds in rounds and stop giving an arm seeds once a sequential test "
                            "(valid under optional stopping) decides it better, worse or equivalent.")]
MaxSeedsOpt = Annotated[Optional[int], typer.Option(
    help=f"--until-decided: seeds per arm at most (default {DEFAULT_MAX_SEEDS}).")]
MinSeedsOpt = Annotated[Optional[int], typer.Option(
    help=f"--until-decided: seeds before any decision (default {DEFAULT_MIN_SEEDS}).")]
MarginOpt = Annotated[Optional[float], typer.Option(
    help="--until-decided: also decide 'equivalent' when the difference lies within +-margin.")]
AlphaOpt = Annotated[Optional[float], typer.Option(
    help=f"--until-decided: family-wise error across arms (default {DEFAULT_ALPHA:g}).")]
JobsOpt = Annotated[str, typer.Option(
    help="Runs at once on this machine, each on its own GPUs or CPU cores; auto: GPUs // --nproc on CUDA, "
         "cores // (--nproc x threads per process) on the CPU. Placement never changes the results.")]


def streams(vary: str | None, init_seed: int | None, data_seed: int | None, dropout_seed: int | None):
    """--vary STREAM and --init-seed/--data-seed/--dropout-seed as one Streams value."""
    from harness.planning.request import Streams

    fixed = {name: value for name, value in (("init", init_seed), ("data", data_seed), ("dropout", dropout_seed))
             if value is not None}
    return Streams(vary or "", fixed)


def adaptive_settings(until_decided: bool, max_seeds, min_seeds, margin, alpha):
    """The adaptive sweep's settings, or None; its options without --until-decided are refused."""
    from harness.planning.adaptive import Adaptive

    given = {"--max-seeds": max_seeds, "--min-seeds": min_seeds, "--margin": margin, "--alpha": alpha}
    if not until_decided:
        named = [flag for flag, value in given.items() if value is not None]
        if named:
            raise UserError(f"{named[0]} belongs to --until-decided (an adaptive sweep); for a fixed sweep's "
                            "report give it to `harness report`" if named[0] in ("--margin", "--alpha") else
                            f"{named[0]} belongs to --until-decided (an adaptive sweep)")
        return None
    defaults = Adaptive()
    settings = Adaptive(alpha=defaults.alpha if alpha is None else alpha, margin=margin,
                        min_seeds=defaults.min_seeds if min_seeds is None else min_seeds,
                        max_seeds=defaults.max_seeds if max_seeds is None else max_seeds)
    settings.check()
    return settings


# one parameter per command-line option (Typer); the body only builds the option groups
@command("run")
def run_cmd(
    arm: Annotated[str, typer.Argument(help="Arm: 'baseline', an intervention, or several joined by '+'.")] = cfgmod.BASELINE,
    seed: Annotated[int, typer.Option(help="Run seed (derives init, data-order and dropout seeds).")] = 0,
    preset: PresetOpt = "tiny",
    nproc: NprocOpt = None,
    sets: SetOpt = None,
    tokens: TokensOpt = None,
    budget: BudgetOpt = BUDGETS[0],
    results: ResultsOpt = Path("results"),
    sweep: Annotated[str, typer.Option(help="Sweep name to record the run under.")] = "adhoc",
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    rdzv_endpoint: RdzvOpt = "",
    data: DataOpt = None,
    log: LogOpt = None,
    vary: VaryOpt = None,
    init_seed: InitSeedOpt = None,
    data_seed: DataSeedOpt = None,
    dropout_seed: DropoutSeedOpt = None,
    sweeps_dirs: SweepsOpt = None,
):
    """One exact, deterministic training run under torchrun, recorded in the results store."""
    from harness.launch.torchrun import Processes
    from harness.planning.request import SweepRequest, with_data
    from harness.store.planfile import check_saved
    from harness.trackers.publish import parse_log

    trackers = parse_log(log)
    request = SweepRequest(arms=(arm,), seeds=(seed,), preset=preset, sets=with_data(parse_sets(sets), data),
                           tokens=tokens, budget=budget, name=sweep, include_baseline=False,
                           streams=streams(vary, init_seed, data_seed, dropout_seed)).check()
    processes = Processes.checked(nproc, nnodes, node_rank, rdzv_endpoint)
    from harness.planning.plan import build_plan  # torch, scipy: after every check of the options

    plan = build_plan(request, processes.world_size, processes.uses_gpus(), results, definitions(sweeps_dirs))
    check_saved(plan)
    return 0 if run_here(plan, processes, retries=0, log=trackers, console=console).all_completed else 1


def cluster_options(launcher, partition, gpus_per_node, time_limit, array_parallelism, cpus_per_task, mem_gb,
                    slurm_arg, slurm_setup, wait):
    """The checked ClusterOptions of the commands that take every Slurm option (sweep, ladder)."""
    from harness.cluster.slurm import ClusterOptions

    return ClusterOptions(launcher=launcher, partition=partition, gpus_per_node=gpus_per_node, time=time_limit,
                          array_parallelism=array_parallelism, cpus_per_task=cpus_per_task, mem_gb=mem_gb,
                          slurm_args=tuple(slurm_arg or ()), slurm_setup=tuple(slurm_setup or ()), wait=wait).checked()


# one parameter per command-line option (Typer); the body only builds the option groups
@command("sweep")
def sweep_cmd(
    arms: Annotated[list[str], typer.Argument(
        help="Interventions to compare with the baseline ('+' combines), or one sweep file (TOML: a path, or "
             "the name of one in the definitions folders, e.g. interventions_32.toml).")],
    seeds: SeedsOpt = None,
    seed_list: SeedListOpt = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Preset name (default tiny).")] = None,
    nproc: NprocOpt = None,
    sets: SetOpt = None,
    tokens: TokensOpt = None,
    budget: Annotated[Optional[str], typer.Option(
        "--budget", help="'baseline' (default): every arm trains on the baseline's Chinchilla budget, as the "
                         "seed author did; 'own': each arm on its own Chinchilla count.")] = None,
    results: ResultsOpt = Path("results"),
    name: Annotated[Optional[str], typer.Option(help="Sweep name (default: preset and arms).")] = None,
    dry_run: DryRunOpt = False,
    until_decided: UntilDecidedOpt = False,
    max_seeds: MaxSeedsOpt = None,
    min_seeds: MinSeedsOpt = None,
    margin: MarginOpt = None,
    alpha: AlphaOpt = None,
    extend_baseline: Annotated[Optional[float], typer.Option(
        "--extend-baseline", help="Also train the baseline to this factor of the budget (e.g. 2), so that the report "
                                  "measures arms worth more compute than the budget (compute multiplier k > 1).")] = None,
    retries: RetriesOpt = 1,
    jobs: JobsOpt = "auto",
    nnodes: NnodesOpt = 1,
    node_rank: NodeRankOpt = 0,
    rdzv_endpoint: RdzvOpt = "",
    data: DataOpt = None,
    log: LogOpt = None,
    vary: VaryOpt = None,
    init_seed: InitSeedOpt = None,
    data_seed: DataSeedOpt = None,
    dropout_seed: DropoutSeedOpt = None,
    launcher: LauncherOpt = "torchrun",
    partition: PartitionOpt = None,
    gpus_per_node: GpusPerNodeOpt = None,
    time_limit: TimeOpt = None,
    slurm_array_parallelism: ArrayParallelismOpt = None,
    cpus_per_task: CpusOpt = None,
    mem_gb: MemOpt = None,
    slurm_arg: SlurmArgOpt = None,
    slurm_setup: SlurmSetupOpt = None,
    wait: WaitOpt = None,
    sweeps_dirs: SweepsOpt = None,
):
    """Baseline + each intervention x N seeds, matched budgets, seed-major, resumable."""
    from harness.planning.request import sweep_request

    library = definitions(sweeps_dirs)
    cluster = cluster_options(launcher, partition, gpus_per_node, time_limit, slurm_array_parallelism, cpus_per_task,
                              mem_gb, slurm_arg, slurm_setup, wait)
    backend = backend_for(cluster)
    how = Execution.checked(retries, jobs, log, backend)
    request = sweep_request(arms, seeds=seeds, seed_list=seed_list, preset=preset, sets=parse_sets(sets),
                            tokens=tokens, budget=budget, name=name, data=data, library=library,
                            adaptive=adaptive_settings(until_decided, max_seeds, min_seeds, margin, alpha),
                            streams=streams(vary, init_seed, data_seed, dropout_seed), extend=extend_baseline)
    processes = cluster.processes(nproc, nnodes, node_rank, rdzv_endpoint)
    from harness.planning.plan import build_plan  # torch, scipy: after every check of the options

    plan = build_plan(request, processes.world_size, processes.uses_gpus(), results, library)
    return launch(plan, processes, backend, how, dry_run, console)


# one parameter per command-line option (Typer); the body only builds the option groups
@command("noise")
def noise_cmd(
    preset: PresetOpt = "tiny",
    seeds: Annotated[int, typer.Option(help="Runs per source of noise (and of the ordinary seeds).")] = 8,
    arm: Annotated[Optional[str], typer.Option(
        help="Also study this arm, and its paired difference with the baseline per source.")] = None,
    replicates: Annotated[int, typer.Option(
        help="Runs with identical seeds: bit-identical on CPU; on GPU their spread is the nondeterminism floor "
             "(give more there, e.g. 8).")] = 2,
    sets: SetOpt = None,
    tokens: TokensOpt = None,
    data: DataOpt = None,
    results: ResultsOpt = Path("results"),
    name: Annotated[Optional[str], typer.Option(help="Study name (default: noise-PRESET-ARMS).")] = None,
    nproc: NprocOpt = None,
    jobs: JobsOpt = "auto",
    retries: RetriesOpt = 1,
    dry_run: DryRunOpt = False,
    launcher: LauncherOpt = "torchrun",
    partition: PartitionOpt = None,
    time_limit: TimeOpt = None,
    log: LogOpt = None,
    sweeps_dirs: SweepsOpt = None,
):
    """Where seed noise comes from: runs that vary one random stream at a time (initial weights, data
    order, dropout masks), all three, and none; `harness report` decomposes the test loss's variance."""
    from harness.cluster.slurm import ClusterOptions
    from harness.planning.request import NoiseRequest, with_data

    cluster = ClusterOptions(launcher=launcher, partition=partition, time=time_limit).checked()
    backend = backend_for(cluster)
    how = Execution.checked(retries, jobs, log, backend)
    request = NoiseRequest(preset=preset, arm=arm, seeds=seeds, replicates=replicates,
                           sets=with_data(parse_sets(sets), data), tokens=tokens, name=name).check()
    processes = cluster.processes(nproc, 1, 0, "")
    from harness.planning.plan import noise_plan  # torch, scipy: after every check of the options

    plan = noise_plan(request, processes.world_size, processes.uses_gpus(), results, definitions(sweeps_dirs))
    return launch(plan, processes, backend, how, dry_run, console)


# one parameter per command-line option (Typer); the body only builds the option groups
@command("ladder")
def ladder_cmd(
    arms: Annotated[list[str], typer.Argument(help="Interventions to compare with the baseline at every size "
                                                   "('+' combines).")],
    preset: Annotated[str, typer.Option("--preset", "-p", help="The preset whose family of sizes the ladder "
                                                               "climbs (default tiny).")] = "tiny",
    rungs: Annotated[Optional[int], typer.Option(help="Number of sizes, spaced evenly in log parameters from "
                                                      f"--smallest to --largest (default {DEFAULT_RUNGS}).")] = None,
    smallest: Annotated[Optional[float], typer.Option(
        help=f"The smallest rung's parameters, as a factor of the preset's (default {DEFAULT_SMALLEST:g}).")] = None,
    largest: Annotated[Optional[float], typer.Option(
        help=f"The largest rung's parameters, as a factor of the preset's (default {DEFAULT_LARGEST:g}: the preset "
             "itself).")] = None,
    sizes: Annotated[Optional[str], typer.Option(
        help="Explicit sizes instead of --rungs: LAYERSxWIDTH, comma-separated, e.g. 1x24,2x48,3x72 (widths "
             "multiples of the preset's head size).")] = None,
    target: Annotated[Optional[str], typer.Option(
        help="Where the report predicts each arm's effect: a preset's name (its baseline's parameters) or a number "
             "of parameters (default: the preset).")] = None,
    seeds: SeedsOpt = None,
    seed_list: SeedListOpt = None,
    until_decided: UntilDecidedOpt = False,
    max_seeds: MaxSeedsOpt = None,
    min_seeds: MinSeedsOpt = None,
    margin: MarginOpt = None,
    alpha: AlphaOpt = None,
    sets: SetOpt = None,
    data: DataOpt = None,
    results: ResultsOpt = Path("results"),
    name: Annotated[Optional[str], typer.Option(help="Ladder name (default: ladder-PRESET-ARMS); rung sweeps are "
                                                     "named NAME-LAYERSxWIDTH.")] = None,
    nproc: NprocOpt = None,
    jobs: JobsOpt = "auto",
    retries: RetriesOpt = 1,
    dry_run: DryRunOpt = False,
    log: LogOpt = None,
    launcher: LauncherOpt = "torchrun",
    partition: PartitionOpt = None,
    gpus_per_node: GpusPerNodeOpt = None,
    time_limit: TimeOpt = None,
    slurm_array_parallelism: ArrayParallelismOpt = None,
    cpus_per_task: CpusOpt = None,
    mem_gb: MemOpt = None,
    slurm_arg: SlurmArgOpt = None,
    slurm_setup: SlurmSetupOpt = None,
    wait: WaitOpt = None,
    sweeps_dirs: SweepsOpt = None,
):
    """One set of arms across model sizes: each size an ordinary sweep on its own Chinchilla budget with the
    same paired seeds; `harness report` gives the effect's trend with size and a prediction."""
    from harness.planning.request import seed_values, with_data

    library = definitions(sweeps_dirs)
    cluster = cluster_options(launcher, partition, gpus_per_node, time_limit, slurm_array_parallelism, cpus_per_task,
                              mem_gb, slurm_arg, slurm_setup, wait)
    backend = backend_for(cluster)
    how = Execution.checked(retries, jobs, log, backend)
    adaptive = adaptive_settings(until_decided, max_seeds, min_seeds, margin, alpha)
    chosen = seed_values(seeds, seed_list, adaptive=adaptive)
    if sizes is not None and (rungs, smallest, largest) != (None, None, None):
        raise UserError("--sizes names the rungs; --rungs, --smallest and --largest choose them: give one or the other")
    spacing = {k: v for k, v in (("rungs", rungs), ("smallest", smallest), ("largest", largest)) if v is not None}
    from harness.planning.ladder import LadderRequest, build_ladder  # torch, scipy: after the checks of the options

    request = LadderRequest(arms=tuple(arms), seeds=tuple(chosen), preset=preset,
                            sets=with_data(parse_sets(sets), data), sizes=sizes, target=target, name=name,
                            adaptive=adaptive, **spacing)
    processes = cluster.processes(nproc, 1, 0, "")
    ladder = build_ladder(request, processes.world_size, processes.uses_gpus(), results, library)
    return launch_ladder(ladder, processes, backend, how, dry_run, console)

