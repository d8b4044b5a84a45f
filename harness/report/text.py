"""A sweep's test-text uncertainty: per arm, the paired difference's standard errors from the seeds
and from the test text, the interval over both, the floor the test set puts on what any number of
seeds can detect, and the units where the arm's difference is largest (harness.stats.text does the
arithmetic; the units are the final evaluation's, harness.data.batches.evaluation_units).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.stats.text import MIN_SEEDS, run_text_se, signal_to_noise, split_uncertainty, unit_means
from harness.store.record import unpack_units

COLUMNS = ["arm", "seeds", "diff", "se_seed", "se_text", "se", "df", "low", "high", "floor", "text_share",
           "dominant", "seeds_for_text_to_dominate", "note"]
UNIT_COLUMNS = ["unit", "first_token", "last_token", "share", "diff", "se_seed"]
TOP_UNITS = 3  # units shown each way per arm: a short table, not a ranking to trust
NOT_DETECTED = "not detected"  # a test-text part (se_text) whose unbiased estimate fell to zero or below


@dataclass
class TextReport:
    units: str  # what a unit is, as the runs recorded it
    n_units: int
    table: pd.DataFrame  # COLUMNS, one row per compared arm
    helps: dict[str, pd.DataFrame] = field(default_factory=dict)  # arm -> the units where it lowers loss most
    hurts: dict[str, pd.DataFrame] = field(default_factory=dict)  # arm -> the units where it raises loss most
    run_text_se: float = math.nan  # median over runs: one run's test loss's SE over test texts
    seed_sd: float = math.nan  # pooled within-arm sd of one run's test loss over seeds
    snr: float = math.nan  # Heineman et al.'s signal-to-noise: arms' spread / seed sd
    snr_text: float = math.nan  # the same signal over one run's test-text SE
    note: str = ""  # what is missing

    def dominance(self) -> str:
        """One sentence: which source of uncertainty dominates this sweep's differences."""
        rows = self.table[np.isfinite(self.table["se"].astype(float))]
        if rows.empty:
            return ""
        text = list(rows.loc[rows["dominant"].eq("test text"), "arm"])
        if not text:
            detected = rows.loc[rows["se_text"].astype(float) > 0, "floor"]
            floor = (f"(at most {detected.max():.4g} nats)" if len(detected) else
                     f"({NOT_DETECTED}: the test text's part estimated at zero for every arm)")
            return f"The seeds dominate for every arm: more seeds narrow the intervals, down to the test set's floor {floor}."
        if len(text) == len(rows):
            return ("The test text dominates for every arm: more seeds will barely narrow the intervals; a larger "
                    "test set would.")
        return (f"The test text dominates for {', '.join(text)} (more seeds barely narrow those intervals; a larger "
                "test set would); the seeds dominate for the others.")


def _unit_table(order, mean, se, spans, weights) -> pd.DataFrame:
    return pd.DataFrame([{"unit": int(u), "first_token": int(spans[u][0]), "last_token": int(spans[u][1]),
                          "share": float(weights[u]), "diff": float(mean[u]), "se_seed": float(se[u])}
                         for u in order], columns=UNIT_COLUMNS)


def build_text(done: pd.DataFrame, baseline: str, alpha: float) -> TextReport | None:
    """The section for one sweep's completed runs at its own budget (one row per arm and seed), or
    None when no run has per-unit sums and nothing needs saying."""
    if done.empty:
        return None
    have = {}
    for r in done.itertuples():  # the store's loading gives every row every column of the run record
        packed = unpack_units(r.unit_loss_sums, r.unit_tokens)
        if packed is not None:
            have[r.run_id] = packed
    missing = len(done) - len(have)
    lacking = (f"{missing} of {len(done)} completed runs have no per-unit test sums (recorded before harness kept "
               "them); they are left out here" if missing else "")
    if not have:
        return TextReport(units="", n_units=0, table=pd.DataFrame(columns=COLUMNS),
                          note="no run has per-unit test sums (runs imported from elsewhere, or recorded before harness kept "
                               "them): the test text's uncertainty cannot be shown; new runs keep them")
    with_units = done[done["run_id"].isin(have)]
    tokens0 = np.asarray(have[with_units["run_id"].iloc[0]][1], dtype=float)
    if any(not np.array_equal(np.asarray(have[i][1], dtype=float), tokens0) for i in with_units["run_id"]):
        return TextReport(units="", n_units=0, table=pd.DataFrame(columns=COLUMNS),
                          note="the runs' test units differ (another test set or unit rule): not compared")
    kinds = with_units["test_units"].astype(str).unique()
    means, weights = unit_means(np.vstack([have[i][0] for i in with_units["run_id"]]), tokens0)
    loss = dict(zip(with_units["run_id"], means))
    ends = np.cumsum(tokens0).astype(int)  # a unit's targets are consecutive positions of the split
    spans = [(int(e - t) + 1, int(e)) for e, t in zip(ends, tokens0)]
    per_arm = {arm: {int(r.seed): loss[r.run_id] for r in g.itertuples()} for arm, g in with_units.groupby("arm")}

    base = per_arm.get(baseline, {})
    rows, helps, hurts = [], {}, {}
    for arm, seeds in sorted(per_arm.items()):
        if arm == baseline:
            continue
        shared = sorted(set(seeds) & set(base))
        row = {"arm": arm, "seeds": len(shared), "note": ""}
        if len(shared) < MIN_SEEDS:
            rows.append({**row, "note": f"needs {MIN_SEEDS} seeds shared with the baseline with per-unit sums "
                                        f"(has {len(shared)})"})
            continue
        D = np.vstack([seeds[s] - base[s] for s in shared])
        try:
            split = split_uncertainty(D, weights, alpha)
        except ValueError as e:
            rows.append({**row, "note": f"not split: {e}"})
            continue
        rows.append({**row, "diff": split.diff, "se_seed": split.se_seed, "se_text": split.se_text, "se": split.se,
                     "df": split.df, "low": split.low, "high": split.high, "floor": split.floor,
                     "text_share": split.text_share, "dominant": split.dominant,
                     "seeds_for_text_to_dominate": split.seeds_for_text_to_dominate()})
        mean, se = D.mean(axis=0), D.std(axis=0, ddof=1) / math.sqrt(len(shared))
        order = np.argsort(mean, kind="stable")
        helps[arm] = _unit_table(order[:TOP_UNITS], mean, se, spans, weights)
        hurts[arm] = _unit_table(order[::-1][:TOP_UNITS], mean, se, spans, weights)
    report = TextReport(units=", ".join(kinds), n_units=len(tokens0), table=pd.DataFrame(rows, columns=COLUMNS),
                        helps=helps, hurts=hurts, note=lacking)
    report.run_text_se = float(np.median([run_text_se(v, weights) for v in loss.values()]))
    test_loss = with_units.groupby("arm")["test_loss"]
    var, dof = test_loss.var(ddof=1).fillna(0.0), test_loss.count() - 1
    report.seed_sd = float(math.sqrt((var * dof).sum() / dof.sum())) if dof.sum() > 0 else math.nan
    report.snr = signal_to_noise(test_loss.mean().to_numpy(), report.seed_sd)
    report.snr_text = signal_to_noise(test_loss.mean().to_numpy(), report.run_text_se)
    return report
