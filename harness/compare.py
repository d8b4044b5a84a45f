"""One sweep's comparison with its baseline: statistics, run accounting, provenance (no rendering).

Every number comes from harness.stats; this module decides which rows go in (completed runs of
the sweep), counts every seed that was started, and records what the arms were run with.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness import stats
from harness.outcomes import OUTCOMES, check_integrity
from harness.record import COMPLETED


@dataclass
class SweepReport:
    sweep: str
    baseline: str
    has_baseline: bool
    table: pd.DataFrame
    accounting: pd.DataFrame
    problems: pd.DataFrame
    mismatches: list[str]
    allow_mismatch: bool
    noise: dict
    provenance: dict
    notes: list[str]
    plots: dict[str, Path] = field(default_factory=dict)


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
    fields = ["interventions", "config_hash", "preset", "planned_tokens", "test_set_id",
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


def _parse_json(text: str):
    try:
        return json.loads(text) if text else {}
    except (TypeError, ValueError):
        return text


def build_sweep_report(
    outcomes: pd.DataFrame, sweep: str, baseline: str, *, alpha: float, margin: float | None,
    power: float, n_resamples: int, boot_seed: int, allow_mismatch: bool,
    mismatches: list[str] | None = None,
) -> SweepReport:
    """Statistics and accounting for one sweep (no rendering, no files)."""
    rows = outcomes[outcomes["sweep"].eq(sweep)]
    arms = arm_order(rows["arm"].unique(), baseline)
    has_baseline = baseline in set(arms)
    notes: list[str] = []
    if not has_baseline:
        notes.append(f"no arm named {baseline!r} in this sweep (arms: {', '.join(arms)}); "
                     "only descriptive statistics are shown (choose one with --baseline)")
    if mismatches is None:
        mismatches = check_integrity(rows, arms)
    done = rows[rows["outcome"].eq(COMPLETED)]
    table = stats.compare_arms(
        done[["arm", "seed", "test_loss"]], baseline, alpha=alpha, margin=margin, power=power,
        n_resamples=n_resamples, seed=boot_seed, arms=arms,
    )
    if not has_baseline:
        table = table[table["arm"] != baseline].reset_index(drop=True)
    counts = (rows.pivot_table(index="arm", columns="outcome", values="seed", aggfunc="count")
              .reindex(index=arms, columns=list(OUTCOMES)).fillna(0).astype(int))
    counts.insert(0, "seeds", counts.sum(axis=1))
    counts["attempts"] = rows.groupby("arm")["attempts"].sum().reindex(arms).fillna(0).astype(int)
    accounting = counts.reset_index().rename(columns={"index": "arm"})
    problems = rows[~rows["outcome"].eq(COMPLETED)][
        ["arm", "seed", "outcome", "status", "reason", "attempts", "run_id"]
    ].sort_values(["arm", "seed"]).reset_index(drop=True)
    short = rows[rows["outcome"].eq(COMPLETED)
                 & (rows["tokens_seen"] < rows["planned_tokens"])]
    if len(short):
        notes.append(f"{len(short)} completed run(s) saw fewer tokens than planned "
                     f"(e.g. {short.iloc[0]['arm']} seed {int(short.iloc[0]['seed'])}: "
                     f"{int(short.iloc[0]['tokens_seen'])} of "
                     f"{int(short.iloc[0]['planned_tokens'])})")
    base_losses = done.loc[done["arm"].eq(baseline), "test_loss"].to_numpy()
    noise = stats.noise_floor(base_losses, alpha, power)
    return SweepReport(
        sweep=sweep, baseline=baseline, has_baseline=has_baseline, table=table,
        accounting=accounting, problems=problems, mismatches=mismatches,
        allow_mismatch=allow_mismatch, noise=noise, provenance=_provenance(rows, arms),
        notes=notes,
    )
