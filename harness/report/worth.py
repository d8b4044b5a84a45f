"""The "what is it worth" section: each arm's compute multiplier and tokens to match, and its
held-out curves, from the runs' held-out points (harness.stats.worth does the arithmetic); their
markdown, JSON, terminal lines, Methods and a tracker's fields.

The baseline's curve per seed is its held-out points along training, continued by its extended
run (--extend-baseline) where the schedule is constant: there a point at fewer tokens is exactly a
shorter run. Where the schedule decays with the run's length (cosine), mid-run points are not
shorter runs, so only the final points of baseline runs at other budgets make the curve. The arm's
target is its own final held-out point (the same subset of the test split the curve is on).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harness.core.bounds import finite_number
from harness.core.config import BASELINE
from harness.core.scheme import trainer_table
from harness.report.cells import labelled, md_escape, md_table
from harness.report.section import WITHHELD, Section, Series, SweepData, SweepReport
from harness.stats.inference import as_float
from harness.stats.worth import ABOVE, BELOW, IN_RANGE, NOT_FALLING, TOO_FEW, multiplier, paired_curve
from harness.store.record import COMPLETED

TRACKED = ("k", "k_low", "k_high", "match", "match_low", "match_high")  # a tracker's per-arm metrics
COLUMNS = ["arm", "k", "k_low", "k_high", "k_open", "seeds", "state", "range_low", "range_high", "match", "match_low",
           "match_high", "match_open", "match_state", "note"]


@dataclass
class Worth:
    table: pd.DataFrame  # one row per arm (COLUMNS)
    heldout: pd.DataFrame  # arm, tokens, mean, sd, n: held-out loss over seeds (runs at the sweep's budget)
    paired: dict[str, pd.DataFrame] = field(default_factory=dict)  # arm -> tokens, mean, low, high, n
    source: str = ""  # how the baseline's curve was made
    note: str = ""  # why there is no multiplier, or what to add for one


EXTERNAL = "an external trainer's own"  # a schedule harness does not know (harness.planning.trainer)


def _schedule(rows: pd.DataFrame) -> str:
    """The runs' learning-rate schedule as it bears on mid-run points: "constant" where a point at
    fewer tokens is a shorter run; else what makes it depend on the run's length (a cosine schedule,
    or a code intervention's schedule seam, which is given the run's steps)."""
    for text in rows["config"]:
        try:
            config = json.loads(text)
            if trainer_table(config) is not None:
                return EXTERNAL
            seams = [e["intervention"] for e in config.get("code", [])
                     if {"schedule", "optimizer"} & set(e.get("seams", []))]  # both are given the run's steps
            return f"{seams[0]} code's" if seams else str(config["train"].get("lr_schedule", "constant"))
        except (TypeError, ValueError, KeyError):
            continue
    return "constant"


def _points(curves: pd.DataFrame, row) -> tuple[np.ndarray, np.ndarray]:
    c = curves[curves["run_id"].eq(row.run_id)]
    if c["attempt"].notna().any() and np.isfinite(row.attempt):
        c = c[c["attempt"].eq(row.attempt)]
    c = c[np.isfinite(c["heldout_loss"].astype(float))].sort_values("tokens")
    return c["tokens"].to_numpy(dtype=float), c["heldout_loss"].to_numpy(dtype=float)


def build_worth(rows: pd.DataFrame, curves: pd.DataFrame, baseline: str, alpha: float) -> Worth | None:
    """The worth of every arm of one sweep's rows (every budget), or None without held-out points.
    One function (about 90 lines): the schedule decides which points make the baseline's curve,
    and that curve, its extension and the seeds' pairing are what every arm's k is read on."""
    done = rows[rows["outcome"].eq(COMPLETED)]
    if done.empty or "heldout_loss" not in curves or not np.isfinite(curves["heldout_loss"].astype(float)).any():
        return None
    factor = pd.to_numeric(done["budget_factor"], errors="coerce").fillna(1.0)
    ordinary, others = done[factor.eq(1.0)], done[factor.ne(1.0) & done["arm"].eq(baseline)]
    points = {r.run_id: _points(curves, r) for r in done.itertuples()}
    if not any(len(t) for t, _ in points.values()):  # the store holds points, but not of this sweep's runs
        return None
    per_arm = {arm: {int(r.seed): points[r.run_id] for r in g.itertuples() if len(points[r.run_id][0])}
               for arm, g in ordinary.groupby("arm")}
    heldout = []
    for arm, seeds in per_arm.items():
        by_tokens: dict[float, list[float]] = {}
        for t, y in seeds.values():
            for ti, yi in zip(t, y):
                by_tokens.setdefault(float(ti), []).append(float(yi))
        heldout += [{"arm": arm, "tokens": t, "mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1
                     else math.nan, "n": len(v)} for t, v in sorted(by_tokens.items())]
    worth = Worth(pd.DataFrame(columns=COLUMNS), pd.DataFrame(heldout, columns=["arm", "tokens", "mean", "sd", "n"]))
    base_rows = ordinary[ordinary["arm"].eq(baseline)]
    with_points = done[done["run_id"].isin([i for i, p in points.items() if len(p[0])])]
    subsets = sorted(set(pd.to_numeric(with_points["heldout_tokens"], errors="coerce").dropna().astype(int)))
    if len(subsets) > 1:  # points on different subsets of the test split are not one curve: no k, no mean curves
        worth.heldout = worth.heldout.iloc[0:0]
        worth.note = (f"the runs' held-out points evaluate different subsets of the test split (heldout_tokens "
                      f"{', '.join(f'{t:,}' for t in subsets)}), so they are not one curve: no compute multiplier "
                      "and no held-out curves. heldout_tokens is not part of a run's identity, so runs already "
                      "recorded keep their points: run the sweep again into a new --results folder with one "
                      "heldout_tokens for every run")
        return worth
    if baseline not in per_arm or base_rows.empty:
        worth.note = "no baseline runs with held-out points"
        return worth
    budget = float(base_rows["planned_tokens"].max())
    if _schedule(base_rows) == EXTERNAL:
        worth.note = ("an external trainer's held-out points along training are not known to be shorter runs (its "
                      "schedule is its own), so neither k nor tokens to match is read from them")
        return worth
    extendable = baseline == BASELINE  # --extend-baseline extends the arm named baseline, not another one
    constant = _schedule(base_rows) == "constant"
    base_curves: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    if constant:
        worth.source = "the baseline's held-out points along training (a constant learning rate: a point at fewer " \
                       "tokens is a shorter run)" + (", continued by its extended runs" if len(others) else "")
        for seed, (t, y) in per_arm[baseline].items():
            longer = others[others["seed"].eq(seed)]
            if len(longer):  # the longest extension holds the ordinary run's points too
                t2, y2 = points[longer.sort_values("planned_tokens").iloc[-1].run_id]
                merged = dict(zip(t, y)) | dict(zip(t2, y2))
                t, y = np.array(sorted(merged)), np.array([merged[k] for k in sorted(merged)])
            base_curves[seed] = (t, y)
    else:
        worth.source = (f"the final held-out points of baseline runs at {len(set(others['budget_factor'])) + 1} "
                        f"budgets (the {_schedule(base_rows)} schedule depends on the run's length, so mid-run "
                        "points are not shorter runs and are not used)")
        for seed, (t, y) in per_arm[baseline].items():
            finals = [(t[-1], y[-1])] + [(points[r.run_id][0][-1], points[r.run_id][1][-1])
                                         for r in others[others["seed"].eq(seed)].itertuples() if len(points[r.run_id][0])]
            finals.sort()
            base_curves[seed] = (np.array([f[0] for f in finals]), np.array([f[1] for f in finals]))
        if len(others) == 0:
            worth.note = (f"the baseline's {_schedule(base_rows)} schedule decays with the run's length, so its "
                          "mid-run points are not shorter runs" + (f": add {_extension(1.0)} to run it at other budgets"
                                                                   if extendable else ""))
    rows_out = []
    for arm, seeds in per_arm.items():
        if arm == baseline:
            continue
        targets = {s: float(y[-1]) for s, (t, y) in seeds.items() if abs(t[-1] - budget) <= 0.5 * budget}
        shared = set(targets) & set(base_curves)
        k = multiplier(base_curves, targets, budget, alpha) if shared and not worth.note else None
        match, own = None, _schedule(ordinary[ordinary["arm"].eq(arm)])
        if constant and own == "constant":  # tokens to match reads the arm's own mid-run points as shorter runs
            base_final = {s: float(y[np.argmin(abs(t - budget))]) for s, (t, y) in per_arm[baseline].items()}
            finals = {s: v for s, v in base_final.items() if s in seeds}
            match = multiplier(seeds, finals, budget, alpha) if finals else None
        further = max(pd.to_numeric(others["budget_factor"], errors="coerce").dropna(), default=1.0)
        note = _note(k, match, _extension(further) if extendable else "") if shared else \
            "no k: no seed of the arm has a baseline run of the same seed with held-out points"
        if constant and own != "constant":
            note = "; ".join(filter(None, [note, f"no tokens to match: the arm's {own} schedule depends on the run's "
                                                 "length, so its mid-run points are not shorter runs"]))
        rows_out.append({"arm": arm, **_k_fields(k), **_match_fields(match), "note": note})
        worth.paired[arm] = pd.DataFrame(paired_curve(seeds, per_arm[baseline], alpha))
    worth.table = pd.DataFrame(rows_out, columns=COLUMNS)
    return worth


def _k_fields(k) -> dict:
    if k is None:
        return {"k": math.nan, "k_low": math.nan, "k_high": math.nan, "k_open": "", "seeds": 0, "state": "",
                "range_low": math.nan, "range_high": math.nan}
    return {"k": k.estimate, "k_low": k.low, "k_high": k.high, "k_open": _opens(k), "seeds": k.n, "state": k.state,
            "range_low": k.range_low, "range_high": k.range_high}


def _opens(m) -> str:
    return " and ".join(side for side, past in (("low", m.open_low), ("high", m.open_high)) if past)


def _match_fields(m) -> dict:
    if m is None:
        return {"match": math.nan, "match_low": math.nan, "match_high": math.nan, "match_open": "", "match_state": ""}
    return {"match": m.estimate, "match_low": m.low, "match_high": m.high, "match_open": _opens(m),
            "match_state": m.state}


def _extension(longest: float) -> str:
    """The --extend-baseline that doubles the baseline's measured range."""
    return f"--extend-baseline {2 * longest:g}"


def _note(k, match, extension: str) -> str:
    """What k's row cannot say by its numbers: why there is no k, where its interval is open, how
    many seeds read outside the range on their own, and what to add."""
    parts = []
    if match is not None and match.state == ABOVE:
        parts.append("tokens to match: the arm's mean curve does not reach the baseline's final loss within the "
                     "budget")
    elif match is not None and match.state in (BELOW, NOT_FALLING, TOO_FEW):
        parts.append("tokens to match: " + {BELOW: "the arm's first held-out point is already below the baseline's "
                                                   "final loss",
                                            NOT_FALLING: "the arm's mean curve does not fall steadily through the "
                                                         "baseline's final loss",
                                            TOO_FEW: "the arm's seeds share fewer than two held-out points"}[match.state])
    if k is None:
        return "; ".join(parts)
    add = f"; add {extension} to measure further" if extension else ""
    alone = (f" ({k.outside} of {k.n} seeds read outside the range on their own)" if k.outside else "")
    if k.state == ABOVE:
        parts.insert(0, f"k > {k.range_high:.3g}, beyond the measured range: the baseline's mean curve ends above the "
                        f"arm's mean loss{alone}{add}")
    elif k.state == BELOW:
        parts.insert(0, f"k < {k.range_low:.3g}, below the measured range: the baseline's first held-out point is "
                        f"already below the arm's mean loss{alone}")
    elif k.state == NOT_FALLING:
        parts.insert(0, "no k: the baseline's mean held-out curve does not fall steadily through the arm's loss "
                        "(it reaches it more than once, or rises there: its points vary more than they fall between "
                        "them); more seeds, or a larger heldout_tokens, steady it")
    elif k.state == TOO_FEW:
        parts.insert(0, "no k: the baseline's seeds share fewer than two held-out points (heldout_points)")
    elif k.open_high or k.open_low:
        side = " and ".join(s for s, past in (("below", k.open_low), ("above", k.open_high)) if past)
        parts.insert(0, f"k's interval reaches {side} the measured range and ends there{alone}"
                        + (add if k.open_high else ""))
    elif k.outside:
        parts.insert(0, f"{k.outside} of {k.n} seeds read outside the measured range on their own{add}")
    return "; ".join(parts)


# =========================================================================== the section


def build(data: SweepData) -> Worth | None:
    if data.curves is None or not data.has_baseline:
        return None
    worth = build_worth(data.every_budget, data.curves, data.baseline, data.options.alpha)
    if worth is not None and data.withheld and len(worth.table):  # its intervals compare with the baseline
        worth.table.loc[worth.table["arm"].isin(data.withheld), "note"] = WITHHELD
    return worth


def k_read(r) -> bool:
    """Whether an arm has a k: the seeds' mean curves cross inside the measured range."""
    return math.isfinite(as_float(r.k)) and r.state == IN_RANGE


def k_interval(low: float, high: float, opens: str, sep: str = ", ") -> str:
    """k's interval, an end that reaches past the measured range shown as beyond it ("<" or ">")."""
    if not math.isfinite(as_float(low)):
        return ""
    opens = opens if isinstance(opens, str) else ""
    return (("<" if "low" in opens else "") + f"{low:.3g}{sep}" + (">" if "high" in opens else "") + f"{high:.3g}")


def worth_line(r, confidence: str) -> str:
    """One arm's compute multiplier, as the report and the terminal say it: k wherever the seeds'
    mean curves cross in the measured range (a worse arm's included), then any note."""
    if not k_read(r):
        return f"{r.arm}: {r.note or 'k not computable'}"
    ci = k_interval(r.k_low, r.k_high, r.k_open, " to ")
    interval = f" ({confidence} CI {ci}, {r.seeds} seeds)" if ci else f" ({r.seeds} seeds, no interval)"
    return f"{r.arm}: k = {r.k:.3g}{interval}" + (f"; {r.note}" if r.note else "")


def markdown(rep: SweepReport, hh: str) -> list[str]:
    """What each arm is worth in the baseline's training tokens."""
    w = rep.worth
    if w is None:
        return [f"{hh} What it is worth", "", "No held-out points along training in these runs (imported from "
                "elsewhere, recorded before held-out points existed, or with heldout_points=0): no compute "
                "multiplier.", ""]
    out = [f"{hh} What it is worth", ""]
    out.append("The compute multiplier k: how many times its budget the baseline would have to train to reach the "
               "arm's final held-out loss (k > 1: the arm is worth more compute; k < 1: less). Tokens to match: the "
               "fraction of its budget at which the arm's held-out curve first reaches the baseline's final "
               f"held-out loss. From {w.source}." if w.source else "")
    out.append("")
    if w.note:
        out += [f"> {md_escape(w.note)}", ""]
    if len(w.table):
        rows = []
        for r in w.table.itertuples():
            k = f"{r.k:.3g}" if k_read(r) else "n/a"
            k_ci = f"[{k_interval(r.k_low, r.k_high, r.k_open)}]" if k_read(r) and math.isfinite(r.k_low) else "-"
            interval = k_interval(r.match_low, r.match_high, r.match_open)
            match = (f"{r.match:.3g}" + (f" [{interval}]" if interval else "")
                     if math.isfinite(as_float(r.match)) else "-")
            rows.append([md_escape(r.arm), k, k_ci, str(r.seeds), match, md_escape(r.note or "-")])
        out.append(md_table(["arm", "k", f"{rep.options.confidence} CI", "seeds",
                             "tokens to match (fraction of budget)", "note"], rows, "lrrrrl"))
        out.append("")
    return out


def to_json(rep: SweepReport) -> dict:
    w = rep.worth
    return {"worth": None if w is None else {
        "source": w.source, "note": w.note, "arms": w.table.to_dict(orient="records"),
        "heldout_curves": w.heldout.to_dict(orient="records"),
        "paired_curves": {arm: df.to_dict(orient="records") for arm, df in w.paired.items()},
        "paired_interval": "pointwise (each point's own t interval, not simultaneous across points)"}}


def terminal(rep: SweepReport) -> list[str]:
    w = rep.worth
    return [] if w is None else labelled("worth", [w.note] + [worth_line(r, rep.options.confidence)
                                                              for r in w.table.itertuples()])


METHOD = (
    "- compute multiplier k: every run evaluates the same subset of the test split (windows spread evenly over "
    "it) in eval mode at 11 points along training, log-spaced (the budget, 1/sqrt(2), 1/2, ... of it). k is where "
    "the seeds' mean baseline curve (a cubic spline through the points in log tokens, which follows a convex curve "
    "where straight lines between points place the crossing late) reaches the seeds' mean final loss of the arm, "
    "over the budget. Its interval is the t interval over the paired seeds of each seed's reading linearised at "
    "that crossing (its target less its own curve there, over the slope of a least-squares cubic through the "
    "mean curve's seven nearest points); its coverage (0.93 to 0.97 at 5, 10 and 20 seeds, curves from nearly "
    "straight to strongly bent, a sum of two power laws and a late plateau, point noise up to half the drop "
    "between points; 0.92 to 0.97 at noise equal to the drop) is checked by simulation. No seed is read alone and "
    "none is left out. Beyond the curve's points k "
    "is not extrapolated: where the mean curve does not reach the arm's loss the report says k lies beyond the "
    "measured range and what to add, and an interval that reaches past it ends there, marked with > or <. Where "
    "the mean curve reaches the arm's loss more than once (points noisier than their drop) there is no k. Under a "
    "constant learning rate a point at fewer tokens is exactly a shorter run and --extend-baseline continues the "
    "baseline's runs past the budget; under a schedule that decays with the run's length only final points of "
    "baseline runs at other budgets are used. The paired-difference curve's interval is pointwise.")


def tracked(sweep: dict, compared: set[str]) -> tuple[dict[str, float], Series]:
    """k and tokens to match (an end past the measured range is no bound, so not sent), and the
    paired-difference curve by tokens."""
    worth = sweep.get("worth") or {}
    metrics: dict[str, float] = {}
    for arm in worth.get("arms", []):
        if arm["arm"] in compared:
            past = {f"{name}_{side}" for name in ("k", "match") for side in ("low", "high")
                    if side in str(arm.get(f"{name}_open") or "")}
            metrics.update({f"{arm['arm']}/{f}": float(arm[f]) for f in TRACKED
                            if finite_number(arm.get(f)) and f not in past})
    series: Series = {}
    for arm, points in (worth.get("paired_curves") or {}).items():
        if arm not in compared:
            continue
        for part in ("mean", "low", "high"):
            pts = [(int(p["tokens"]), float(p[part])) for p in points if finite_number(p.get(part))]
            if pts:
                series[f"paired_diff/{arm}/{part}"] = pts
    return metrics, series


SECTION = Section("worth", build, markdown, to_json, terminal, lambda rep: [METHOD], tracked)
