"""The `harness` command line (Typer). Every bad input ends in one line on stderr and exit code 2.

Argument parsing only: each command declares its options (their help is the documentation) and calls
the library. About 560 lines because there are twelve commands, not because it holds logic.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Annotated, Optional

import functools

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness import config as cfgmod
from harness.bounds import check_int
from harness.errors import UserError
from harness.files import environment_failure
from harness.placement import parse_jobs

app = typer.Typer(help="Seed-sweep benchmarking for from-scratch GPT-2 training: did this change "
                       "really make the model better, or is it noise?",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(width=None if sys.stdout.isatty() else 160)  # logs and CI get untruncated tables
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 300)

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="Preset name (see `harness list`).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override any config key for every arm, e.g. --set lr=1e-3 (repeatable).")]


def a_path(text: str | Path) -> Path:
    """A path option's value: an empty one is refused, not taken as the current folder."""
    if isinstance(text, Path):  # a default
        return text
    if not text.strip():
        raise typer.BadParameter("an empty path; give a folder (use . for the current one)")
    return Path(text)


ResultsOpt = Annotated[Path, typer.Option("--results", help="Results folder.", parser=a_path)]
TokensOpt = Annotated[Optional[int], typer.Option(
    "--tokens", help="Fixed token budget for every arm (rounded up to whole global batches).")]
DataOpt = Annotated[Optional[str], typer.Option(
    "--data", help="Training data for every arm (shorthand for --set data=PATH): 'shakespeare', a text "
                   "file or folder, or a folder of shards such as `harness data prepare` writes.")]
LogOpt = Annotated[str, typer.Option(
    "--log", help="'tensorboard': also write loss curves to RESULTS/tensorboard/<sweep>/<run_id> "
                  "(needs harness\\[tensorboard]); 'none' (default).")]
VaryOpt = Annotated[Optional[str], typer.Option(
    "--vary", help="Vary only this random stream with the seed (init, data or dropout); the other two take seed "
                   "0's values. For noise studies by hand (harness noise does it for you).")]
InitSeedOpt = Annotated[Optional[int], typer.Option("--init-seed", help="Fix the initial weights' seed for every run.")]
DataSeedOpt = Annotated[Optional[int], typer.Option("--data-seed", help="Fix the data order's seed for every run.")]
DropoutSeedOpt = Annotated[Optional[int], typer.Option("--dropout-seed", help="Fix the dropout masks' seed for every run.")]
BudgetOpt = Annotated[str, typer.Option(
    "--budget", help="'baseline': every arm trains on the baseline's Chinchilla budget (default, "
                     "as the seed author did); 'own': each arm on its own Chinchilla count.")]


def command(name: str, group: typer.Typer = app):
    """Register a sub-command of `group` whose UserErrors become one red line and exit code 2, and
    whose Ctrl-C becomes exit code 130 without a traceback; an int return value becomes the exit code."""
    def register(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                for key, value in kwargs.items():  # every number a user gives is bounded before use
                    if isinstance(value, int) and not isinstance(value, bool):
                        check_int(key, value)
                    if isinstance(value, float) and not math.isfinite(value):
                        raise UserError(f"--{key.replace('_', '-')} {value}: must be a finite number")
                rv = fn(*args, **kwargs)
            except UserError as err:
                err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except OSError as err:  # the machine's failure (disk full, permissions) where no write wrapped it
                if not environment_failure(err):
                    raise
                where = f" ({err.filename})" if getattr(err, "filename", None) else ""
                err_console.print(f"[red]error:[/red] {escape(err.strerror or str(err))}{escape(where)}; what is "
                                  "recorded is intact: free space (or fix permissions) and run the same command again",
                                  highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                err_console.print("interrupted", highlight=False)
                raise typer.Exit(130) from None
            if isinstance(rv, int) and rv:
                raise typer.Exit(rv)
        return group.command(name)(wrapper)
    return register


def positive(value: int | None, name: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{name} must be >= 1, got {value}")


def parse_sets(items: list[str] | None) -> dict:
    return dict(cfgmod.parse_set(item) for item in items or [])


@command("list")
def list_cmd(keys: Annotated[bool, typer.Option("--keys", help="Also list every config key and its default.")] = False):
    """Presets and interventions, with one-line descriptions."""
    table = Table(title="presets", show_lines=False)
    table.add_column("preset", style="bold")
    table.add_column("description")
    for name in cfgmod.preset_names():
        table.add_row(name, cfgmod.load_preset(name).description)
    console.print(table)
    table = Table(title="interventions (combine with '+', e.g. qkv_bias+no_dropout)")
    table.add_column("intervention", style="bold")
    table.add_column("sets")
    table.add_column("description")
    for name in cfgmod.intervention_names():
        iv = cfgmod.load_intervention(name)
        table.add_row(name, ", ".join(f"{k}={v}" for k, v in iv.overrides.items()) or "-", iv.description)
    console.print(table)
    if keys:
        table = Table(title=escape("config keys (--set KEY=VALUE, or [set] in an intervention TOML)"))
        for col in ("key", "group", "default", "meaning"):
            table.add_column(col)
        for name, group, default, doc in cfgmod.config_keys():
            table.add_row(name, group, repr(default), doc)
        console.print(table)


@command("chinchilla")
def chinchilla_cmd(
    arms: Annotated[Optional[list[str]], typer.Argument(help="Arms (interventions, '+' to combine); default: baseline.")] = None,
    preset: PresetOpt = "gpt2-small",
    nproc: Annotated[int, typer.Option(help="Processes (GPUs) per node.")] = 8,
    nnodes: Annotated[int, typer.Option(help="Nodes.")] = 1,
    tokens_per_param: Annotated[Optional[float], typer.Option(help="Tokens per parameter (default: the preset's, 20).")] = None,
    sets: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list instead of a table.")] = False,
):
    """Chinchilla token budgets: tokens-per-param x params, rounded UP to whole global batches."""
    from harness.budget import chinchilla
    positive(nproc, "--nproc")
    positive(nnodes, "--nnodes")
    overrides = parse_sets(sets)
    if tokens_per_param is not None:
        overrides["tokens_per_param"] = cfgmod.coerce("tokens_per_param", float(tokens_per_param), "--tokens-per-param")
    rows = [chinchilla(cfgmod.resolve(preset, arm, overrides), nproc * nnodes).as_dict()
            for arm in (arms or [cfgmod.BASELINE])]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title=f"Chinchilla budgets: preset {preset}, {nproc * nnodes} process(es)")
    for col in ("arm", "params", "non-embedding", "raw tokens", "tokens", "steps", "tokens/step"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for r in rows:
        table.add_row(r["arm"], f"{r['params']:,}", f"{r['non_embedding_params']:,}", f"{r['raw_tokens']:,}",
                      f"{r['tokens']:,}", f"{r['steps']:,}", f"{r['tokens_per_step']:,}")
    console.print(table)


@command("run")
def run_cmd(
    arm: Annotated[str, typer.Argument(help="Arm: 'baseline', an intervention, or several joined by '+'.")] = cfgmod.BASELINE,
    seed: Annotated[int, typer.Option(help="Run seed (derives init, data-order and dropout seeds).")] = 0,
    preset: PresetOpt = "tiny",
    nproc: Annotated[Optional[int], typer.Option(help="Processes per node (default: GPUs, else 1).")] = None,
    sets: SetOpt = None,
    tokens: TokensOpt = None,
    budget: BudgetOpt = "baseline",
    results: ResultsOpt = Path("results"),
    sweep: Annotated[str, typer.Option(help="Sweep name to record the run under.")] = "adhoc",
    nnodes: Annotated[int, typer.Option(help="Nodes (torchrun --nnodes).")] = 1,
    node_rank: Annotated[int, typer.Option(help="This node's rank (torchrun --node-rank).")] = 0,
    rdzv_endpoint: Annotated[str, typer.Option(help="host:port of the c10d rendezvous (multi-node).")] = "",
    data: DataOpt = None,
    log: LogOpt = "none",
    vary: VaryOpt = None,
    init_seed: InitSeedOpt = None,
    data_seed: DataSeedOpt = None,
    dropout_seed: DropoutSeedOpt = None,
):
    """One exact, deterministic training run under torchrun, recorded in the results store."""
    from harness.launch import Launcher
    from harness.plan import Plan
    from harness.tblog import check_log

    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    tensorboard = check_log(log)
    plan = Plan.build(arms=[arm], seeds=[seed], preset=preset, sets=parse_sets(sets), data=data, tokens=tokens,
                      budget=budget, sweep=sweep, include_baseline=False,
                      launcher=Launcher.checked(nproc, nnodes, node_rank, rdzv_endpoint), results=results,
                      streams=streams(vary, init_seed, data_seed, dropout_seed))
    return 0 if run_here(plan, retries=0, tensorboard=tensorboard).all_completed else 1


@command("sweep")
def sweep_cmd(
    arms: Annotated[list[str], typer.Argument(
        help="Interventions to compare with the baseline ('+' combines), or one sweep file (TOML).")],
    seeds: Annotated[Optional[int], typer.Option(help="Seeds 0..N-1 for every arm (default 5).")] = None,
    seed_list: Annotated[Optional[str], typer.Option(help="Explicit seeds, e.g. 7,11,13.")] = None,
    preset: Annotated[Optional[str], typer.Option("--preset", "-p", help="Preset name (default tiny).")] = None,
    nproc: Annotated[Optional[int], typer.Option(help="Processes per node per run (default: GPUs, else 1).")] = None,
    sets: SetOpt = None,
    tokens: TokensOpt = None,
    budget: Annotated[Optional[str], typer.Option(
        "--budget", help="'baseline' (default): every arm trains on the baseline's Chinchilla budget, as the "
                         "seed author did; 'own': each arm on its own Chinchilla count.")] = None,
    results: ResultsOpt = Path("results"),
    name: Annotated[Optional[str], typer.Option(help="Sweep name (default: preset and arms).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (runs, budgets, estimated time) and stop.")] = False,
    until_decided: Annotated[bool, typer.Option(
        "--until-decided", help="Adaptive: run seeds in rounds and stop giving an arm seeds once a sequential test "
                                "(valid under optional stopping) decides it better, worse or equivalent.")] = False,
    max_seeds: Annotated[Optional[int], typer.Option(help="--until-decided: seeds per arm at most (default 20).")] = None,
    min_seeds: Annotated[Optional[int], typer.Option(help="--until-decided: seeds before any decision (default 3).")] = None,
    margin: Annotated[Optional[float], typer.Option(
        help="--until-decided: also decide 'equivalent' when the difference lies within +-margin.")] = None,
    alpha: Annotated[Optional[float], typer.Option(
        help="--until-decided: family-wise error across arms (default 0.05).")] = None,
    retries: Annotated[int, typer.Option(help="Retries of a failed run.")] = 1,
    jobs: Annotated[str, typer.Option(
        help="Runs at once on this machine, each on its own GPUs or CPU cores; auto: GPUs // --nproc on CUDA, "
             "cores // (--nproc x threads per process) on the CPU. Placement never changes the results.")] = "auto",
    nnodes: Annotated[int, typer.Option(help="Nodes per run (torchrun --nnodes).")] = 1,
    node_rank: Annotated[int, typer.Option(help="This node's rank (torchrun --node-rank).")] = 0,
    rdzv_endpoint: Annotated[str, typer.Option(help="host:port of the c10d rendezvous (multi-node).")] = "",
    data: DataOpt = None,
    log: LogOpt = "none",
    vary: VaryOpt = None,
    init_seed: InitSeedOpt = None,
    data_seed: DataSeedOpt = None,
    dropout_seed: DropoutSeedOpt = None,
    launcher: Annotated[str, typer.Option(
        help="torchrun: run here, one run after another (default); slurm: submit each run as a Slurm job "
             "(one job array per sweep) through submitit; local: the same jobs through submitit's local executor.")] = "torchrun",
    partition: Annotated[Optional[str], typer.Option(help="Slurm partition.")] = None,
    gpus_per_node: Annotated[Optional[int], typer.Option(help="Slurm/local: GPUs (torchrun processes) per node of each run; 0 for CPU-only jobs "
        "(Slurm default: 1 where the partition has GPUs, else 0).")] = None,
    time_limit: Annotated[Optional[str], typer.Option(
        "--time", help="Slurm/local: each job's time limit (HH:MM:SS, D-HH:MM:SS, 90m, 4h; slurm default 24:00:00); "
                       "a job that reaches it is requeued and resumes from its checkpoint.")] = None,
    slurm_array_parallelism: Annotated[Optional[int], typer.Option(help="Slurm: runs of the array at once (default: all).")] = None,
    cpus_per_task: Annotated[Optional[int], typer.Option(help="Slurm: CPUs per node of each job.")] = None,
    mem_gb: Annotated[Optional[float], typer.Option(help="Slurm: memory per node of each job, GB.")] = None,
    slurm_arg: Annotated[Optional[list[str]], typer.Option(
        help="Slurm: any other sbatch option as KEY=VALUE, e.g. account=myproj, qos=high (repeatable).")] = None,
    slurm_setup: Annotated[Optional[list[str]], typer.Option(
        help="Slurm: a shell line to run before each job, e.g. 'module load cuda' (repeatable).")] = None,
    wait: Annotated[Optional[bool], typer.Option(
        "--wait/--no-wait", help="Slurm/local: wait for the jobs and print each outcome (default: local waits, "
                                 "slurm returns once submitted).")] = None,
):
    """Baseline + each intervention x N seeds, matched budgets, seed-major, resumable."""
    from harness.plan import Plan, print_plan
    from harness.tblog import check_log

    if retries < 0:
        raise UserError(f"--retries must be >= 0, got {retries}")
    jobs_asked = parse_jobs(jobs)
    adaptive = adaptive_settings(until_decided, max_seeds, min_seeds, margin, alpha)
    cluster = cluster_options(launcher, partition, gpus_per_node, time_limit, slurm_array_parallelism,
                              cpus_per_task, mem_gb, slurm_arg, slurm_setup, wait)
    if cluster.launcher != "torchrun" and jobs_asked is not None:
        raise UserError(f"--jobs is for runs on this machine; --launcher {cluster.launcher} runs jobs in parallel "
                        "by itself (--slurm-array-parallelism)")
    tensorboard = check_log(log)
    plan = Plan.for_sweep(arms, seeds, seed_list, preset, parse_sets(sets), tokens, budget, name,
                          cluster.run_launcher(nproc, nnodes, node_rank, rdzv_endpoint), results, data, adaptive,
                          streams(vary, init_seed, data_seed, dropout_seed))
    jobs_here = plan.launcher.jobs(jobs_asked) if cluster.launcher == "torchrun" else 1
    print_plan(plan, console, jobs_here)
    if dry_run:
        return 0
    if cluster.launcher != "torchrun":
        from harness.slurm import submit_plan

        return submit_plan(plan, cluster, retries, console, tensorboard=tensorboard)
    outcome = run_here(plan, retries=retries, tensorboard=tensorboard, jobs=jobs_here)
    console.print(f"results: {plan.store.runs_path} (sweep {plan.sweep!r}); report with:\n"
                  f"  harness report --sweep {plan.sweep} --results {results}")
    return 0 if outcome.all_completed else 1


data_app = typer.Typer(help="Prepare training data: tokenize a dataset into uint16 shards.",
                       no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
app.add_typer(data_app, name="data")


def cluster_options(launcher: str, partition, gpus_per_node, time_limit, array_parallelism, cpus_per_task,
                    mem_gb, slurm_arg, slurm_setup, wait):
    from harness.slurm import ClusterOptions

    opts = ClusterOptions(launcher, partition, gpus_per_node, time_limit, array_parallelism, cpus_per_task,
                          mem_gb, tuple(slurm_arg or ()), tuple(slurm_setup or ()), wait)
    opts.check()
    return opts.with_partition_gpus()


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
    nproc: Annotated[Optional[int], typer.Option(help="Processes per run (default: GPUs, else 1).")] = None,
    jobs: Annotated[str, typer.Option(help="Runs at once on this machine (as harness sweep --jobs).")] = "auto",
    retries: Annotated[int, typer.Option(help="Retries of a failed run.")] = 1,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan (runs, budgets) and stop.")] = False,
    launcher: Annotated[str, typer.Option(help="torchrun (here), local or slurm, as harness sweep --launcher.")] = "torchrun",
    partition: Annotated[Optional[str], typer.Option(help="Slurm partition.")] = None,
    time_limit: Annotated[Optional[str], typer.Option("--time", help="Slurm/local: each job's time limit.")] = None,
):
    """Where seed noise comes from: runs that vary one random stream at a time (initial weights, data
    order, dropout masks), all three, and none; `harness report` decomposes the test loss's variance."""
    from harness.plan import Plan, print_plan

    if retries < 0:
        raise UserError(f"--retries must be >= 0, got {retries}")
    jobs_asked = parse_jobs(jobs)
    cluster = cluster_options(launcher, partition, None, time_limit, None, None, None, None, None, None)
    if cluster.launcher != "torchrun" and jobs_asked is not None:
        raise UserError(f"--jobs is for runs on this machine; --launcher {cluster.launcher} runs jobs in parallel by itself")
    plan = Plan.noise_study(preset, arm, seeds, replicates, parse_sets(sets), tokens,
                            cluster.run_launcher(nproc, 1, 0, ""), results, name, data)
    jobs_here = plan.launcher.jobs(jobs_asked) if cluster.launcher == "torchrun" else 1
    print_plan(plan, console, jobs_here)
    if dry_run:
        return 0
    if cluster.launcher != "torchrun":
        from harness.slurm import submit_plan

        return submit_plan(plan, cluster, retries, console)
    outcome = run_here(plan, retries=retries, tensorboard=False, jobs=jobs_here)
    console.print(f"results: {plan.store.runs_path} (study {plan.sweep!r}); decompose the noise with:\n"
                  f"  harness report --sweep {plan.sweep} --results {results}")
    return 0 if outcome.all_completed else 1


def streams(vary: str | None, init_seed: int | None, data_seed: int | None, dropout_seed: int | None):
    """--vary STREAM and --init-seed/--data-seed/--dropout-seed as (vary, fixed sub-seeds)."""
    from harness.plan import STREAMS

    if vary is not None and vary not in STREAMS:
        raise UserError(f"--vary {vary!r}: allowed: {', '.join(STREAMS)}")
    fixed = {name: value for name, value in (("init", init_seed), ("data", data_seed), ("dropout", dropout_seed))
             if value is not None}
    for name, value in fixed.items():
        if not 0 <= value < 2**31:
            raise UserError(f"--{name}-seed {value}: give a seed from 0 to {2**31 - 1}")
    if vary is not None and vary in fixed:
        raise UserError(f"--vary {vary} and --{vary}-seed contradict each other; give one")
    return (vary or "", fixed)


def adaptive_settings(until_decided: bool, max_seeds, min_seeds, margin, alpha):
    """The adaptive sweep's settings, or None; its options without --until-decided are refused."""
    from harness.adaptive import Adaptive

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


def run_here(plan, retries: int, tensorboard: bool, jobs: int = 1):
    """Execute a plan on this machine; with --log tensorboard, live curves and then test losses."""
    from harness.sweep import execute_plan

    if not tensorboard:
        return execute_plan(plan, console, retries=retries, jobs=jobs)
    from harness.tblog import TensorBoardLog

    tb = TensorBoardLog(plan.store.root)
    try:
        return execute_plan(plan, console, retries=retries, jobs=jobs, on_progress=tb.progress)
    finally:
        tb.from_store(plan.store, plan.specs)


@command("prepare", data_app)
def data_prepare_cmd(
    paths: Annotated[Optional[list[Path]], typer.Argument(
        help="Local files or folders: JSON lines (.jsonl/.json), Parquet (.parquet) or text (.txt/.md, one "
             "document per file), all of one kind.", show_default=False)] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder (train.bin, test.bin, manifest.json).", parser=a_path,
                                                show_default=False)] = None,
    hf: Annotated[Optional[str], typer.Option("--hf", help="A Hugging Face dataset id, streamed through the "
                                              "`datasets` library, e.g. HuggingFaceFW/fineweb.")] = None,
    hf_name: Annotated[Optional[str], typer.Option("--name", help="The dataset's configuration, e.g. sample-10BT.")] = None,
    split: Annotated[str, typer.Option(help="The dataset split to read.")] = "train",
    revision: Annotated[Optional[str], typer.Option(help="A dataset revision (commit, tag or branch) to pin.")] = None,
    text_field: Annotated[str, typer.Option("--field", help="The record field that holds each document's text.")] = "text",
    tokenizer: Annotated[str, typer.Option(help="Tokenizer: gpt2 or bytes (must match the preset's).")] = "gpt2",
    test_tokens: Annotated[int, typer.Option(help="Held-out test tokens: the first whole documents up to at least this.")] = 19_660_800,
    train_tokens: Annotated[Optional[int], typer.Option(help="Stop after this many train tokens (whole documents; default: all).")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace what --out holds instead of resuming it.")] = False,
):
    """Tokenize a dataset into uint16 shards with a held-out test set; resumable (run it again)."""
    from harness.prepare import Source, prepare

    if out is None:
        raise UserError("give the output folder with --out DIR")
    if hf and paths:
        raise UserError("give local files (PATH...) or --hf NAME, not both")
    if hf:
        source = Source.hub(hf, hf_name, split, revision, text_field)
    else:
        if hf_name or revision:
            raise UserError("--name and --revision belong to --hf NAME")
        source = Source.local(list(paths or []), text_field)
    try:
        prepare(source, out, tokenizer, test_tokens, train_tokens, overwrite=overwrite, console=console)
    except KeyboardInterrupt:
        return 130
    console.print(f"train on it with: harness sweep ARMS --data {out} (tokenizer {tokenizer})", highlight=False)
    return 0


@command("export")
def export_cmd(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix, or the run's folder).")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.", parser=a_path)],
    fmt: Annotated[str, typer.Option("--format", help="'hf': a Hugging Face transformers GPT-2 folder.")] = "hf",
    results: ResultsOpt = Path("results"),
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace what --out holds.")] = False,
    check: Annotated[Optional[bool], typer.Option(
        "--check/--no-check", help="Load the export with transformers and compare logits (default: when "
                                   "transformers is installed).")] = None,
):
    """Export a run's checkpoint so transformers' GPT2LMHeadModel loads it."""
    from harness.export import export_run, locate_run

    ref = locate_run(run, results)
    record = export_run(ref, out, fmt, overwrite=overwrite, check=check)
    step, planned = record["checkpoint_step"], record["planned_steps"]
    console.print(f"exported run {ref.run_id} (arm {record['arm']}, seed {record['seed']}, step {step:,}) to {out}",
                  highlight=False)
    if planned and step is not None and step < planned:
        console.print(f"note: the run has not finished: this is its checkpoint at step {step:,} of {planned:,}",
                      highlight=False)
    if record["max_abs_logit_diff"] is not None:
        console.print(f"checked: GPT2LMHeadModel reproduces harness's logits (max abs difference "
                      f"{record['max_abs_logit_diff']:.2e})", highlight=False)
    else:
        console.print("not checked (transformers is not installed: pip install 'harness[hf]')", highlight=False,
                      markup=False)
    console.print(f"load it with: transformers.GPT2LMHeadModel.from_pretrained({str(out)!r})", highlight=False)


@command("generate")
def generate_cmd(
    run: Annotated[str, typer.Argument(help="Run id (or a unique prefix, or the run's folder).")],
    prompt: Annotated[str, typer.Argument(help="Text to continue.")] = "Every effort moves you",
    max_new_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 40,
    temperature: Annotated[float, typer.Option(help="Softmax temperature; 0 = greedy (argmax).")] = 0.0,
    top_k: Annotated[Optional[int], typer.Option(help="Sample only among the k most likely tokens.")] = None,
    seed: Annotated[int, typer.Option(help="Sampling seed (sample k uses seed + k).")] = 123,
    samples: Annotated[int, typer.Option(help="How many continuations.")] = 1,
    stop_at_eot: Annotated[bool, typer.Option("--stop-at-eot/--no-stop-at-eot", help="Stop at <|endoftext|>.")] = True,
    results: ResultsOpt = Path("results"),
):
    """Sample text from a run's checkpoint (the book's generate: temperature, top-k, seed)."""
    from harness.export import locate_run
    from harness.generate import sample

    texts = sample(locate_run(run, results), prompt, max_new_tokens, temperature, top_k, seed, samples, stop_at_eot)
    for k, text in enumerate(texts):
        if samples > 1:
            print(f"--- sample {k + 1} (seed {seed + k})")
        print(text)


@command("status")
def status_cmd(
    results: ResultsOpt = Path("results"),
    sweep: Annotated[Optional[str], typer.Option(help="Only this sweep (default: every sweep in the results folder).")] = None,
    runs: Annotated[bool, typer.Option("--runs", help="Also list every run with its state and detail.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
):
    """Runs done, running, queued, failed and diverged, per arm of each sweep."""
    from harness.outputs import require_folder
    from harness.status import print_status, status_payload, sweep_names

    require_folder(results)
    if sweep is not None and sweep not in sweep_names(results):
        known = ", ".join(sweep_names(results)) or "none"
        raise UserError(f"no sweep {sweep!r} in {results} (sweeps there: {known})")
    payload = status_payload(results, sweep)
    if as_json:
        print(json.dumps(payload, indent=2, default=str))
        return 0
    if not payload:
        console.print(f"no sweeps in {results} yet", highlight=False)
        return 0
    print_status(payload, console, show_runs=runs)
    return 0


@command("report")
def report_cmd(
    results: ResultsOpt = Path("results"),
    sweep: Annotated[Optional[str], typer.Option(help="Report only this sweep (default: every sweep in the store).")] = None,
    baseline: Annotated[str, typer.Option(help="The arm every other arm is compared with.")] = cfgmod.BASELINE,
    alpha: Annotated[float, typer.Option(help="Significance level, after Holm's correction across arms.")] = 0.05,
    margin: Annotated[Optional[float], typer.Option(
        help="Equivalence margin in test loss: TOST declares 'equivalent' when the difference is within +-margin.")] = None,
    out: Annotated[Optional[Path], typer.Option(help="Markdown file (or folder) to write (default: reports/<sweep>.md).",
                                                parser=a_path)] = None,
    fmt: Annotated[str, typer.Option("--format", help="markdown (file + terminal table) or json (stdout).")] = "markdown",
    allow_mismatch: Annotated[bool, typer.Option(
        "--allow-mismatch", help="Compare arms whose budgets, presets or test sets differ (stated in the report).")] = False,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Draw the forest, curve and paired plots.")] = True,
):
    """Confidence intervals and significance tests of every arm against the baseline."""
    from harness.report import run_report

    run_report(results, sweep, baseline=baseline, alpha=alpha, margin=margin, out=out, fmt=fmt,
               allow_mismatch=allow_mismatch, console=console, plots=plots)


@command("bench")
def bench_cmd(
    preset: PresetOpt = "gpt2-small",
    arm: Annotated[str, typer.Option("--arm", help="Arm to time: an intervention, or several joined by '+'.")] = cfgmod.BASELINE,
    sets: SetOpt = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Untimed warm-up steps (and eval batches) first.")] = 5,
    steps: Annotated[int, typer.Option("--steps", help="Timed training steps (and eval batches).")] = 30,
    compare_book: Annotated[bool, typer.Option(
        "--compare-book", help="Also time the book's implementation of the same config, interleaved with ours.")] = False,
    no_compile: Annotated[bool, typer.Option("--no-compile", help="Do not torch.compile (default: the preset's compile setting).")] = False,
    results: ResultsOpt = Path("results"),
):
    """Tokens/s, step time, MFU and peak memory of the real training step and of evaluation."""
    from harness.bench import run_bench

    run_bench(preset, arm, parse_sets(sets), warmup=warmup, steps=steps, compare_book=compare_book,
              compile=False if no_compile else None, results=results,
              say=lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True))
