"""A ladder's report (`harness ladder`): per rung and arm the paired difference and the compute
multiplier, and per arm the trend over sizes, its label and a prediction at the target size
(harness.stats.ladder does the arithmetic). No rendering here: harness.report.render_ladder.

A rung is an ordinary sweep and is reported as one; this module only reads its runs and its
SweepReport (what it withholds, whether it is complete, its multipliers). Across rungs the arms
may differ only by the ladder's size keys: any other difference is refused, or with
--allow-mismatch shown with the trends it touches withheld.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.core.config import BASELINE
from harness.core.errors import UserError
from harness.report.section import WITHHELD, ReportOptions, SweepReport
from harness.report.sameness import BUDGET, facts
from harness.stats import ladder as trendstats
from harness.stats.inference import holm
from harness.store.record import COMPLETED, ordinary_budget

SCALED = {"n_layers", "emb_dim", "n_heads", "lr", "global_batch", BUDGET, "tokens per step"}
RUNG_COLUMNS = ["sweep", "size", "params", "arm", "pairs", "diff", "low", "high", "k", "k_low", "k_high", "k_open", "k_state",
                "status"]
TREND_COLUMNS = ["arm", "rungs", "slope", "slope_low", "slope_high", "p_slope", "p_slope_holm", "pooled", "pooled_low",
                 "pooled_high", "p_pooled", "lack_of_fit_p", "prediction", "prediction_low", "prediction_high",
                 "label", "note"]
COMPLETE, NOT_STARTED = "complete", "not started"


@dataclass
class LadderReport:
    ladder: str
    preset: str
    arms: list[str]  # compared with the baseline
    target: str
    target_params: int
    measured: tuple[int, int]  # the rungs' smallest and largest parameter counts
    table: pd.DataFrame  # per rung and arm (RUNG_COLUMNS)
    trends: pd.DataFrame  # per arm (TREND_COLUMNS)
    notes: list[str]
    mismatches: list[str]
    options: ReportOptions
    scheme: str = ""
    plots: dict[str, Path] = field(default_factory=dict)

    @property
    def extrapolation(self) -> bool:
        return not self.measured[0] <= self.target_params <= self.measured[1]


def rung_facts(rows: pd.DataFrame) -> dict[str, dict[str, str]]:
    """Per arm, what its first completed run computes, without the keys the ladder scales."""
    out = {}
    done = rows[rows["outcome"].eq(COMPLETED)]
    for arm, g in done.groupby("arm", sort=False):
        row = next(g.itertuples())
        out[arm] = {k: v for k, v in facts(row, bool(row.data_id), streams=False).items() if k not in SCALED}
    return out


def across_rungs(per_rung: dict[str, dict[str, dict[str, str]]]) -> dict[str, list[str]]:
    """arm -> how its runs differ across rungs beyond the ladder's size keys (one text per key)."""
    found: dict[str, list[str]] = {}
    arms = {a for f in per_rung.values() for a in f}
    for arm in sorted(arms):
        seen = {sweep: f[arm] for sweep, f in per_rung.items() if arm in f}
        keys = sorted({k for f in seen.values() for k in f})
        for key in keys:
            values = {sweep: f.get(key, "(unset)") for sweep, f in seen.items()}
            if len(set(values.values())) > 1:
                shown = "; ".join(f"{sweep}: {v}" for sweep, v in list(values.items())[:4])
                found.setdefault(arm, []).append(f"{arm}: {key} differs across rungs ({shown})")
    return found


def paired_differences(rows: pd.DataFrame, arm: str, baseline: str = BASELINE) -> np.ndarray:
    """arm - baseline per shared seed (the report's baseline: `report --baseline` may name an arm)."""
    done = rows[rows["outcome"].eq(COMPLETED)].drop_duplicates(["arm", "seed"])
    by = done.set_index(["arm", "seed"])["test_loss"].astype(float)
    if arm not in by.index.get_level_values(0) or baseline not in by.index.get_level_values(0):
        return np.array([])
    own, base = by.loc[arm], by.loc[baseline]
    common = own.index.intersection(base.index).sort_values()
    return (own.loc[common] - base.loc[common]).to_numpy()


def rung_status(rep: SweepReport | None, arm: str, pairs: int, recorded: bool) -> str:
    """A rung's state for one arm; a rung with runs but no report was refused (not trained alike)."""
    if rep is None:
        return WITHHELD if recorded else NOT_STARTED
    if arm in rep.withheld:
        return WITHHELD
    if not rep.complete:
        return "not finished"
    return COMPLETE if pairs else "no paired runs"


def build_ladder_report(record: dict, outcomes: pd.DataFrame, reports: dict[str, SweepReport],
                        options: ReportOptions, resamples: int = trendstats.DEFAULT_RESAMPLES) -> LadderReport:
    """The report of one saved ladder (harness.store.planfile.ladder_record) from the store's
    resolved outcomes and its rungs' SweepReports (a rung without recorded runs has none). One
    function (about 80 lines): the rungs' table, the differences across rungs and each arm's trend
    read one another in that order."""
    alpha, baseline = options.alpha, options.baseline
    rungs = sorted(record["rungs"], key=lambda r: r["params"])
    arms = [a for a in dict.fromkeys([BASELINE, *record["arms"]]) if a != baseline]
    per_rung_rows = {r["sweep"]: ordinary_budget(outcomes[outcomes["sweep"].eq(r["sweep"])]) for r in rungs}
    mismatched = across_rungs({s: rung_facts(rows) for s, rows in per_rung_rows.items() if len(rows)})
    base_diffs = mismatched.get(baseline, [])
    mismatches = [t for arm in [baseline, *arms] for t in mismatched.get(arm, [])]
    if mismatches and not options.allow_mismatch:
        raise UserError("refusing a trend over rungs that were not trained alike beyond their size: "
                        + "; ".join(mismatches[:4]) + "; rerun them under a new --name, or pass --allow-mismatch to "
                        "see them with the trends withheld")
    table, notes = [], []
    for r in rungs:
        rows, rep = per_rung_rows[r["sweep"]], reports.get(r["sweep"])
        worth = rep.worth.table.set_index("arm") if rep is not None and rep.worth is not None else None
        for arm in arms:
            d = paired_differences(rows, arm, baseline)
            low, high = trendstats.rung_interval(d, alpha)
            k = worth.loc[arm] if worth is not None and arm in worth.index else None
            table.append({"sweep": r["sweep"], "size": r["size"], "params": int(r["params"]), "arm": arm,
                          "pairs": len(d), "diff": float(d.mean()) if len(d) else math.nan, "low": low, "high": high,
                          "k": math.nan if k is None else float(k["k"]),
                          "k_low": math.nan if k is None else float(k["k_low"]),
                          "k_high": math.nan if k is None else float(k["k_high"]),
                          "k_open": "" if k is None else str(k["k_open"]),
                          "k_state": "" if k is None else str(k["state"]),
                          "status": rung_status(rep, arm, len(d), len(rows) > 0), "_d": d})
    table = pd.DataFrame(table)
    trends = []
    log2_target = math.log2(record["target_params"])
    for arm in arms:
        own = table[table["arm"].eq(arm)]
        withheld = own[own["status"].eq(WITHHELD)]
        if arm in mismatched or base_diffs or len(withheld):
            where = ", ".join(withheld["size"]) or "across rungs"
            trends.append({"arm": arm, "label": f"{WITHHELD} ({where})", "rungs": 0})
            continue
        usable = own[[len(d) >= trendstats.MIN_PAIRS and np.var(d) > 0 for d in own["_d"]]]
        lacking = own[~own.index.isin(usable.index)]
        note = ""
        if len(lacking):
            note = "interim: " + "; ".join(f"rung {s} {st}" + (f" ({p} pairs)" if st == COMPLETE else "")
                                           for s, st, p in zip(lacking["size"], lacking["status"], lacking["pairs"]))
        elif (own["status"] != COMPLETE).any():
            note = "interim: " + "; ".join(f"rung {s} {st}" for s, st in zip(own["size"], own["status"]) if st != COMPLETE)
        intervals = list(zip(usable["low"], usable["high"]))
        if len(usable) < 2:
            trends.append({"arm": arm, "rungs": len(usable), "label": trendstats.label(None, intervals, alpha),
                           "note": (note + "; " if note else "") + "fewer than two rungs with two paired seeds"})
            continue
        t = trendstats.trend([d.mean() for d in usable["_d"]], [np.var(d, ddof=1) for d in usable["_d"]],
                             [len(d) for d in usable["_d"]], np.log2(usable["params"].to_numpy(float)), log2_target,
                             alpha, resamples, options.boot_seed)
        trends.append(t.as_dict() | {"arm": arm, "note": note, "_trend": t, "_intervals": intervals})
    trends = pd.DataFrame(trends).reindex(columns=[*TREND_COLUMNS, "_trend", "_intervals"])
    trends[["label", "note"]] = trends[["label", "note"]].astype(object).fillna("")
    tested = trends["p_slope"].notna()
    if tested.any():
        trends.loc[tested, "p_slope_holm"] = holm(trends.loc[tested, "p_slope"].to_numpy(float), alpha)
    for i in trends.index[tested]:
        lab = trendstats.label(trends.at[i, "_trend"], trends.at[i, "_intervals"], alpha, trends.at[i, "p_slope_holm"])
        note = trends.at[i, "note"]
        trends.at[i, "label"] = ("interim: " if isinstance(note, str) and note.startswith("interim") else "") + lab
        lack = trends.at[i, "lack_of_fit_p"]
        if np.isfinite(lack) and lack < alpha:
            trends.at[i, "note"] = ((note + "; ") if note else "") + (
                f"the rungs depart from a line in log parameters (lack of fit p = {lack:.3g}): the slope and the "
                "prediction summarise a curve that is not straight")
    params = [int(r["params"]) for r in rungs]
    if any(rep is not None and rep.adaptive is not None for rep in reports.values()):
        notes.append("the rungs are adaptive sweeps: each rung's seeds were chosen by its own sequential test; the "
                     "trend treats them as fixed numbers of pairs")
    return LadderReport(record["ladder"], record["preset"], arms, record["target"], int(record["target_params"]),
                        (min(params), max(params)), table.drop(columns="_d"),
                        trends.drop(columns=["_trend", "_intervals"]), notes, mismatches, options,
                        scheme=str(record.get("scheme", "")))
