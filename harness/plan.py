"""The plan of a sweep: every arm's resolved config and token budget, and its runs in seed-major order.

A Plan is fixed before anything trains. Building it resolves each arm's config once (preset, then
the arm's interventions, then --set and --data), computes the budgets, checks every corpus and
tokenizer against every arm, and lists the runs seed-major (seed 0 of every arm, then seed 1, ...)
so that a sweep stopped half-way is still balanced and paired. Also here: the sweep file format,
and how --seeds/--seed-list/a sweep file become a seed list. The plan as written to disk is
harness.planfile.
"""

from __future__ import annotations

import math
import os
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness import config as cfgmod
from harness.bounds import MAX_SEED, MAX_SEEDS, check_int, check_seeds
from harness.budget import Budget, chinchilla, fixed_budget
from harness.errors import UserError, shown
from harness.launch import Launcher
from harness.adaptive import Adaptive
from harness.record import COMPLETED, RunSpec
from harness.outputs import guard_destination, require_folder
from harness.results import ResultsStore

SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+,=-]{0,199}")
SWEEP_FILE_KEYS = {"name": str, "description": str, "preset": str, "arms": list, "seeds": int, "seed_list": list,
                   "budget": str, "tokens": int, "set": dict}
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
    configs: dict[str, cfgmod.ArmConfig] = field(default_factory=dict)  # each arm's resolved config
    adaptive: Adaptive | None = None  # an adaptive sweep: rounds of seeds until each arm is decided
    noise: dict[str, Any] | None = None  # a noise study: {"seeds", "replicates", "arm"} (harness.noise)
    inert: dict[str, str] = field(default_factory=dict)  # A/A arms: arm -> why it changes nothing here

    @classmethod
    def build(cls, arms: list[str], seeds: list[int], preset: str, sets: dict[str, Any], tokens: int | None,
              budget: str, sweep: str | None, include_baseline: bool, launcher: Launcher, results: Path,
              data: str | None = None, streams: tuple[str, dict[str, int]] = ("", {})) -> "Plan":
        """streams: (vary, fixed sub-seeds), see sub_seeds."""
        if not seeds:
            raise UserError("no seeds: give --seeds N (N >= 1) or --seed-list 0,1,2")
        if any(s < 0 for s in seeds):
            raise UserError(f"seeds must be >= 0, got {format_seeds(sorted(s for s in seeds if s < 0))}")
        for stream, value in streams[1].items():
            check_int(f"{stream} seed", value, MAX_SEED)
        if tokens is not None:
            check_int("tokens", tokens)
        if budget not in ("baseline", "own"):
            raise UserError(f"--budget {budget!r}: use 'baseline' or 'own'")
        sets = with_data(sets, data)
        canonical = {arm: cfgmod.canonical_arm(arm) for arm in arms}
        notes = [f"arm {arm!r} is {name!r}" for arm, name in canonical.items() if name != arm]
        arms = list(dict.fromkeys(canonical.values()))
        if include_baseline and cfgmod.BASELINE not in arms:
            arms.insert(0, cfgmod.BASELINE)
        check_seeds(seeds, len(arms))  # before any config is resolved or run planned
        configs = {arm: cfgmod.resolve(preset, arm, sets) for arm in arms}
        same = identical_arms(configs)
        for arm, first in same.items():
            notes.append(f"arm {arm!r} trains exactly the configuration of {first!r}: planned once, as {first!r}")
            arms.remove(arm)
            del configs[arm]
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
        notes += check_data(configs, budgets)
        inert = inert_arms(configs, launcher)
        notes += [f"{arm} is an A/A comparison here: {why}" for arm, why in inert.items()]
        notes = list(dict.fromkeys(notes))
        name = sweep or default_sweep_name(preset, arms)
        if not SWEEP_NAME.fullmatch(name):
            raise UserError(f"sweep name {name!r}: use letters, digits and . _ + , = - (it names files), "
                            "starting with a letter or digit")
        require_folder(results)
        guard_destination(results, "--results", {"the training data": Path(cfg.train.data) for cfg in configs.values()
                                                 if Path(cfg.train.data).exists()} | {"the sweeps folder": cfgmod.SWEEPS_DIR},
                          may_contain_inputs=True)
        vary, fixed = streams
        specs = [run_spec(configs[arm], seed, budgets[arm], name, world, vary, fixed) for seed in seeds for arm in arms]
        return cls(name, preset, arms, list(seeds), budgets, specs, launcher, ResultsStore(results), notes, configs,
                   inert=inert)

    @classmethod
    def noise_study(cls, preset: str, arm: str | None, seeds: int, replicates: int, sets: dict[str, Any],
                    tokens: int | None, launcher: Launcher, results: Path, name: str | None = None,
                    data: str | None = None) -> "Plan":
        """`harness noise`: for the baseline (and `arm`), `seeds` runs varying each random stream
        alone (init, data, dropout) and all three, plus `replicates` runs with identical seeds;
        seed-major, so a study stopped half-way has every source at the same depth."""
        if seeds < 2:
            raise UserError(f"--seeds must be >= 2 (a spread needs two runs per source), got {seeds}")
        if not 1 <= replicates <= 1000:
            raise UserError(f"--replicates must be from 1 to 1000, got {replicates}")
        if arm == cfgmod.BASELINE:
            raise UserError("--arm baseline: the baseline is always in the study; name an intervention")
        arms = [a for a in (cfgmod.BASELINE, arm) if a]
        sweep = name or f"noise-{preset}-{'-'.join(arms)}"
        plan = cls.build(arms=arms, seeds=list(range(seeds)), preset=preset, sets=sets, tokens=tokens,
                         budget="baseline", sweep=sweep, include_baseline=True, launcher=launcher, results=results,
                         data=data)
        world = launcher.world_size
        specs = [run_spec(plan.configs[a], seed, plan.budgets[a], sweep, world, vary)
                 for seed in range(seeds) for vary in ("", *STREAMS) for a in plan.arms]
        specs += [run_spec(plan.configs[a], r, plan.budgets[a], sweep, world, "replicate")
                  for r in range(replicates) for a in plan.arms]
        plan.specs = specs
        plan.noise = {"seeds": seeds, "replicates": replicates, "arm": arm}
        return plan

    @classmethod
    def for_sweep(cls, arms: list[str], seeds: int | None, seed_list: str | None, preset: str | None,
                  sets: dict[str, Any], tokens: int | None, budget: str | None, name: str | None,
                  launcher: Launcher, results: Path, data: str | None, adaptive: Adaptive | None = None,
                  streams: tuple[str, dict[str, int]] = ("", {})) -> "Plan":
        """`harness sweep`: arms (or one sweep file) and options; an option given wins over the file.
        An adaptive sweep plans seeds 0 .. max_seeds-1 and runs them in rounds (harness.adaptive)."""
        file: dict[str, Any] = {}
        if len(arms) == 1 and (arms[0].endswith(".toml") or os.path.isfile(arms[0])):
            file = load_sweep_file(Path(arms[0]))
            arms = file["arms"]
        if adaptive is not None:
            if seeds is not None or seed_list is not None:
                raise UserError("--until-decided runs seeds 0, 1, ... until each arm is decided, at most --max-seeds; "
                                "drop --seeds / --seed-list")
            adaptive.check()
            seed_list_here = list(range(adaptive.max_seeds))
        else:
            seed_list_here = seed_values(seeds, seed_list, file)
        plan = cls.build(arms=arms, seeds=seed_list_here, preset=preset or file.get("preset", DEFAULT_PRESET),
                         sets=file.get("set", {}) | sets, tokens=tokens if tokens is not None else file.get("tokens"),
                         budget=budget or file.get("budget", "baseline"), sweep=name or file.get("name"),
                         include_baseline=True, launcher=launcher, results=results, data=data, streams=streams)
        plan.adaptive = adaptive
        return plan


STREAMS = ("init", "data", "dropout")  # the random streams a run's seed derives
VARY = (*STREAMS, "replicate")
REFERENCE_SEED = 0  # the streams a noise study holds fixed take this seed's values


def sub_seeds(seed: int, vary: str = "", fixed: dict[str, int] | None = None) -> dict[str, int]:
    """The init, data-order and dropout seeds of run seed `seed`: all derived from it (vary ""),
    only `vary`'s stream derived from it and the others from REFERENCE_SEED, or none (replicate:
    every run identical); `fixed` sets streams by hand (--init-seed ...)."""
    varied = STREAMS if vary == "" else (vary,) if vary in STREAMS else ()
    out = {p: cfgmod.derive_seed(seed if p in varied else REFERENCE_SEED, p) for p in STREAMS}
    return out | (fixed or {})


def run_spec(cfg: cfgmod.ArmConfig, seed: int, budget: Budget, sweep: str, world_size: int, vary: str = "",
             fixed: dict[str, int] | None = None) -> RunSpec:
    """The run's identity hashes what changes the outcome (config, budget, batch, and sub-seeds set
    by hand), not the arm's name; a noise study's runs carry what they vary in their id."""
    identity = cfg.as_dict() | {"tokens": budget.tokens, "tokens_per_step": budget.tokens_per_step}
    identity.pop("arm")
    if fixed:
        identity["fixed_seeds"] = dict(sorted(fixed.items()))
    digest = cfgmod.config_hash(identity)
    safe_arm = cfg.arm.replace("/", "_")
    tag = f"-{vary}" if vary else ""
    seeds = sub_seeds(seed, vary, fixed)
    return RunSpec(
        run_id=f"{safe_arm}-s{seed}{tag}-{digest[:10]}", sweep=sweep, arm=cfg.arm, seed=seed,
        init_seed=seeds["init"], data_seed=seeds["data"], dropout_seed=seeds["dropout"], preset=cfg.preset,
        config=cfg.as_dict(), overrides=cfg.overrides, config_hash=digest, params=budget.params, tokens=budget.tokens,
        steps=budget.steps, tokens_per_step=budget.tokens_per_step, world_size=world_size, vary=vary,
    )


def identical_arms(configs: dict[str, cfgmod.ArmConfig]) -> dict[str, str]:
    """Arms whose resolved configuration equals an earlier arm's (same interventions in another
    order, an intervention the preset or --set already applies): arm -> that earlier arm."""
    first: dict[str, str] = {}
    same = {}
    for arm, cfg in configs.items():
        key = cfgmod.config_hash(cfg.as_dict() | {"arm": ""})
        if key in first:
            same[arm] = first[key]
        else:
            first[key] = arm
    return same


def inert_arms(configs: dict[str, cfgmod.ArmConfig], launcher: Launcher) -> dict[str, str]:
    """Arms whose switches change nothing on the device the runs use (fp32 on a CPU, where
    precision 'auto' is fp32 already): an A/A comparison, labelled as such in plan and report."""
    base = configs.get(cfgmod.BASELINE)
    if base is None:
        return {}
    inert = {}
    for arm, cfg in configs.items():
        if arm == cfgmod.BASELINE:
            continue
        differing = {k for k in cfgmod.ALL_KEYS if cfgmod.value_of(cfg, k) != cfgmod.value_of(base, k)}
        if differing and differing <= set(cfgmod.DEVICE_DEFAULTS):
            on_gpu = launcher.uses_gpus()
            if all(cfgmod.effective(cfg, k, on_gpu) == cfgmod.effective(base, k, on_gpu) for k in differing):
                changed = ", ".join(f"{k}={cfgmod.value_of(cfg, k)}" for k in sorted(differing))
                inert[arm] = (f"{changed} is what the baseline already runs with on {'GPUs' if on_gpu else 'a CPU'}, "
                              "so this arm trains the baseline again")
    return inert


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
        if seed_list.count(",") >= MAX_SEEDS:
            raise UserError(f"--seed-list: at most {MAX_SEEDS:,} seeds per sweep")
        try:
            return [int(s) for s in seed_list.split(",") if s.strip()]
        except ValueError:
            raise UserError(f"--seed-list {shown(seed_list, 60)!r}: expected comma-separated integers, e.g. 7,11,13") from None
    if seeds is None and "seed_list" in file:
        return list(file["seed_list"])
    count = seeds if seeds is not None else file.get("seeds", DEFAULT_SEEDS)
    if count < 1:
        raise UserError(f"--seeds must be >= 1, got {count}")
    check_int("seeds", count)
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
        runs = sum(1 for s in plan.specs if s.arm == arm)
        table.add_row(arm, f"{b.params:,}", f"{b.tokens:,}", f"{b.steps:,}", f"{b.tokens_per_step:,}", str(runs))
    console.print(table)
    for note in plan.notes:
        console.print(f"note: {note}")
    est = estimate_seconds(plan, jobs)
    total_tokens = sum(s.tokens for s in plan.specs)
    when = f"about {format_duration(est)} (from earlier runs in {plan.store.root})" if est else \
        "unknown until a run of this preset has completed here"
    at_once = f", up to {jobs} at once" if jobs > 1 else ""
    if plan.noise is not None:
        n = plan.noise
        console.print(f"noise study: per arm {n['seeds']} runs varying only the initial weights, only the data order, "
                      f"only the dropout masks, and all three, plus {n['replicates']} with identical seeds")
    if plan.adaptive is None:
        console.print(f"{len(plan.specs)} runs{at_once}, {total_tokens:,} training tokens in all; estimated time {when}")
        return
    a = plan.adaptive
    arms = len(plan.arms) - 1
    console.print(f"adaptive: rounds of one seed each until every arm is decided (alpha {a.alpha:g} across {arms} "
                  f"arm(s), Holm-type recycling; " + (f"equivalence margin +-{a.margin:g}; " if a.margin else "")
                  + f"decisions from {a.min_seeds} seeds on)")
    console.print(f"runs at most: {len(plan.specs)} ({len(plan.arms)} arms x {a.max_seeds} seeds){at_once}, "
                  f"{total_tokens:,} training tokens; at least {(arms + 1) * a.min_seeds} if every arm is decided at "
                  f"{a.min_seeds} seeds; estimated time {'at most ' if est else ''}{when}")
    expected = expected_runs(plan)
    if expected is not None:
        console.print(f"runs expected: about {expected:,.0f} (simulated from the effects and noise of earlier runs of "
                      f"these arms in {plan.store.root})")
    else:
        console.print("runs expected: unknown until earlier runs of these arms are in the store "
                      "(at least 2 paired seeds per arm)")


def expected_runs(plan: Plan, sweeps: int = 2000) -> float | None:
    """Expected runs of an adaptive plan, by simulation from each arm's effect and paired noise as
    observed in earlier runs of the same configs in the store (any sweep); None without them."""
    from harness.sequential import simulate

    a = plan.adaptive
    frame = plan.store.runs_frame()
    if a is None or frame.empty:
        return None
    done = frame[(frame["status"] == COMPLETED)]
    by_hash = {s.arm: s.config_hash for s in plan.specs}
    base = done[done["config_hash"] == by_hash[cfgmod.BASELINE]].drop_duplicates("seed").set_index("seed")["test_loss"]
    effects, sds = [], []
    for arm in [a for a in plan.arms if a != cfgmod.BASELINE]:
        own = done[done["config_hash"] == by_hash[arm]].drop_duplicates("seed").set_index("seed")["test_loss"]
        common = own.index.intersection(base.index)
        if len(common) < 2:
            return None
        d = (own.loc[common] - base.loc[common]).to_numpy(dtype=float)
        effects.append(float(d.mean()))
        sds.append(max(float(d.std(ddof=1)), 1e-12))
    sim = simulate(effects, sds, a.alpha, a.min_seeds, a.max_seeds, sweeps, a.margin)
    return float(sim["n"].max(axis=1).mean() + sim["n"].sum(axis=1).mean())


def format_seeds(seeds: list[int]) -> str:
    if seeds == list(range(len(seeds))):
        return f"0..{len(seeds) - 1}"
    return ",".join(map(str, seeds))


def format_duration(seconds: float) -> str:
    minutes, s = divmod(int(math.ceil(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s"
