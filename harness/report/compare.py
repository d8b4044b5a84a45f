"""One sweep's comparison with its baseline: which rows go in (completed runs of the sweep), every
seed that was started, what the arms were run with, and its sections (no rendering here).

Each section builds its own numbers and renders them (harness.report.section); SECTIONS is their
order in the report.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.stats import noise

from harness.planning.adaptive import Adaptive, round_arms
from harness.report import noise_floor, pairing, text, verdicts, worth
from harness.report.outcomes import OUTCOMES
from harness.report.sameness import Difference, streams_held
from harness.report.sameness import differences as find_differences
from harness.report.section import ReportOptions, Section, SweepData, SweepReport
from harness.core.seeds import REPLICATE, roles
from harness.core.config import BASELINE
from harness.store.imported import external_trainer, is_imported
from harness.store.record import COMPLETED, ordinary_budget


SECTIONS: tuple[Section, ...] = (verdicts.SECTION, worth.SECTION, text.SECTION, noise_floor.SECTION,
                                 pairing.SECTION)


def arm_order(arms: Sequence[str], baseline: str) -> list[str]:
    rest = sorted(a for a in set(arms) if a != baseline)
    return ([baseline] if baseline in set(arms) else []) + rest


def _unique_join(values) -> str:
    vals = sorted({str(v) for v in values} - {"", "nan", "<NA>"})
    return ", ".join(vals) if vals else "-"


def _provenance(rows: pd.DataFrame, arms: Sequence[str]) -> dict:
    text = rows[["arm", "interventions", "config_hash", "preset", "test_set_id", "dtype",
                 "device"]].copy()
    for col in ("planned_tokens", "world_size"):
        v = rows[col]
        text[col] = v.map(lambda x: str(int(x)) if np.isfinite(x) else "")
    text["code"] = rows["config"].map(_code_files)
    fields = ["interventions", "config_hash", "code", "preset", "planned_tokens", "test_set_id",
              "dtype", "device", "world_size"]
    uniq = {arm: g for arm, g in text.groupby("arm", sort=False)}
    per_arm = []
    for arm in arms:
        g = uniq.get(arm)
        per_arm.append({"arm": arm, **{f: _unique_join(g[f].unique()) if g is not None else "-"
                                       for f in fields}})
    versions = rows["versions"].value_counts()
    commits = rows["git_commit"].value_counts()
    return {
        "arms": per_arm,
        "versions": [{"versions": _parse_json(v), "runs": int(c)} for v, c in versions.items()],
        "git_commits": [{"commit": k or "unknown", "runs": int(c)} for k, c in commits.items()],
    }


def _code_files(config_text) -> str:
    """A run's code interventions (harness.core.code) as file and content hash, in the arm's order."""
    config = _parse_json(config_text)
    entries = config.get("code") if isinstance(config, dict) else None
    return " + ".join(f"{e.get('file')} {str(e.get('sha256'))[:12]}" for e in entries) if entries else ""


def _parse_json(text: str):
    try:
        return json.loads(text) if text else {}
    except (TypeError, ValueError):
        return text


def build_sweep_report(outcomes: pd.DataFrame, sweep: str, options: ReportOptions, *,
                       differences: list[Difference] | None = None, adaptive: Adaptive | None = None,
                       inert: dict[str, str] | None = None, planned: list[dict] | None = None,
                       curves: pd.DataFrame | None = None) -> SweepReport:
    """Statistics and accounting for one sweep (no rendering, no files). `differences`: how its
    arms were not trained alike (harness.report.sameness; the verdicts they touch are withheld);
    `inert`: arms that change nothing where they ran (an A/A comparison), with why; `planned`: the
    runs its saved plan names, so a sweep reported before it is complete says what is missing;
    `curves`: the store's curves, for the held-out points (harness.report.worth)."""
    baseline = options.baseline
    every_budget = outcomes[outcomes["sweep"].eq(sweep)]
    rows = ordinary_budget(every_budget)  # the baseline's runs at other budgets are the compute multiplier's only
    arms = arm_order(rows["arm"].unique(), baseline)
    has_baseline = baseline in set(arms)
    notes: list[str] = []
    if not has_baseline:
        notes.append(f"no arm named {baseline!r} in this sweep (arms: {', '.join(arms)}); "
                     "only descriptive statistics are shown (choose one with --baseline)")
    notes += [f"{arm} is an A/A comparison, not an intervention: {why}"
              for arm, why in (inert or {}).items() if arm in set(arms)]
    if differences is None:
        differences = find_differences(rows, arms, baseline)
    mismatches = [d.text for d in differences]
    withheld = set().union(*(d.arms for d in differences)) - {baseline} if differences else set()
    done = rows[rows["outcome"].eq(COMPLETED)]
    twice = done[done.duplicated(["arm", "seed"], keep=False)]
    if len(twice):  # two runs of one arm at one seed (different experiments): the first recorded counts
        first = twice.drop_duplicates(["arm", "seed"]).iloc[0]
        notes.append(f"{len(twice)} completed runs share an arm and seed with another run (e.g. {first['arm']} seed "
                     f"{int(first['seed'])}); each pair is one seed of an arm, so only its first recorded run is in n")
        done = done.sort_values("finished_at", kind="mergesort").drop_duplicates(["arm", "seed"])
    missing = missing_runs(every_budget, planned, adaptive)
    if missing:
        notes.insert(0, missing)
    notes += _where_from(done, rows)
    accounting, problems = _accounting(rows, arms)
    data = SweepData(baseline=baseline, options=options, arms=arms, every_budget=every_budget, rows=rows,
                     done=done, accounting=accounting, withheld=frozenset(withheld),
                     interim=bool(missing) and adaptive is None, curves=curves, adaptive=adaptive)
    return SweepReport(
        sweep=sweep, baseline=baseline, has_baseline=has_baseline, accounting=accounting, problems=problems,
        mismatches=mismatches, allow_mismatch=options.allow_mismatch, provenance=_provenance(rows, arms),
        notes=notes, options=options, parts={s.key: s.build(data) for s in SECTIONS}, withheld=sorted(withheld),
        complete=not missing,
    )


def _where_from(done: pd.DataFrame, rows: pd.DataFrame) -> list[str]:
    """Notes on what harness cannot vouch for: runs imported or trained by an external trainer,
    random streams held fixed, runs that saw fewer tokens than planned."""
    notes = []
    source, trainer = is_imported(done), external_trainer(done)
    if source:
        notes.append(f"imported from {source}: harness did not train these runs, so it cannot vouch for their "
                     "pairing, budget or test set; the seeds are paired as the file declares them, not verified "
                     "(the pairing section measures it: a correlation near zero says the seeds were not honoured), "
                     "and the sections that need held-out curves or per-unit test sums are not shown")
    if trainer:
        notes.append(f"trained by an external trainer ({trainer}): harness planned the budgets and seeds, checked "
                     "each result and ran each arm's settings, but the pairing is declared by the trainer, not "
                     "verified by harness (the pairing section measures it: a correlation near zero says the seeds "
                     "were not honoured)")
    held = held_streams(done) if not source else ""  # an imported run's sub-seeds are the file's, not harness's
    if held:
        notes.append(f"random streams held fixed (not varied with the seed): {held}; the verdicts generalise over the "
                     "other streams only, and the pairing figures measure what pairing cancels of those")
    short = rows[rows["outcome"].eq(COMPLETED) & (rows["tokens_seen"] < rows["planned_tokens"])]
    if len(short):
        first = short.iloc[0]
        notes.append(f"{len(short)} completed run(s) saw fewer tokens than planned (e.g. {first['arm']} seed "
                     f"{int(first['seed'])}: {int(first['tokens_seen'])} of {int(first['planned_tokens'])})")
    return notes


def _accounting(rows: pd.DataFrame, arms: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per arm, every seed started by outcome and its attempts; and the runs not in n."""
    counts = (rows.pivot_table(index="arm", columns="outcome", values="seed", aggfunc="count")
              .reindex(index=arms, columns=list(OUTCOMES)).fillna(0).astype(int))
    counts.insert(0, "seeds", counts.sum(axis=1))
    counts["attempts"] = rows.groupby("arm")["attempts"].sum().reindex(arms).fillna(0).astype(int)
    problems = rows[~rows["outcome"].eq(COMPLETED)][["arm", "seed", "outcome", "status", "reason", "attempts",
                                                     "run_id"]].sort_values(["arm", "seed"]).reset_index(drop=True)
    return counts.reset_index().rename(columns={"index": "arm"}), problems


def held_streams(done: pd.DataFrame) -> str:
    """The random streams some completed run holds fixed (not derived from its seed), '' for none."""
    held = sorted({h for r in done.itertuples() for h in [streams_held(r)] if h and h != "none"})
    return "; ".join(held)


def missing_runs(rows: pd.DataFrame, planned: list[dict] | None, adaptive: Adaptive | None) -> str:
    """One sentence on what a sweep reported before it is complete still lacks ('' when nothing):
    planned runs without a recorded result. An adaptive sweep's plan lists every seed it may run,
    so only the rounds it has started count there."""
    if not planned:
        return ""
    recorded = set(rows["run_id"])
    wanted = [r for r in planned if isinstance(r, dict) and "run_id" in r]
    if adaptive is not None:
        base_seeds = rows.loc[rows["arm"].eq(BASELINE), "seed"]
        if base_seeds.empty:
            return ""
        latest = int(base_seeds.max())
        compared = sorted({str(r.get("arm")) for r in wanted} - {BASELINE})
        give = set(round_arms(rows, compared, BASELINE, adaptive, latest))
        wanted = [r for r in wanted if r.get("seed") == latest and r.get("arm") in give]
    lacking = [r for r in wanted if r["run_id"] not in recorded]
    if not lacking:
        return ""
    per_arm: dict[str, list[int]] = {}
    for r in lacking:
        per_arm.setdefault(str(r.get("arm")), []).append(int(r.get("seed", -1)))
    detail = "; ".join(f"{arm} seed{'s' if len(s) > 1 else ''} {', '.join(map(str, sorted(s)[:8]))}"
                       + (f" and {len(s) - 8} more" if len(s) > 8 else "") for arm, s in per_arm.items())
    return (f"INCOMPLETE: {len(lacking)} of {len(wanted)} planned runs have no result yet ({detail}); the figures "
            f"below are interim, on the runs recorded so far" + ("" if adaptive is None else
            " (this round of the adaptive sweep is still running)"))


def noise_roles(r) -> dict[str, int]:
    """The noise-study groups a completed run counts in (harness.core.seeds.roles): from its
    sub-seeds, so the ordinary seed-0 run is every source's seed 0; a row without sub-seeds (a
    hand-made table) by its vary label. Rows older than replica numbers were replicate r at seed r."""
    seeds = (r.init_seed, r.data_seed, r.dropout_seed)
    if not all(np.isfinite(s) for s in seeds):
        return {r.vary: int(r.seed)}
    replica = int(r.replica) if np.isfinite(r.replica) and r.replica else (int(r.seed) if r.vary == REPLICATE else 0)
    return roles(int(r.seed), *(int(s) for s in seeds), replica=replica)


@dataclass
class NoiseReport:
    """A noise study (harness noise): variance components per source, for the baseline and an arm,
    the paired difference per source, and the smallest detectable differences."""

    sweep: str
    baseline: str
    arm: str | None
    components: dict[str, pd.DataFrame]  # arm -> harness.stats.noise.components
    paired: pd.DataFrame | None  # harness.stats.noise.paired_components, with an arm
    detect: dict[int, float]
    detect_paired: bool
    replicates_identical: bool | None  # None: fewer than 2 replicates
    notes: list[str]
    provenance: dict
    options: ReportOptions
    plots: dict[str, Path] = field(default_factory=dict)


def build_noise_report(outcomes: pd.DataFrame, sweep: str, options: ReportOptions, settings: dict,
                       planned: list[dict] | None = None) -> NoiseReport:
    baseline, alpha, power = options.baseline, options.alpha, options.power
    rows = outcomes[outcomes["sweep"].eq(sweep) & outcomes["outcome"].eq(COMPLETED)]
    arm = settings.get("arm")
    by_source: dict[str, dict[str, pd.Series]] = {}
    for name in [a for a in (baseline, arm) if a]:
        groups: dict[str, dict[int, float]] = {}
        for r in rows[rows["arm"].eq(name)].itertuples():
            for role, index in noise_roles(r).items():
                groups.setdefault(role, {}).setdefault(index, float(r.test_loss))
        by_source[name] = {v: pd.Series(g, dtype=float).sort_index() for v, g in groups.items()}
    tables = {name: noise.components({v: s.to_numpy() for v, s in src.items()}, alpha)
              for name, src in by_source.items()}
    paired = noise.paired_components(by_source[baseline], by_source[arm], alpha) if arm and arm in by_source else None
    if paired is not None and (paired["source"] == noise.ALL).any():
        sd, is_paired = float(paired.loc[paired["source"] == noise.ALL, "sd_diff"].iloc[0]), True
    else:
        base = tables.get(baseline)
        sd = float(base.loc[base["source"] == noise.ALL, "sd"].iloc[0]) if base is not None and \
            (base["source"] == noise.ALL).any() else float("nan")
        is_paired = False
    replicate = by_source.get(baseline, {}).get(noise.REPLICATE)
    identical = None if replicate is None or len(replicate) < 2 else bool(np.ptp(replicate.to_numpy()) == 0)
    notes = []
    missing = [f"{name}: {noise.LABELS[v]}" for name, src in by_source.items()
               for v in (*noise.SOURCES, noise.ALL) if len(src.get(v, ())) < 2]
    if missing:
        notes.append("fewer than 2 completed runs (no spread yet) for " + "; ".join(missing))
    lacking = missing_runs(outcomes[outcomes["sweep"].eq(sweep)], planned, None)  # the shares of a partial study
    if lacking:
        notes.insert(0, lacking)
    return NoiseReport(sweep, baseline, arm, tables, paired, noise.detectable(sd, is_paired, alpha, power),
                       is_paired, identical, notes, _provenance(outcomes[outcomes["sweep"].eq(sweep)], list(by_source)),
                       options)
