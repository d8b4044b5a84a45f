"""The plan of a sweep: every arm's resolved config and token budget, and its runs in seed-major order.

A Plan is plain data, fixed before anything trains: building it resolves each arm's config once
(preset, then the arm's interventions, then --set and --data), computes the budgets, checks every
corpus and tokenizer against every arm, and lists the runs seed-major (seed 0 of every arm, then
seed 1, ...) so that a sweep stopped half-way is still balanced and paired. Each run's id comes
from what it computes (harness.store.record.run_identity); a run the store already knows under
another id (an older harness, another arm's name for the same config, a noise study's seed-0
run) keeps that id, so nothing is trained twice. What a plan costs is harness.planning.preview;
the plan as written to disk is harness.store.planfile.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core import config as cfgmod
from harness.core import scheme
from harness.core.bounds import check_seeds
from harness.core.definitions import Library, shadow_note
from harness.core.errors import UserError
from harness.core.seeds import REFERENCE_SEED, REPLICATE, STREAMS, sub_seeds
from harness.planning.adaptive import Adaptive
from harness.planning.budget import Budget, chinchilla, fixed_budget
from harness.core.definitions import SWEEP_NAME, SWEEP_NAME_RULE
from harness.planning.request import NoiseRequest, SweepRequest
from harness.planning.trainer import PRESET
from harness.store.identity import legacy_key
from harness.store.outputs import guard_destination, require_folder
from harness.store.record import RunSpec, run_identity
from harness.store.results import ResultsStore


@dataclass(frozen=True)
class DataFacts:
    """What an arm's corpus is, read when the plan is built: its content and its test split."""

    data_id: str
    test_set_id: str


@dataclass
class Plan:
    sweep: str
    preset: str
    arms: list[str]
    seeds: list[int]
    budgets: dict[str, Budget]
    specs: list[RunSpec]
    results: Path
    world_size: int  # processes per run
    notes: list[str] = field(default_factory=list)
    configs: dict[str, cfgmod.ArmConfig] = field(default_factory=dict)  # each arm's resolved config
    adaptive: Adaptive | None = None  # an adaptive sweep: rounds of seeds until each arm is decided
    noise: dict[str, Any] | None = None  # a noise study: {"seeds", "replicates", "arm"} (harness.stats.noise)
    inert: dict[str, str] = field(default_factory=dict)  # A/A arms: arm -> why it changes nothing here
    data: dict[str, DataFacts] = field(default_factory=dict)  # each arm's corpus as read when planned
    extensions: dict[float, Budget] = field(default_factory=dict)  # baseline runs at other budgets: factor -> budget


def build_plan(request: SweepRequest, world_size: int, on_gpu: bool, results: Path,
               library: Library | None = None) -> Plan:
    """The plan of a checked SweepRequest, run by `world_size` processes each (on GPUs or not: an
    arm can be an A/A comparison on one and not the other), for the results store at `results`
    (read to find the runs it already holds)."""
    library = library or Library.from_environment()
    arms, notes = request_arms(request)
    if request.trainer is not None:
        return trainer_plan(request, arms, notes, world_size, results, library)
    sets = dict(request.sets)
    configs = {arm: cfgmod.resolve(request.preset, arm, sets, library, request.scale) for arm in arms}
    used = {name for arm in arms for name in cfgmod.split_arm(arm)}
    for key in sets:
        if "." in key and key.partition(".")[0] not in used:
            raise UserError(f"--set {key}: no arm of this sweep has intervention {key.partition('.')[0]!r}; "
                            f"its arms: {', '.join(arms)}")
    notes += definition_notes(request.preset, arms, library)
    world = world_size
    budgets = arm_budgets(configs, request, world, library)
    for arm, (first, why) in identical_arms(configs, budgets).items():
        notes.append(f"arm {arm!r} trains exactly the configuration of {first!r}{why}: planned once, as {first!r}, "
                     "and never compared with itself")
        arms.remove(arm)
        del configs[arm], budgets[arm]
    facts, data_notes = check_data(configs, budgets)
    notes += data_notes
    check_test_sets(facts)
    inert = inert_arms(configs, on_gpu)
    notes += [f"{arm} is an A/A comparison here: {why}" for arm, why in inert.items()]
    name = request.name or default_sweep_name(request.preset, arms)
    if not SWEEP_NAME.fullmatch(name):
        raise UserError(f"sweep name {name!r}: use {SWEEP_NAME_RULE}")
    require_folder(results)
    guard_destination(results, "--results",
                      {"the training data": Path(cfg.train.data) for cfg in configs.values() if Path(cfg.train.data).exists()}
                      | {f"the definitions folder {p}": p for p in library.all_folders()},
                      may_contain_inputs=True)
    specs = [run_spec(configs[arm], seed, budgets[arm], name, world, facts[arm], request.streams.vary,
                      dict(request.streams.fixed)) for seed in request.seeds for arm in arms]
    plan = Plan(name, request.preset, arms, list(request.seeds), budgets, specs, Path(results), world,
                list(dict.fromkeys(notes)), configs, adaptive=request.adaptive, inert=inert, data=facts)
    plan = with_known_ids(plan)
    return with_extensions(plan, request.extend) if request.extend else plan


def request_arms(request: SweepRequest) -> tuple[list[str], list[str]]:
    """The request's arms, each by its one name (the baseline first unless left out), and notes on
    the names it changed; the seeds are checked against them before anything is resolved."""
    canonical = {arm: cfgmod.canonical_arm(arm) for arm in request.arms}
    notes = [f"arm {arm!r} is {name!r}" for arm, name in canonical.items() if name != arm]
    arms = list(dict.fromkeys(canonical.values()))
    if request.include_baseline and cfgmod.BASELINE not in arms:
        arms.insert(0, cfgmod.BASELINE)
    check_seeds(list(request.seeds), len(arms))  # before any config is resolved or run planned
    return arms, notes


def trainer_plan(request: SweepRequest, arms: list[str], notes: list[str], world_size: int, results: Path,
                 library: Library) -> Plan:
    """The plan of a sweep whose arms run a researcher's own script (harness.planning.trainer): each
    arm's settings, a budget from --tokens or from the script's parameter count (a probe), and its
    runs seed-major; runs identified by the command, the content of its files, the settings and
    the sub-seeds."""
    trainer = request.trainer
    if trainer.global_batch % world_size:
        raise UserError(f"the trainer's global_batch {trainer.global_batch} cannot be shared by {world_size} processes "
                        "per run: give --nproc a divisor of it")
    configs = {arm: trainer.arm(arm, library) for arm in arms}
    if request.tokens is not None:
        budgets = {arm: trainer.budget(cfg, 0, request.tokens) for arm, cfg in configs.items()}
    elif request.budget == "own":
        budgets = {arm: trainer.chinchilla(cfg, trainer.probe(cfg)) for arm, cfg in configs.items()}
    else:
        base = trainer.chinchilla(configs[cfgmod.BASELINE], trainer.probe(configs[cfgmod.BASELINE]))
        budgets = {arm: trainer.budget(cfg, base.params if arm == cfgmod.BASELINE else 0, base.tokens)
                   for arm, cfg in configs.items()}
    for arm, (first, why) in identical_arms(configs, budgets).items():
        notes.append(f"arm {arm!r} sets the trainer's settings as {first!r} does{why}: planned once, as {first!r}, "
                     "and never compared with itself")
        arms.remove(arm)
        del configs[arm], budgets[arm]
    notes.append(f"the arms run {trainer.command!r} in {trainer.folder} (the external trainer contract); harness "
                 "passes each run its seeds, but the pairing is the trainer's to keep: the report measures it")
    name = request.name or default_sweep_name(PRESET, arms)
    if not SWEEP_NAME.fullmatch(name):
        raise UserError(f"sweep name {name!r}: use {SWEEP_NAME_RULE}")
    require_folder(results)
    guard_destination(results, "--results", {f"the trainer's file {n}": trainer.folder / n for n in trainer.files},
                      may_contain_inputs=True)
    specs = [run_spec(configs[arm], seed, budgets[arm], name, world_size, vary=request.streams.vary,
                      fixed=dict(request.streams.fixed), workdir=str(trainer.folder))
             for seed in request.seeds for arm in arms]
    plan = Plan(name, PRESET, arms, list(request.seeds), budgets, specs, Path(results), world_size,
                list(dict.fromkeys(notes)), configs, adaptive=request.adaptive)
    return with_known_ids(plan)


def extension_factors(extend: float, constant: bool) -> list[float]:
    """The baseline's other budgets, as factors of the sweep's: a schedule that does not depend on the
    run's length needs only the longest (its held-out points are shorter runs); one that decays with
    it (cosine) needs runs at a few budgets, shorter and longer: 1/F, 1/sqrt(F), sqrt(F), F."""
    return [extend] if constant else [1 / extend, extend ** -0.5, extend ** 0.5, extend]


def with_extensions(plan: Plan, extend: float) -> Plan:
    """Baseline runs at other budgets for the compute multiplier (harness.stats.worth). Under a
    constant learning rate a longer run's first T tokens are exactly the ordinary run (batches and
    dropout are functions of the step), so the extended run continues the ordinary run's final
    checkpoint: nothing is trained twice, and its point at T is the ordinary run's. Under a
    decaying schedule mid-run points are not shorter runs: independent runs at other budgets."""
    if cfgmod.BASELINE not in plan.configs:
        raise UserError("--extend-baseline extends the baseline, and this sweep has none")
    cfg = plan.configs[cfgmod.BASELINE]
    base = plan.budgets[cfgmod.BASELINE]
    constant = cfg.train.lr_schedule == "constant"
    from harness.data.batches import check_epochs
    from harness.data.corpus import load_corpus

    train_tokens = len(load_corpus(cfg.train.data, cfg.train.tokenizer).train)
    ordinary = {s.seed: s for s in plan.specs if s.arm == cfgmod.BASELINE and s.budget_factor == 1.0}
    for factor in extension_factors(extend, constant):
        budget = fixed_budget(cfg, plan.world_size, round(factor * base.tokens))
        check_epochs(budget.tokens, train_tokens, cfg.model.context_length, cfg.train.allow_repeat)
        plan.extensions[round(factor, 6)] = budget
        plan.specs += [run_spec(cfg, seed, budget, plan.sweep, plan.world_size, plan.data[cfgmod.BASELINE],
                                budget_factor=round(factor, 6), start_from=s.run_id if constant else "",
                                anchor_steps=[base.steps] if constant else [])
                       for seed, s in ordinary.items()]
    plan.notes.append(f"the baseline is extended to {extend:g}x its budget for the compute multiplier: "
                      + ("each seed's run continued from its final checkpoint (a constant learning rate: its "
                         "held-out points are shorter runs)" if constant else
                         f"runs at {', '.join(f'{f:.3g}x' for f in extension_factors(extend, False))} the budget "
                         f"(the {cfg.train.lr_schedule} schedule depends on the run's length)"))
    return with_known_ids(plan)


def noise_plan(request: NoiseRequest, world_size: int, on_gpu: bool, results: Path,
               library: Library | None = None) -> Plan:
    """`harness noise`: for the baseline (and the request's arm), runs varying each random stream
    alone (init, data, dropout) and all three, plus replicas with identical seeds; seed-major, so
    a study stopped half-way has every source at the same depth. Runs that compute the same thing
    are one run: the ordinary seed-0 run is also every source's seed 0 and replica 0."""
    arms = [a for a in (cfgmod.BASELINE, request.arm) if a]
    sweep = request.name or f"noise-{request.preset}-{'-'.join(arms)}"
    plan = build_plan(SweepRequest(arms=tuple(arms), seeds=tuple(range(request.seeds)), preset=request.preset,
                                   sets=request.sets, tokens=request.tokens, name=sweep).check(),
                      world_size, on_gpu, results, library)
    specs = [run_spec(plan.configs[a], seed, plan.budgets[a], sweep, plan.world_size, plan.data[a], vary)
             for seed in range(request.seeds) for vary in ("", *STREAMS) for a in plan.arms]
    specs += [run_spec(plan.configs[a], REFERENCE_SEED, plan.budgets[a], sweep, plan.world_size, plan.data[a],
                       REPLICATE, replica=r) for r in range(request.replicates) for a in plan.arms]
    unique: dict[str, RunSpec] = {}
    for s in specs:  # each run once, under the first role it was planned for
        unique.setdefault(s.identity, s)
    plan.specs = list(unique.values())
    plan.noise = {"seeds": request.seeds, "replicates": request.replicates, "arm": request.arm}
    return with_known_ids(plan)


def arm_budgets(configs: dict[str, cfgmod.ArmConfig], request: SweepRequest, world: int,
                library: Library) -> dict[str, Budget]:
    """Each arm's budget: --tokens for all, its own Chinchilla count, or (default) the baseline's."""
    if request.tokens is not None:
        return {arm: fixed_budget(cfg, world, request.tokens) for arm, cfg in configs.items()}
    if request.budget == "own":
        return {arm: chinchilla(cfg, world) for arm, cfg in configs.items()}
    baseline = configs.get(cfgmod.BASELINE) or cfgmod.resolve(request.preset, cfgmod.BASELINE, dict(request.sets),
                                                           library, request.scale)
    base_tokens = chinchilla(baseline, world).tokens
    return {arm: fixed_budget(cfg, world, base_tokens) for arm, cfg in configs.items()}


def run_spec(cfg: cfgmod.ArmConfig, seed: int, budget: Budget, sweep: str, world_size: int,
             data: DataFacts = DataFacts("", ""), vary: str = "", fixed: dict[str, int] | None = None,
             replica: int = 0, budget_factor: float = 1.0, start_from: str = "",
             anchor_steps: list[int] | None = None, workdir: str = "") -> RunSpec:
    """One run (thirteen parameters: a spec's fields that the plan decides, named one by one): its
    identity is what it computes (harness.store.record.run_identity); its id is that
    identity under a readable label (the arm, the seed, and what was varied or fixed if anything)."""
    seeds = sub_seeds(seed, vary, fixed)
    config = scheme.recorded(cfg.as_dict())
    experiment = scheme.experiment_hash(config, budget.tokens, budget.tokens_per_step, data.data_id)
    identity = run_identity(experiment, seeds["init"], seeds["data"], seeds["dropout"], replica)
    if budget_factor != 1.0:
        tag = f"-x{budget_factor:.3g}"
    elif replica:
        tag = f"-rep{replica}"
    elif seeds == sub_seeds(seed):
        tag = ""
    else:
        tag = f"-{vary}" if vary else "-fixed"
    label = "+".join(sorted(cfgmod.split_arm(cfg.arm))) or cfgmod.BASELINE
    return RunSpec(
        run_id=f"{label.replace('/', '_')}-s{seed}{tag}-{identity[:10]}", sweep=sweep, arm=cfg.arm, seed=seed,
        init_seed=seeds["init"], data_seed=seeds["data"], dropout_seed=seeds["dropout"], preset=cfg.preset,
        config=config, overrides=cfg.overrides, config_hash=experiment, params=budget.params,
        tokens=budget.tokens, steps=budget.steps, tokens_per_step=budget.tokens_per_step, world_size=world_size,
        vary=vary, identity=identity, data_id=data.data_id, replica=replica,
        intervention_sets=dict(cfg.intervention_sets), budget_factor=budget_factor, start_from=start_from,
        anchor_steps=list(anchor_steps or []), identity_scheme=scheme.current_scheme(), workdir=workdir,
    )


def with_known_ids(plan: Plan) -> Plan:
    """Give each run the id under which the store already knows what it computes: a run recorded
    or started under another id, or recorded before identities existed (harness.store.identity)."""
    store = ResultsStore(plan.results)
    if not store.runs_path.exists() and not (plan.results / "runs").is_dir():
        return plan
    known = store.run_ids_by_identity()
    if not known:
        return plan
    test_sets = {arm: f.test_set_id for arm, f in plan.data.items()}
    specs, changed = [], {}
    for s in plan.specs:
        found = known.get(s.identity)
        earlier = earlier_identities(s) if found is None else {}
        if found is None and test_sets.get(s.arm) and not earlier:  # legacy rows predate any meaning change
            found = known.get(legacy_key(s.config, s.tokens, s.tokens_per_step,
                                         {"init": s.init_seed, "data": s.data_seed, "dropout": s.dropout_seed},
                                         s.replica, test_sets[s.arm]))
        if found is None:
            for why, old in earlier.items():
                if old in known:
                    changed.setdefault(why, []).append(known[old])
        specs.append(dataclasses.replace(s, run_id=found) if found and found != s.run_id else s)
    plan.specs = specs
    plan.notes += [f"{len(runs)} run(s) of this store ({', '.join(runs[:3])}{', ...' if len(runs) > 3 else ''}) were "
                   f"recorded before {why}: they computed something else, are kept as they are, and are not reused"
                   for why, runs in changed.items()]
    return plan


def earlier_identities(s: RunSpec) -> dict[str, str]:
    """The identities `s` would have had under each earlier identity scheme whose runs computed
    something else (harness.core.scheme.MeaningChange), keyed by what changed since."""
    now = scheme.experiment(s.config, s.tokens, s.tokens_per_step, s.data_id)
    out = {}
    for earlier in range(1, s.identity_scheme):
        then = scheme.experiment(s.config, s.tokens, s.tokens_per_step, s.data_id, earlier)
        if then != now:
            why = "; ".join(f"{k} ({v})" for k, v in now.items() if then.get(k) != v)
            out[why] = run_identity(cfgmod.config_hash(then), s.init_seed, s.data_seed, s.dropout_seed, s.replica)
    return out


def definition_notes(preset: str, arms: list[str], library: Library) -> list[str]:
    """Where a user's definition takes the place of a built-in one, say so."""
    found = [library.find("preset", preset)]
    found += [library.find("intervention", name) for arm in arms for name in cfgmod.split_arm(arm)]
    return [n for n in dict.fromkeys(shadow_note(d) for d in found) if n]


def identical_arms(configs: dict[str, cfgmod.ArmConfig],
                   budgets: dict[str, Budget]) -> dict[str, tuple[str, str]]:
    """Arms whose runs would compute what an earlier arm's compute (the one rule of a run's identity,
    harness.core.scheme.experiment: same interventions in another order, one the preset or --set
    already applies, or keys that are not part of what a run computes, such as placement knobs or
    a budget rule under --tokens): arm -> (that earlier arm, what differs only in form)."""
    first: dict[str, tuple[str, dict]] = {}
    same = {}
    for arm in sorted(configs, key=lambda a: a != cfgmod.BASELINE):  # the baseline is the one kept
        cfg = configs[arm]
        config = cfg.as_dict()
        key = scheme.experiment_hash(scheme.recorded(config), budgets[arm].tokens, budgets[arm].tokens_per_step)
        if key not in first:
            first[key] = (arm, config)
            continue
        earlier, before = first[key]
        flat = lambda c: scheme.trainer_table(c)["settings"] if scheme.trainer_table(c) is not None else \
            {k: v for section in ("model", "train") for k, v in c[section].items()}  # noqa: E731
        differ = sorted(k for k, v in flat(config).items() if flat(before).get(k) != v)
        same[arm] = (earlier, f" (it differs only in {', '.join(differ)}: not part of what a run computes)"
                     if differ else "")
    return same


def inert_arms(configs: dict[str, cfgmod.ArmConfig], on_gpu: bool) -> dict[str, str]:
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
            if all(cfgmod.effective(cfg, k, on_gpu) == cfgmod.effective(base, k, on_gpu) for k in differing):
                changed = ", ".join(f"{k}={cfgmod.value_of(cfg, k)}" for k in sorted(differing))
                inert[arm] = (f"{changed} is what the baseline already runs with on {'GPUs' if on_gpu else 'a CPU'}, "
                              "so this arm trains the baseline again")
    return inert


def default_sweep_name(preset: str, arms: list[str]) -> str:
    named = [a for a in arms if a != cfgmod.BASELINE] or [cfgmod.BASELINE]
    return f"{preset}-{','.join(named)}"


def check_test_sets(facts: dict[str, DataFacts]) -> None:
    """Refuse before training what no report can compare: arms measured on different test sets (an
    intervention that sets data or tokenizer)."""
    base = facts.get(cfgmod.BASELINE)
    other = [arm for arm, f in facts.items() if base is not None and f.test_set_id != base.test_set_id]
    if other:
        raise UserError(f"arm {other[0]!r} would be measured on another test set than the baseline (its data or "
                        "tokenizer differs), and no report compares test losses on different test sets; compare "
                        "corpora with one sweep each (--data), or set the corpus for every arm with --set")


def check_test_split(arm: str, tokens: int, cfg: cfgmod.ArmConfig) -> None:
    """The test split against what reads it, before anything trains (the corpus already refuses a
    split of fewer than 2 tokens): held-out points on a subset (heldout_tokens > 0) evaluate whole
    windows of context_length + 1 tokens."""
    T = cfg.model.context_length
    if cfg.train.heldout_points and cfg.train.heldout_tokens and tokens < T + 1:
        raise UserError(f"arm {arm!r}: the held-out points evaluate whole windows of context_length + 1 = {T + 1} "
                        f"tokens, but the test split of {cfg.train.data!r} has {tokens}: set heldout_tokens=0 "
                        "(the whole split, as the test loss), heldout_points=0, or give a longer test split")


def check_data(configs: dict[str, cfgmod.ArmConfig], budgets: dict[str, Budget]) -> tuple[dict[str, DataFacts], list[str]]:
    """Check (and build or verify, once in this process) every arm's corpus: a prepared folder's
    tokenizer, the model's vocabulary, and that the budget fits the training split. Returns each
    arm's corpus facts (its content is part of its runs' identity) and notes."""
    from harness.data.batches import check_epochs
    from harness.data.corpus import load_corpus
    from harness.data.prepare import check_tokenizer

    notes, facts = [], {}
    for arm, cfg in configs.items():
        check_tokenizer(cfg.train.data, cfg.train.tokenizer)
        corpus = load_corpus(cfg.train.data, cfg.train.tokenizer)
        if corpus.vocab_size > cfg.model.vocab_size:
            raise UserError(f"arm {arm!r}: tokenizer {cfg.train.tokenizer!r} has {corpus.vocab_size:,} tokens but "
                            f"the model's vocab_size is {cfg.model.vocab_size:,}")
        check_test_split(arm, len(corpus.test), cfg)
        epochs = check_epochs(budgets[arm].tokens, len(corpus.train), cfg.model.context_length, cfg.train.allow_repeat)
        if epochs > 1:
            notes.append(f"{arm}: the budget repeats the training data {epochs:.2f} times (allow_repeat)")
        facts[arm] = DataFacts(corpus.data_id, corpus.test_set_id)
    return facts, list(dict.fromkeys(notes))
