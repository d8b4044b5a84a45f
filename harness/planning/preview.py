"""What a plan will cost, shown before it runs: the table of arms and budgets, the estimated wall
time from earlier runs in the store, and for an adaptive sweep the runs expected (simulated from
the effects and noise of earlier runs of its arms). Apart from harness.planning.plan, which only
builds plans: estimating reads the store and simulates, building does neither.
"""

from __future__ import annotations

import math

from harness.core import config as cfgmod
from harness.planning.plan import Plan
from harness.planning.request import format_seeds
from harness.store.record import COMPLETED
from harness.store.results import ResultsStore

EXPECTED_RUNS_SIMULATIONS = 2000
OVERHEAD_PAD_S = 5.0  # a run's fixed cost beyond what earlier runs measured (start, imports)


def estimate_seconds(plan: Plan, store: ResultsStore, jobs: int = 1) -> float | None:
    """Wall time from the speed of earlier runs of this preset on this world size in the store,
    `jobs` runs at a time. Speed as parameters x tokens per second, so that runs of another size
    of the preset (a ladder's rungs) scale by their parameters (roughly: the cost per token is
    about 6 x parameters FLOPs), or tokens per second where a size is not known."""
    frame = store.runs_frame()
    past = frame[(frame["preset"] == plan.preset) & (frame["world_size"] == plan.world_size)
                 & (frame["status"] == COMPLETED)]
    if past.empty or not plan.specs:
        return None
    overhead = float((past["wall_time_s"] - past["tokens_seen"] / past["tokens_per_s"]).median()) + OVERHEAD_PAD_S
    sized = past["params"].gt(0).all() and all(s.params > 0 for s in plan.specs)
    # where a size is not known (an external trainer's, given --tokens): tokens per second
    rate = float((past["tokens_per_s"] * (past["params"] if sized else 1)).median())
    if not rate > 0:
        return None
    return sum(s.tokens * (s.params if sized else 1) / rate + overhead for s in plan.specs) / min(jobs, len(plan.specs))


def expected_runs(plan: Plan, store: ResultsStore, sweeps: int = EXPECTED_RUNS_SIMULATIONS) -> float | None:
    """Expected runs of an adaptive plan, by simulation from each arm's effect and paired noise as
    observed in earlier runs of the same experiments in the store (any sweep); None without them."""
    from harness.stats.sequential import simulate

    a = plan.adaptive
    frame = store.runs_frame()
    if a is None or frame.empty:
        return None
    done = frame[(frame["status"] == COMPLETED)]
    by_hash = {s.arm: s.config_hash for s in plan.specs}
    base = done[done["config_hash"] == by_hash[cfgmod.BASELINE]].drop_duplicates("seed").set_index("seed")["test_loss"]
    effects, sds = [], []
    for arm in [arm for arm in plan.arms if arm != cfgmod.BASELINE]:
        own = done[done["config_hash"] == by_hash[arm]].drop_duplicates("seed").set_index("seed")["test_loss"]
        common = own.index.intersection(base.index)
        if len(common) < 2:
            return None
        d = (own.loc[common] - base.loc[common]).to_numpy(dtype=float)
        effects.append(float(d.mean()))
        sds.append(max(float(d.std(ddof=1)), 1e-12))
    sim = simulate(effects, sds, a.alpha, a.min_seeds, a.max_seeds, sweeps, a.margin)
    return float(sim["n"].max(axis=1).mean() + sim["n"].sum(axis=1).mean())


def print_plan(plan: Plan, console, jobs: int = 1) -> None:
    """The plan as a table, its notes, and what it will take."""
    from rich.table import Table

    store = ResultsStore(plan.results)
    table = Table(title=f"sweep {plan.sweep}: preset {plan.preset}, seeds {format_seeds(plan.seeds)}, "
                        f"{plan.world_size} process(es) per run")
    for col in ("arm", "params", "tokens", "steps", "tokens/step", "runs"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for arm in plan.arms:
        b = plan.budgets[arm]
        runs = sum(1 for s in plan.specs if s.arm == arm and s.budget_factor == 1.0)
        table.add_row(arm, f"{b.params:,}" if b.params else "-", f"{b.tokens:,}", f"{b.steps:,}", f"{b.tokens_per_step:,}", str(runs))
    for factor, b in plan.extensions.items():
        runs = sum(1 for s in plan.specs if s.budget_factor == factor)
        table.add_row(f"baseline at {factor:g}x", f"{b.params:,}", f"{b.tokens:,}", f"{b.steps:,}",
                      f"{b.tokens_per_step:,}", str(runs))
    console.print(table)
    for note in plan.notes:
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    est = estimate_seconds(plan, store, jobs)
    total_tokens = sum(s.tokens for s in plan.specs)
    when = f"about {format_duration(est)} (from earlier runs in {plan.results})" if est else \
        "unknown until a run of this preset has completed here"
    at_once = f", up to {jobs} at once" if jobs > 1 else ""
    if plan.noise is not None:
        n = plan.noise
        console.print(f"noise study: per arm {n['seeds']} runs varying only the initial weights, only the data order, "
                      f"only the dropout masks, and all three, plus {n['replicates']} with identical seeds (the seed-0 "
                      "run counts in every source, so it is trained once)")
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
    expected = expected_runs(plan, store)
    if expected is not None:
        console.print(f"runs expected: about {expected:,.0f} (simulated from the effects and noise of earlier runs of "
                      f"these arms in {plan.results})")
    else:
        console.print("runs expected: unknown until earlier runs of these arms are in the store "
                      "(at least 2 paired seeds per arm)")


def format_duration(seconds: float) -> str:
    minutes, s = divmod(int(math.ceil(seconds)), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m" if hours else f"{m}m{s:02d}s"


def print_ladder(ladder, console, jobs: int = 1) -> None:
    """A ladder's rungs as one table (size, parameters, learning rate, batch, budget, runs, time),
    its notes and its totals."""
    from rich.table import Table

    first = ladder.rungs[0].plan
    store = ResultsStore(first.results)
    table = Table(title=f"ladder {ladder.name}: preset {ladder.preset}, arms {', '.join(ladder.arms)}, seeds "
                        f"{format_seeds(first.seeds)}, {first.world_size} process(es) per run")
    for col in ("rung", "layers x width", "heads", "params", "lr", "global batch", "tokens", "steps", "runs",
                "estimated time"):
        table.add_column(col, justify="left" if col == "rung" else "right")
    total_s: float | None = 0.0
    for rung in ladder.rungs:
        b = rung.plan.budgets[cfgmod.BASELINE]
        est = estimate_seconds(rung.plan, store, jobs)
        total_s = None if est is None or total_s is None else total_s + est
        table.add_row(rung.sweep, rung.size.label, str(rung.size.n_heads), f"{rung.params:,}", f"{rung.lr:.3g}",
                      str(rung.global_batch), f"{b.tokens:,}", f"{b.steps:,}", str(len(rung.plan.specs)),
                      format_duration(est) if est is not None else "unknown")
    console.print(table)
    for note in dict.fromkeys([*ladder.notes, *(n for r in ladder.rungs for n in r.plan.notes)]):
        console.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    runs = sum(len(r.plan.specs) for r in ladder.rungs)
    tokens = sum(s.tokens for r in ladder.rungs for s in r.plan.specs)
    when = (f"about {format_duration(total_s)} (scaled by parameters from earlier runs of preset {ladder.preset} in "
            f"{first.results})" if total_s else f"unknown until a run of preset {ladder.preset} has completed here")
    most = "at most " if first.adaptive else ""
    console.print(f"{len(ladder.rungs)} rungs, {most}{runs} runs{f', up to {jobs} at once' if jobs > 1 else ''}, "
                  f"{most}{tokens:,} training tokens; estimated time {most if total_s else ''}{when}"
                  + ("; each rung is an adaptive sweep: seeds until its arms are decided" if first.adaptive else ""))
