"""The plan of a sweep: every arm's resolved config and token budget, and its runs in seed-major order.

A Plan is fixed before anything trains. Building it resolves each arm's config once (preset, then
the arm's interventions, then --set and --data), computes the budgets, checks every corpus and
tokenizer against every arm, and lists the runs seed-major (seed 0 of every arm, then seed 1, ...)
so that a sweep stopped half-way is still balanced and paired. Also here: the sweep file format,
how --seeds/--seed-list/a sweep file become a seed list, and the plan as written to disk
(RESULTS/sweeps/<sweep>.json, which `harness status` reads; <sweep>.jobs.json for Slurm jobs).
"""

from __future__ import annotations

import json
import math
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from filelock import FileLock

from harness import config as cfgmod
from harness.budget import Budget, chinchilla, fixed_budget
from harness.errors import UserError
from harness.files import atomic_write_json
from harness.launch import Launcher
from harness.record import COMPLETED, RunSpec
from harness.results import ResultsStore

SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+,=-]{0,199}")
SWEEP_FILE_KEYS = {"name": str, "description": str, "preset": str, "arms": list, "seeds": int, "seed_list": list,
                   "budget": str, "tokens": int, "set": dict}
PLANS = "sweeps"  # RESULTS/sweeps/<sweep>.json and <sweep>.jobs.json
DEFAULT_SEEDS = 5
DEFAULT_PRESET = "tiny"


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
              budget: str, sweep: str | None, include_baseline: bool, launcher: Launcher, results: Path,
              data: str | None = None) -> "Plan":
        if not seeds:
            raise UserError("no seeds: give --seeds N (N >= 1) or --seed-list 0,1,2")
        if any(s < 0 for s in seeds):
            raise UserError(f"seeds must be >= 0, got {seeds}")
        if budget not in ("baseline", "own"):
            raise UserError(f"--budget {budget!r}: use 'baseline' or 'own'")
        sets = with_data(sets, data)
        arms = list(dict.fromkeys(arms))
        if include_baseline and cfgmod.BASELINE not in arms:
            arms.insert(0, cfgmod.BASELINE)
        configs = {arm: cfgmod.resolve(preset, arm, sets) for arm in arms}
        world = launcher.world_size
        baseline = configs.get(cfgmod.BASELINE) or cfgmod.resolve(preset, cfgmod.BASELINE, sets)
        base_tokens = chinchilla(baseline, world).tokens
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
        return cls(name, preset, arms, list(seeds), budgets, specs, launcher, ResultsStore(results), notes)

    @classmethod
    def for_sweep(cls, arms: list[str], seeds: int | None, seed_list: str | None, preset: str | None,
                  sets: dict[str, Any], tokens: int | None, budget: str | None, name: str | None,
                  launcher: Launcher, results: Path, data: str | None) -> "Plan":
        """`harness sweep`: arms (or one sweep file) and options; an option given wins over the file."""
        file: dict[str, Any] = {}
        if len(arms) == 1 and (arms[0].endswith(".toml") or Path(arms[0]).is_file()):
            file = load_sweep_file(Path(arms[0]))
            arms = file["arms"]
        return cls.build(arms=arms, seeds=seed_values(seeds, seed_list, file), preset=preset or file.get("preset", DEFAULT_PRESET),
                         sets=file.get("set", {}) | sets, tokens=tokens if tokens is not None else file.get("tokens"),
                         budget=budget or file.get("budget", "baseline"), sweep=name or file.get("name"),
                         include_baseline=True, launcher=launcher, results=results, data=data)


def run_spec(cfg: cfgmod.ArmConfig, seed: int, budget: Budget, sweep: str, world_size: int) -> RunSpec:
    """The run's identity hashes what changes the outcome (config, budget, batch), not the arm's name."""
    identity = cfg.as_dict() | {"tokens": budget.tokens, "tokens_per_step": budget.tokens_per_step}
    identity.pop("arm")
    digest = cfgmod.config_hash(identity)
    safe_arm = cfg.arm.replace("/", "_")
    return RunSpec(
        run_id=f"{safe_arm}-s{seed}-{digest[:10]}", sweep=sweep, arm=cfg.arm, seed=seed,
        init_seed=cfgmod.derive_seed(seed, "init"), data_seed=cfgmod.derive_seed(seed, "data"),
        dropout_seed=cfgmod.derive_seed(seed, "dropout"), preset=cfg.preset, config=cfg.as_dict(),
        overrides=cfg.overrides, config_hash=digest, params=budget.params, tokens=budget.tokens,
        steps=budget.steps, tokens_per_step=budget.tokens_per_step, world_size=world_size,
    )


def default_sweep_name(preset: str, arms: list[str]) -> str:
    named = [a for a in arms if a != cfgmod.BASELINE] or [cfgmod.BASELINE]
    return f"{preset}-{','.join(named)}"


def with_data(sets: dict[str, Any], data: str | None) -> dict[str, Any]:
    """--set overrides plus --data PATH (its shorthand)."""
    if data is None:
        return sets
    if "data" in sets:
        raise UserError("give --data PATH or --set data=PATH, not both")
    if not data.strip():
        raise UserError("--data needs a value: 'shakespeare', a text file or folder, or a shard folder")
    return sets | {"data": data}


def check_data(configs: dict[str, cfgmod.ArmConfig], budgets: dict[str, Budget]) -> list[str]:
    """Check (and build or verify, once in this process) every arm's corpus: a prepared folder's
    tokenizer, the model's vocabulary, and that the budget fits the training split. Returns notes."""
    from harness.batches import check_epochs
    from harness.data import load_corpus
    from harness.prepare import check_tokenizer

    notes = []
    for arm, cfg in configs.items():
        check_tokenizer(cfg.train.data, cfg.train.tokenizer)
        corpus = load_corpus(cfg.train.data, cfg.train.tokenizer)
        if corpus.vocab_size > cfg.model.vocab_size:
            raise UserError(f"arm {arm!r}: tokenizer {cfg.train.tokenizer!r} has {corpus.vocab_size:,} tokens but "
                            f"the model's vocab_size is {cfg.model.vocab_size:,}")
        epochs = check_epochs(budgets[arm].tokens, len(corpus.train), cfg.model.context_length, cfg.train.allow_repeat)
        if epochs > 1:
            notes.append(f"{arm}: the budget repeats the training data {epochs:.2f} times (allow_repeat)")
    return list(dict.fromkeys(notes))


def seed_values(seeds: int | None, seed_list: str | None, file: dict[str, Any] | None = None) -> list[int]:
    """--seeds N (0..N-1) or --seed-list 7,11,13, else the sweep file's seeds or seed_list, else 0..4."""
    file = file or {}
    if seeds is not None and seed_list is not None:
        raise UserError("give --seeds or --seed-list, not both")
    if seed_list is not None:
        try:
            return [int(s) for s in seed_list.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seed-list {seed_list!r}: expected comma-separated integers, e.g. 7,11,13") from None
    if seeds is None and "seed_list" in file:
        return list(file["seed_list"])
    count = seeds if seeds is not None else file.get("seeds", DEFAULT_SEEDS)
    if count < 1:
        raise UserError(f"--seeds must be >= 1, got {count}")
    return list(range(count))


def load_sweep_file(path: Path) -> dict[str, Any]:
    """A sweep file: name, preset, arms, seeds or seed_list, budget, tokens, [set]."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: malformed TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read sweep file {path}: {err}") from None
    unknown = set(data) - set(SWEEP_FILE_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(sorted(unknown))}; allowed: {', '.join(sorted(SWEEP_FILE_KEYS))}")
    arms = data.get("arms")
    if not isinstance(arms, list) or not arms or not all(isinstance(a, str) for a in arms):
        raise UserError(f"{path}: 'arms' must be a non-empty list of arm names")
    for key, kind in SWEEP_FILE_KEYS.items():
        if key in data and (not isinstance(data[key], kind) or isinstance(data[key], bool)):
            raise UserError(f"{path}: '{key}' must be {kind.__name__}, got {data[key]!r}")
    seed_list = data.get("seed_list", [])
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seed_list):
        raise UserError(f"{path}: 'seed_list' must be a list of integers, got {seed_list!r}")
    sets = {k: cfgmod.coerce(k, v, f"{path} [set]") for k, v in data.get("set", {}).items()}
    return data | {"name": data.get("name", path.stem), "set": sets}


# ----------------------------------------------------------------------------- the plan on disk


def plan_path(results: Path, sweep: str) -> Path:
    return Path(results) / PLANS / f"{sweep}.json"


def jobs_path(results: Path, sweep: str) -> Path:
    return Path(results) / PLANS / f"{sweep}.jobs.json"


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def save_plan(plan: Plan) -> Path:
    """RESULTS/sweeps/<name>.json: what the sweep intends to run, so status can show what is queued."""
    path = plan_path(plan.store.root, plan.sweep)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {
        "sweep": plan.sweep, "preset": plan.preset, "arms": plan.arms, "seeds": plan.seeds,
        "world_size": plan.launcher.world_size,
        "budgets": {arm: b.as_dict() for arm, b in plan.budgets.items()},
        "runs": [{"run_id": s.run_id, "arm": s.arm, "seed": s.seed, "config_hash": s.config_hash} for s in plan.specs],
    })
    return path


def read_plan(results: Path, sweep: str) -> dict[str, Any]:
    """A saved plan ({} when there is none or it is unreadable)."""
    plan = _read_json(plan_path(results, sweep))
    return plan if isinstance(plan, dict) else {}


def saved_sweeps(results: Path) -> list[str]:
    """Names of the sweeps with a saved plan, sorted by file name."""
    folder = Path(results) / PLANS
    names = []
    if folder.is_dir():
        for p in sorted(folder.glob("*.json")):
            data = None if p.name.endswith(".jobs.json") else _read_json(p)
            if isinstance(data, dict) and isinstance(data.get("sweep"), str):
                names.append(data["sweep"])
    return names


def record_jobs(results: Path, sweep: str, jobs: dict[str, str]) -> None:
    """Add run id -> job id entries to RESULTS/sweeps/<sweep>.jobs.json."""
    path = jobs_path(results, sweep)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock", timeout=60):
        known = _read_json(path) or {}
        known.update(jobs)
        atomic_write_json(path, known)


def read_jobs(results: Path, sweep: str) -> dict[str, str]:
    jobs = _read_json(jobs_path(results, sweep))
    return jobs if isinstance(jobs, dict) else {}


# ----------------------------------------------------------------------------- showing a plan


def estimate_seconds(plan: Plan, jobs: int = 1) -> float | None:
    """Wall time from tokens/s of earlier runs of this preset on this world size in the store,
    `jobs` runs at a time."""
    frame = plan.store.runs_frame()
    past = frame[(frame["preset"] == plan.preset) & (frame["world_size"] == plan.launcher.world_size)
                 & (frame["status"] == COMPLETED)]
    if past.empty:
        return None
    rate = float(past["tokens_per_s"].median())
    overhead = float((past["wall_time_s"] - past["tokens_seen"] / past["tokens_per_s"]).median()) + 5.0
    return sum(s.tokens / rate + overhead for s in plan.specs) / min(jobs, len(plan.specs))


def print_plan(plan: Plan, console, jobs: int = 1) -> None:
    from rich.table import Table

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
    est = estimate_seconds(plan, jobs)
    total_tokens = sum(s.tokens for s in plan.specs)
    when = f"about {format_duration(est)} (from earlier runs in {plan.store.root})" if est else \
        "unknown until a run of this preset has completed here"
    at_once = f", up to {jobs} at once" if jobs > 1 else ""
    console.print(f"{len(plan.specs)} runs{at_once}, {total_tokens:,} training tokens in all; estimated time {when}")


def format_seeds(seeds: list[int]) -> str:
    if seeds == list(range(len(seeds))):
        return f"0..{len(seeds) - 1}"
    return ",".join(map(str, seeds))


def format_duration(seconds: float) -> str:
    minutes, s = divmod(int(math.ceil(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s"
