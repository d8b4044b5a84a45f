"""The `harness` command line (Typer). Every bad input ends in one line on stderr and exit code 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import functools

import typer
from rich.console import Console
from rich.table import Table

from harness import config as cfgmod
from harness.budget import Budget, chinchilla, fixed_budget
from harness.errors import UserError

app = typer.Typer(help="Seed-sweep benchmarking for from-scratch GPT-2 training: did this change "
                       "really make the model better, or is it noise?",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)
console = Console(width=None if sys.stdout.isatty() else 160)  # logs and CI get untruncated tables
err_console = Console(stderr=True, width=None if sys.stderr.isatty() else 300)

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help="Preset name (see `harness list`).")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override any config key for every arm, e.g. --set lr=1e-3 (repeatable).")]
ResultsOpt = Annotated[Path, typer.Option("--results", help="Results folder.")]
TokensOpt = Annotated[Optional[int], typer.Option(
    "--tokens", help="Fixed token budget for every arm (rounded up to whole global batches).")]
BudgetOpt = Annotated[str, typer.Option(
    "--budget", help="'baseline': every arm trains on the baseline's Chinchilla budget (default, "
                     "as the seed author did); 'own': each arm on its own Chinchilla count.")]


def command(name: str):
    """Register a sub-command whose UserErrors become one red line and exit code 2; an int return
    value becomes the exit code."""
    def register(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                rv = fn(*args, **kwargs)
            except UserError as err:
                err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
                raise typer.Exit(2) from None
            if isinstance(rv, int) and rv:
                raise typer.Exit(rv)
        return app.command(name)(wrapper)
    return register


def default_nproc() -> int:
    import torch
    return torch.cuda.device_count() or 1


def positive(value: int | None, name: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{name} must be >= 1, got {value}")


def parse_sets(items: list[str] | None) -> dict:
    return dict(cfgmod.parse_set(item) for item in items or [])


def plan_budget(arm_cfg: cfgmod.ArmConfig, world: int, mode: str, tokens: int | None,
                sets: dict) -> Budget:
    """The token budget of one arm under --budget/--tokens."""
    if tokens is not None:
        return fixed_budget(arm_cfg, world, tokens)
    if mode == "own":
        return chinchilla(arm_cfg, world)
    if mode != "baseline":
        raise UserError(f"--budget {mode!r}: use 'baseline' or 'own'")
    base = chinchilla(cfgmod.resolve(arm_cfg.preset, cfgmod.BASELINE, sets), world)
    return fixed_budget(arm_cfg, world, base.tokens)


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
        import dataclasses
        from model.config import ModelConfig
        table = Table(title="config keys (--set KEY=VALUE, or [set] in an intervention TOML)")
        for col in ("key", "group", "default"):
            table.add_column(col)
        for group, cls in (("model", ModelConfig), ("train", cfgmod.TrainConfig)):
            for f in dataclasses.fields(cls):
                table.add_row(f.name, group, repr(f.default))
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
):
    """One exact, deterministic training run under torchrun, recorded in the results store."""
    from harness.sweep import Plan, execute_plan

    if seed < 0:
        raise UserError(f"--seed must be >= 0, got {seed}")
    plan = Plan.build(arms=[arm], seeds=[seed], preset=preset, sets=parse_sets(sets), tokens=tokens,
                      budget=budget, sweep=sweep, include_baseline=False,
                      launcher=make_launcher(nproc, nnodes, node_rank, rdzv_endpoint), results=results)
    outcome = execute_plan(plan, console, retries=0)
    return 0 if outcome.all_completed else 1


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
    retries: Annotated[int, typer.Option(help="Retries of a failed run.")] = 1,
    nnodes: Annotated[int, typer.Option(help="Nodes per run (torchrun --nnodes).")] = 1,
    node_rank: Annotated[int, typer.Option(help="This node's rank (torchrun --node-rank).")] = 0,
    rdzv_endpoint: Annotated[str, typer.Option(help="host:port of the c10d rendezvous (multi-node).")] = "",
):
    """Baseline + each intervention x N seeds, matched budgets, seed-major, resumable."""
    from harness.sweep import Plan, execute_plan, load_sweep_file, print_plan

    file: dict = {}
    if len(arms) == 1 and (arms[0].endswith(".toml") or Path(arms[0]).is_file()):
        file = load_sweep_file(Path(arms[0]))
        arms = file["arms"]
    if seeds is not None and seed_list is not None:
        raise UserError("give --seeds or --seed-list, not both")
    if seed_list is not None:
        try:
            seed_values = [int(s) for s in seed_list.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seed-list {seed_list!r}: expected comma-separated integers, e.g. 7,11,13") from None
    elif seeds is not None or "seed_list" not in file:
        count = seeds if seeds is not None else file.get("seeds", 5)
        if count < 1:
            raise UserError(f"--seeds must be >= 1, got {count}")
        seed_values = list(range(count))
    else:
        seed_values = file["seed_list"]
    if retries < 0:
        raise UserError(f"--retries must be >= 0, got {retries}")
    plan = Plan.build(arms=arms, seeds=seed_values, preset=preset or file.get("preset", "tiny"),
                      sets=file.get("set", {}) | parse_sets(sets),
                      tokens=tokens if tokens is not None else file.get("tokens"),
                      budget=budget or file.get("budget", "baseline"), sweep=name or file.get("name"),
                      include_baseline=True, launcher=make_launcher(nproc, nnodes, node_rank, rdzv_endpoint),
                      results=results)
    print_plan(plan, console)
    if dry_run:
        return 0
    outcome = execute_plan(plan, console, retries=retries)
    console.print(f"results: {plan.store.runs_path} (sweep {plan.sweep!r}); report with:\n"
                  f"  harness report --sweep {plan.sweep} --results {results}")
    return 0 if outcome.all_completed else 1


def make_launcher(nproc: int | None, nnodes: int, node_rank: int, rdzv_endpoint: str):
    from harness.launch import Launcher

    nproc = default_nproc() if nproc is None else nproc
    positive(nproc, "--nproc")
    positive(nnodes, "--nnodes")
    if not 0 <= node_rank < nnodes:
        raise UserError(f"--node-rank must be in [0, {nnodes - 1}], got {node_rank}")
    if nnodes > 1 and not rdzv_endpoint:
        raise UserError("--nnodes > 1 needs --rdzv-endpoint HOST:PORT (the first node's address)")
    return Launcher(nproc=nproc, nnodes=nnodes, node_rank=node_rank, rdzv_endpoint=rdzv_endpoint)


def main() -> None:
    """Console entry point."""
    app()
