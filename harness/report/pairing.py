"""The pairing section: what pairing by seed bought each arm (correlation with the baseline, the
variance it cancelled, the unpaired seeds it is worth; harness.stats.pairing does the arithmetic)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import pandas as pd
from rich.markup import escape

from harness.report.cells import md_escape, md_table
from harness.report.section import Section, SweepData, SweepReport
from harness.stats.pairing import fraction, pairing_gain

COLUMNS = ["arm", "n", "correlation", "variance_ratio", "ratio_low", "ratio_high", "equivalent_seeds", "sentence"]


def pairing_table(done: pd.DataFrame, arms: Sequence[str], baseline: str, alpha: float) -> pd.DataFrame:
    """Per arm that shares at least 3 seeds with the baseline: correlation, variance ratio
    unpaired/paired with its interval, equivalent unpaired seeds (harness.stats.pairing)."""
    by = done.drop_duplicates(["arm", "seed"]).set_index(["arm", "seed"])["test_loss"]
    rows = []
    if baseline in by.index.get_level_values(0):
        base = by.loc[baseline]
        for arm in arms:
            if arm == baseline or arm not in by.index.get_level_values(0):
                continue
            own = by.loc[arm]
            common = own.index.intersection(base.index)
            gain = pairing_gain(own.loc[common].to_numpy(), base.loc[common].to_numpy(), alpha)
            if gain.n >= 3 and np.isfinite(gain.correlation) and np.isfinite(gain.variance_ratio):
                rows.append({"arm": arm, **asdict(gain), "sentence": gain.sentence()})
    return pd.DataFrame(rows, columns=COLUMNS)


def build(data: SweepData) -> pd.DataFrame:
    return pairing_table(data.done, data.arms, data.baseline, data.options.alpha)


def pairing_sentence(pairing: pd.DataFrame) -> str:
    """Pairing in one sentence: the median arm."""
    mid = pairing.sort_values("variance_ratio").iloc[(len(pairing) - 1) // 2]
    over = f" (the median of {len(pairing)} arms)" if len(pairing) > 1 else ""
    return (f"Pairing by seed{over}: arm and baseline correlate at r = {mid.correlation:.2f}, so the paired "
            f"difference has {fraction(mid.variance_ratio)} the unpaired variance: {mid.n} paired seeds are worth "
            f"about {mid.equivalent_seeds:,.0f} unpaired ones.")


def markdown(rep: SweepReport, hh: str) -> list[str]:
    if not len(rep.pairing):
        return []
    return [f"{hh} What pairing bought", "",
            "Every arm shares its seeds with the baseline: identical shared initial weights, the same data "
            "order and dropout masks. How much that cut the noise of the difference:", "",
            md_table(["arm", "shared seeds", "correlation with baseline",
                      f"variance unpaired / paired ({rep.options.confidence} CI)", "equivalent unpaired seeds"],
                     [[md_escape(r.arm), str(r.n), f"{r.correlation:.3f}",
                       f"{r.variance_ratio:,.1f} [{r.ratio_low:,.1f}, {r.ratio_high:,.1f}]",
                       f"{r.equivalent_seeds:,.0f}"] for r in rep.pairing.itertuples()], "lrrrr"), ""]


def to_json(rep: SweepReport) -> dict:
    return {"pairing": rep.pairing.drop(columns="sentence").to_dict(orient="records")}


def terminal(rep: SweepReport) -> list[str]:
    return [f"  {escape(pairing_sentence(rep.pairing))}"] if len(rep.pairing) else []


def methods(rep: SweepReport) -> list[str]:
    if not len(rep.pairing):
        return []
    return ["- pairing: Pearson correlation of arm and baseline over shared seeds; variance ratio "
            "(var(arm) + var(baseline)) / var(arm - baseline) with an F(n-1, n-1) interval on "
            "var(arm + baseline) / var(arm - baseline) (exact when both have equal seed variance, "
            "Pitman-Morgan); equivalent unpaired seeds = shared seeds x ratio."]


SECTION = Section("pairing", build, markdown, to_json, terminal, methods)
