"""Sweeps: baseline + interventions x seeds with matched budgets, run seed-major, resumable.

A Plan is fixed before anything trains: every arm's resolved config and token budget, the data
check, and the list of runs in seed-major order (seed 0 of every arm, then seed 1, ...) so that a
sweep stopped half-way is still balanced and paired. Running a plan skips what the store already
holds for this sweep, resumes interrupted runs from their checkpoints, retries a failed run once,
and leaves runs that another sweep process holds to that process (waiting for them at the end).
"""

from __future__ import annotations

import math
import re
import shlex
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness import config as cfgmod
from harness.budget import Budget, chinchilla, fixed_budget
from harness.errors import UserError
from harness.launch import Launcher, ctrl_c_latch, execute
from harness.plan import RunSpec, run_spec
from harness.progress import RunProgress
from harness.results import ResultsStore, atomic_write_json

SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+,=-]{0,199}")
FINAL = ("completed", "diverged")  # outcomes that are not retried: training is deterministic


@dataclass
class Plan:
    sweep: str
    preset: str
    arms: list[str]
    seeds: list[int]
    budgets: dict[str, Budget]
    specs: list[RunSpec]
    launcher: Launcher
    store: ResultsStore
    notes: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, arms: list[str], seeds: list[int], preset: str, sets: dict[str, Any], tokens: int | None,
              budget: str, sweep: str | None, include_baseline: bool, launcher: Launcher,
              results: Path) -> "Plan":
        if not seeds:
            raise UserError("no seeds: give --seeds N (N >= 1) or --seed-list 0,1,2")
        if any(s < 0 for s in seeds):
            raise UserError(f"seeds must be >= 0, got {seeds}")
        if budget not in ("baseline", "own"):
            raise UserError(f"--budget {budget!r}: use 'baseline' or 'own'")
        arms = list(dict.fromkeys(arms))
        if include_baseline and cfgmod.BASELINE not in arms:
            arms.insert(0, cfgmod.BASELINE)
        configs = {arm: cfgmod.resolve(preset, arm, sets) for arm in arms}
        world = launcher.world_size
        base_tokens = chinchilla(cfgmod.resolve(preset, cfgmod.BASELINE, sets), world).tokens
        budgets = {}
        for arm, cfg in configs.items():
            if tokens is not None:
                budgets[arm] = fixed_budget(cfg, world, tokens)
            elif budget == "own":
                budgets[arm] = chinchilla(cfg, world)
            else:
                budgets[arm] = fixed_budget(cfg, world, base_tokens)
        notes = check_data(configs, budgets)
        name = sweep or default_sweep_name(preset, arms)
        if not SWEEP_NAME.fullmatch(name):
            raise UserError(f"sweep name {name!r}: use letters, digits and . _ + , = - (it names files), "
                            "starting with a letter or digit")
        specs = [run_spec(configs[arm], seed, budgets[arm], name, world) for seed in seeds for arm in arms]
        store = ResultsStore(results)
        return cls(name, preset, arms, list(seeds), budgets, specs, launcher, store, notes)


def default_sweep_name(preset: str, arms: list[str]) -> str:
    named = [a for a in arms if a != cfgmod.BASELINE] or [cfgmod.BASELINE]
    return f"{preset}-{','.join(named)}"


def check_data(configs: dict[str, cfgmod.ArmConfig], budgets: dict[str, Budget]) -> list[str]:
    """Build (or verify) each corpus once in this process and check every arm's budget fits it."""
    from harness.data import check_epochs, load_corpus

    notes = []
    for arm, cfg in configs.items():
        corpus = load_corpus(cfg.train.data, cfg.train.tokenizer)
        if corpus.vocab_size > cfg.model.vocab_size:
            raise UserError(f"arm {arm!r}: tokenizer {cfg.train.tokenizer!r} has {corpus.vocab_size:,} tokens but "
                            f"the model's vocab_size is {cfg.model.vocab_size:,}")
        epochs = check_epochs(budgets[arm].tokens, len(corpus.train), cfg.model.context_length, cfg.train.allow_repeat)
        if epochs > 1:
            notes.append(f"{arm}: the budget repeats the training data {epochs:.2f} times (allow_repeat)")
    return list(dict.fromkeys(notes))


def load_sweep_file(path: Path) -> dict[str, Any]:
    """A sweep file: name, preset, arms, seeds or seed_list, budget, tokens, [set]."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: malformed TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read sweep file {path}: {err}") from None
    allowed = {"name", "description", "preset", "arms", "seeds", "seed_list", "budget", "tokens", "set"}
    unknown = set(data) - allowed
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(allowed))}")
    arms = data.get("arms")
    if not isinstance(arms, list) or not arms or not all(isinstance(a, str) for a in arms):
        raise UserError(f"{path}: 'arms' must be a non-empty list of arm names")
    kinds = {"name": str, "preset": str, "budget": str, "seeds": int, "tokens": int, "seed_list": list, "set": dict}
    for key, kind in kinds.items():
        if key in data and (not isinstance(data[key], kind) or isinstance(data[key], bool)):
            raise UserError(f"{path}: '{key}' must be {kind.__name__}, got {data[key]!r}")
    seed_list = data.get("seed_list", [])
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seed_list):
        raise UserError(f"{path}: 'seed_list' must be a list of integers, got {seed_list!r}")
    sets = {k: cfgmod.coerce(k, v, f"{path} [set]") for k, v in data.get("set", {}).items()}
    return data | {"name": data.get("name", path.stem), "set": sets}


def estimate_seconds(plan: Plan) -> float | None:
    """Wall time from tokens/s of earlier runs of this preset on this world size in the store."""
    frame = plan.store.runs().to_pandas()
    past = frame[(frame["preset"] == plan.preset) & (frame["world_size"] == plan.launcher.world_size)
                 & (frame["status"] == "completed")]
    if past.empty:
        return None
    rate = float(past["tokens_per_s"].median())
    overhead = float((past["wall_time_s"] - past["tokens_seen"] / past["tokens_per_s"]).median()) + 5.0
    return sum(s.tokens / rate + overhead for s in plan.specs)


def print_plan(plan: Plan, console: Console) -> None:
    table = Table(title=f"sweep {plan.sweep}: preset {plan.preset}, seeds {format_seeds(plan.seeds)}, "
                        f"{plan.launcher.world_size} process(es) per run")
    for col in ("arm", "params", "tokens", "steps", "tokens/step", "runs"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for arm in plan.arms:
        b = plan.budgets[arm]
        table.add_row(arm, f"{b.params:,}", f"{b.tokens:,}", f"{b.steps:,}", f"{b.tokens_per_step:,}", str(len(plan.seeds)))
    console.print(table)
    for note in plan.notes:
        console.print(f"note: {note}")
    est = estimate_seconds(plan)
    total_tokens = sum(s.tokens for s in plan.specs)
    when = f"about {format_duration(est)} (from earlier runs in {plan.store.root})" if est else \
        "unknown until a run of this preset has completed here"
    console.print(f"{len(plan.specs)} runs, {total_tokens:,} training tokens in all; estimated time {when}")


def format_seeds(seeds: list[int]) -> str:
    if seeds == list(range(len(seeds))):
        return f"0..{len(seeds) - 1}"
    return ",".join(map(str, seeds))


def format_duration(seconds: float) -> str:
    minutes, s = divmod(int(math.ceil(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s"


@dataclass
class SweepOutcome:
    done: dict[str, str] = field(default_factory=dict)  # run_id -> final status

    def record(self, spec: RunSpec, status: str) -> None:
        self.done[spec.run_id] = status

    @property
    def all_completed(self) -> bool:
        return all(status == "completed" for status in self.done.values())


def _status(store: ResultsStore, spec: RunSpec, attempts_allowed: int) -> str | None:
    """The run's final status in this sweep, or None when it still has to run."""
    frame = store.runs().to_pandas()
    rows = frame[(frame["sweep"] == spec.sweep) & (frame["run_id"] == spec.run_id)]
    final = rows[rows["status"].isin(FINAL)]
    if not final.empty:
        return str(final["status"].iloc[0])
    if len(rows) >= attempts_allowed:
        return "failed"
    return None


def save_plan(plan: Plan) -> None:
    """results/sweeps/<name>.json: what the sweep intends to run, so status can show what is queued."""
    folder = plan.store.root / "sweeps"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_json(folder / f"{plan.sweep}.json", {
        "sweep": plan.sweep, "preset": plan.preset, "arms": plan.arms, "seeds": plan.seeds,
        "world_size": plan.launcher.world_size,
        "budgets": {arm: b.as_dict() for arm, b in plan.budgets.items()},
        "runs": [{"run_id": s.run_id, "arm": s.arm, "seed": s.seed, "config_hash": s.config_hash} for s in plan.specs],
    })


def continue_command() -> str:
    return " ".join(shlex.quote(a) for a in ["harness", *sys.argv[1:]])


def execute_plan(plan: Plan, console: Console, retries: int = 1,
                 on_progress: Callable[[RunSpec, dict[str, Any]], None] | None = None) -> SweepOutcome:
    """Run every run of the plan that the store does not hold yet; Ctrl-C stops cleanly.

    on_progress(spec, progress_dict) also gets every PROGRESS line (e.g. --log tensorboard)."""
    plan.store.ensure_writable()
    save_plan(plan)
    attempts_allowed = 1 + retries
    outcome = SweepOutcome()
    pending = list(plan.specs)
    try:
        with RunProgress(console, len(plan.specs)) as progress, ctrl_c_latch() as pressed:
            while pending:
                busy = []
                for spec in pending:
                    label = f"{spec.arm} seed {spec.seed}"
                    status = _status(plan.store, spec, attempts_allowed)
                    if status is not None:
                        outcome.record(spec, status)
                        progress.finish_run(f"{describe(plan.store, spec, status, label)} (already in the store)")
                        continue
                    while status is None:
                        progress.start_run(label, spec.steps)
                        watch = progress.update if on_progress is None else \
                            (lambda p, s=spec: (progress.update(p), on_progress(s, p)))
                        result = execute(spec, plan.store, plan.launcher, on_progress=watch,
                                         should_run=lambda s=spec: _status(plan.store, s, attempts_allowed) is None)
                        if pressed.is_set():
                            raise KeyboardInterrupt
                        if result is None:  # another sweep process holds this run: come back to it
                            busy.append(spec)
                            break
                        if result.row and result.row["status"] == "failed":
                            console.print(f"[yellow]{escape(label)} failed[/yellow]: {escape(result.row['reason'])} "
                                          f"(log: {escape(str(result.log))})")
                        if plan.launcher.records:
                            status = _status(plan.store, spec, attempts_allowed)
                        else:  # a non-first node of a multi-node run: node 0 records
                            status = result.row["status"] if result.row else "completed"
                    if status is not None:
                        outcome.record(spec, status)
                        progress.finish_run(describe(plan.store, spec, status, label))
                pending = busy
                if pending:
                    time.sleep(2.0)
    except KeyboardInterrupt:
        frame = plan.store.runs().to_pandas()
        finished = frame[(frame["sweep"] == plan.sweep) & frame["status"].isin(FINAL)]["run_id"]
        done = len(set(finished) & {s.run_id for s in plan.specs})
        console.print(f"\nstopped: {done} of {len(plan.specs)} runs done in sweep {plan.sweep}; "
                      f"continue with: {continue_command()}")
        raise SystemExit(130) from None
    return outcome


def describe(store: ResultsStore, spec: RunSpec, status: str, label: str) -> str:
    frame = store.runs().to_pandas()
    rows = frame[(frame["sweep"] == spec.sweep) & (frame["run_id"] == spec.run_id)]
    if status == "completed" and not rows.empty:
        row = rows[rows["status"] == "completed"].iloc[0]
        return (f"{label}: test loss {row['test_loss']:.6f} ({row['tokens_seen']:,} tokens, "
                f"{row['wall_time_s']:.1f}s, {row['tokens_per_s']:,.0f} tok/s)")
    if not rows.empty:
        return f"{label}: {status}: {rows['reason'].iloc[-1]} (log: {rows['run_dir'].iloc[-1]}/log.txt)"
    return f"{label}: {status}"
