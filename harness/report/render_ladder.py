"""A ladder's report as markdown, as a terminal table and as JSON (harness.report.ladder builds it)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from harness.report.ladder import LadderReport
from harness.report.cells import jsonable, md_escape
from harness.report.worth import k_interval
from harness.stats.ladder import RULES

TREND_METHOD = ("each rung's mean paired difference weighted by its own uncertainty (1/variance of the mean) in a "
                "line against log2 parameters; intervals and p-values by a parametric bootstrap of the studentized "
                "statistics (Krishnamoorthy, Lu and Mathew 2007), which re-estimates the weights in every draw; the "
                "slope's p-value Holm-adjusted across arms")


def _num(x, fmt: str = "+.4f") -> str:
    return format(float(x), fmt) if x is not None and np.isfinite(float(x)) else "-"


def _interval(low, high, fmt: str = "+.4f") -> str:
    return f"{_num(low, fmt)} to {_num(high, fmt)}" if np.isfinite(float(low)) and np.isfinite(float(high)) else "-"


def prediction_text(rep: LadderReport, tr) -> str:
    if not np.isfinite(float(tr.get("prediction", math.nan))):
        return "-"
    kind = "extrapolation" if rep.extrapolation else "interpolation"
    return (f"{_num(tr['prediction'])} ({_interval(tr['prediction_low'], tr['prediction_high'])}; {kind} from "
            f"{rep.measured[0]:,} to {rep.measured[1]:,} parameters)")


def render_ladder_section(rep: LadderReport, md_dir: Path, level: int = 1) -> str:
    h = "#" * level
    conf = rep.options.confidence
    out = [f"{h} Ladder {md_escape(rep.ladder)}", "",
           f"Preset {md_escape(rep.preset)}, arms {md_escape(', '.join(rep.arms))}; sizes from {rep.measured[0]:,} to "
           f"{rep.measured[1]:,} parameters; the effect predicted at {md_escape(rep.target)} "
           f"({rep.target_params:,} parameters). Differences are arm minus baseline test loss (negative = better).", ""]
    if rep.scheme:
        out += [f"Sizes: {md_escape(rep.scheme)}.", ""]
    for m in rep.mismatches:
        out += [f"> Not trained alike: {md_escape(m)}", ""]
    for n in rep.notes:
        out += [f"> Note: {md_escape(n)}", ""]
    out += [f"{h}# Trend per arm", "",
            f"| arm | label | slope per doubling of parameters ({conf}) | p (Holm) | pooled effect ({conf}) | "
            f"predicted at {md_escape(rep.target)} | note |", "|---|---|---|---|---|---|---|"]
    for tr in rep.trends.to_dict("records"):
        out.append(f"| {md_escape(tr['arm'])} | **{md_escape(tr['label'])}** | {_num(tr['slope'])} "
                   f"({_interval(tr['slope_low'], tr['slope_high'])}) | {_num(tr['p_slope'], '.3g')} "
                   f"({_num(tr['p_slope_holm'], '.3g')}) | {_num(tr['pooled'])} "
                   f"({_interval(tr['pooled_low'], tr['pooled_high'])}) | {md_escape(prediction_text(rep, tr))} | "
                   f"{md_escape(tr['note'] if isinstance(tr['note'], str) else '')} |")
    out += ["", "Labels: " + "; ".join(f"**{k}**: {v}" for k, v in RULES.items()) + f" (alpha {rep.options.alpha:g}).",
            "", f"Method: {TREND_METHOD}. A prediction beyond the measured sizes assumes the line carries on; it is "
            "an extrapolation, and its interval covers only the uncertainty of the measured rungs.", ""]
    out += [f"{h}# Per rung", "", f"| rung | params | arm | pairs | difference ({conf} t interval) | compute multiplier k "
            f"({conf}) | status |", "|---|---|---|---|---|---|---|"]
    for r in rep.table.to_dict("records"):
        ci = k_interval(r["k_low"], r["k_high"], r["k_open"])
        k = (f"{_num(r['k'], '.3g')}" + (f" ({ci})" if ci else "") if np.isfinite(r["k"])
             else md_escape(r["k_state"]) or "-")
        out.append(f"| {md_escape(r['size'])} | {r['params']:,} | {md_escape(r['arm'])} | {r['pairs']} | "
                   f"{_num(r['diff'])} ({_interval(r['low'], r['high'])}) | {k} | {md_escape(r['status'])} |")
    out.append("")
    if "ladder" in rep.plots:
        out += [f"![effect against size]({os.path.relpath(rep.plots['ladder'], md_dir)})", ""]
    return "\n".join(out)


def render_ladder_terminal(rep: LadderReport, console) -> None:
    from rich.table import Table

    table = Table(title=f"ladder {rep.ladder}: trend over {rep.measured[0]:,} to {rep.measured[1]:,} parameters")
    for col in ("arm", "label", "slope/doubling", "p (Holm)", f"at {rep.target}", "note"):
        table.add_column(col)
    for tr in rep.trends.to_dict("records"):
        table.add_row(tr["arm"], tr["label"], f"{_num(tr['slope'])} ({_interval(tr['slope_low'], tr['slope_high'])})",
                      _num(tr["p_slope_holm"], ".3g"),
                      f"{_num(tr['prediction'])} ({_interval(tr['prediction_low'], tr['prediction_high'])})",
                      tr["note"] if isinstance(tr["note"], str) else "")
    console.print(table)


def ladder_to_json(rep: LadderReport) -> dict:
    return jsonable({
        "ladder": rep.ladder, "preset": rep.preset, "arms": rep.arms, "scheme": rep.scheme,
        "target": {"name": rep.target, "params": rep.target_params, "extrapolation": rep.extrapolation},
        "measured_params": list(rep.measured), "x": "log2(parameters): slopes are per doubling of parameters",
        "method": TREND_METHOD, "rules": RULES, "notes": rep.notes, "mismatches": rep.mismatches,
        "trends": rep.trends.astype(object).where(rep.trends.notna(), None).to_dict("records"),
        "rungs": rep.table.astype(object).where(rep.table.notna(), None).to_dict("records"),
    })
