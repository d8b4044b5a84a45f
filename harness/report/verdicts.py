"""The verdicts section: each arm against the baseline (harness.stats.inference does the arithmetic),
fixed-n or, for an adaptive sweep, the sequential decisions; the test-loss table, robustness, effect
size and power; their Methods; a tracker's per-arm fields.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
from rich.markup import escape
from rich.table import Table

from harness.core.bounds import absent, finite_number
from harness.planning.adaptive import Adaptive, arm_states
from harness.report.cells import interval, md_escape, md_table, num, p_value, seed_count
from harness.report.section import WITHHELD, Section, Series, SweepData, SweepReport
from harness.stats import inference as stats
from harness.stats.sequential import METHOD
from harness.store.record import COMPLETED

INTERIM = "interim: "  # a verdict's prefix while planned runs are missing
TRACKED = ("diff", "ci_low", "ci_high", "p", "p_holm", "mean", "sd", "n")  # a tracker's per-arm metrics
STOP_REASONS = {"better": "interval below 0", "worse": "interval above 0", "equivalent": "interval inside the margin",
                "undecided at the cap": "reached --max-seeds", "undecided": "not decided yet (stopped early)"}
_RICH_VERDICT = {stats.BETTER: "green", stats.WORSE: "red", stats.EQUIVALENT: "blue",
                 stats.NO_DIFFERENCE: "white", stats.INSUFFICIENT: "yellow", stats.REFERENCE: "dim"}

ASSUMPTIONS = (
    "- assumptions: the t tests and intervals (fixed-n and sequential) assume the paired differences are "
    "roughly normal. One seed far from the others (a loss spike in one run) can decide a verdict, and skewed "
    "differences weaken the error control: with 8 null arms whose paired differences have skewness 1.25, the "
    "family-wise error at alpha 0.05 is about 0.16 for the adaptive rule and 0.08 to 0.11 for fixed-n Holm at 3 "
    "to 20 seeds (0.05 for normal differences; tests/bench/adaptive.py --skew 1.25). So every paired arm's seeds are "
    "checked: each difference against the mean and sd of the others (its externally studentized residual, t with "
    "n - 2 degrees of freedom), Bonferroni over the seeds at 0.05, so that normal differences flag a seed in 5% of "
    "arms; a flagged seed is named with the Wilcoxon signed-rank test beside the t-test.")


@dataclass
class Verdicts:
    table: pd.DataFrame  # harness.stats.inference.COLUMNS, one row per arm, the baseline first
    sequential: pd.DataFrame | None = None  # an adaptive sweep's decisions per compared arm
    settings: Adaptive | None = None  # ... and the settings that made them


def adaptive_table(rows: pd.DataFrame, arms: Sequence[str], baseline: str, settings: Adaptive,
                   accounting: pd.DataFrame) -> pd.DataFrame:
    """An adaptive sweep's arms: seeds given, the round each was decided, why it stopped, its
    sequential interval, and runs saved against a fixed design at max_seeds."""
    compared = [a for a in arms if a != baseline]
    states = arm_states(rows[rows["outcome"].eq(COMPLETED)], compared, baseline, settings)
    seeds = accounting.set_index("arm")["seeds"]
    out = []
    for arm in compared:
        st = states[arm]
        given = int(seeds.get(arm, 0))
        out.append({"arm": arm, "seeds": given, "pairs": st.look.n, "state": st.state,
                    "decided_round": None if st.decided_round is None else st.decided_round + 1,
                    "seq_low": st.look.low, "seq_high": st.look.high, "runs_saved": settings.max_seeds - given,
                    "outlier_seeds": st.outliers})
    return pd.DataFrame(out, columns=["arm", "seeds", "pairs", "state", "decided_round", "seq_low", "seq_high",
                                      "runs_saved", "outlier_seeds"])


def build(data: SweepData) -> Verdicts:
    o, baseline = data.options, data.baseline
    table = stats.compare_arms(data.done[["arm", "seed", "test_loss"]], baseline, alpha=o.alpha, margin=o.margin,
                               power=o.power, n_resamples=o.n_resamples, seed=o.boot_seed, arms=data.arms)
    if not data.has_baseline:
        table = table[table["arm"] != baseline].reset_index(drop=True)
    compared = table["arm"].ne(baseline)
    if data.withheld:
        table.loc[compared & table["arm"].isin(data.withheld), "verdict"] = WITHHELD
    elif data.interim:
        table.loc[compared, "verdict"] = INTERIM + table.loc[compared, "verdict"]
    if data.adaptive is None or not data.has_baseline:
        return Verdicts(table)
    return Verdicts(table, adaptive_table(data.rows, data.arms, baseline, data.adaptive, data.accounting),
                    data.adaptive)


def _compared(rep: SweepReport) -> pd.DataFrame:
    t = rep.table
    return t[t["arm"] != rep.baseline] if rep.has_baseline else t.iloc[0:0]


def _verdict_line(r, confidence: str) -> str:
    name = md_escape(r.arm)
    if r.verdict == stats.INSUFFICIENT:
        why = "; ".join(r.notes) or "not computable"
        return f"- **{name}**: {r.verdict} (mean {num(r.mean)}, n = {r.n}): {md_escape(why)}"
    return (f"- **{name}**: {r.verdict}: diff {num(r.diff, sign=True)} "
            f"({confidence} CI {interval(r.ci_low, r.ci_high)}), {r.test} p = {p_value(r.p)}, "
            f"Holm p = {p_value(r.p_holm)}, n = {r.n}; smallest difference detectable at this n (Holm): "
            f"{num(r.mdd)}")


def _adaptive_markdown(rep: SweepReport, hh: str) -> list[str]:
    a, seq = rep.adaptive_settings, rep.adaptive
    base_seeds = int(rep.accounting.set_index("arm")["seeds"].get(rep.baseline, 0))
    made = base_seeds + int(seq["seeds"].sum())
    fixed = (1 + len(seq)) * a.max_seeds
    out = [f"{hh} Verdicts (adaptive sweep)", ""]
    out.append(f"This sweep was adaptive (`--until-decided`): each arm got seeds until a sequential test decided "
               f"it, at most {a.max_seeds}; family-wise error {a.alpha:g} across {len(seq)} arm(s)"
               + (f", equivalence margin ±{a.margin:g}" if a.margin else "") + f". It made {made} runs where a "
               f"fixed design at {a.max_seeds} seeds makes {fixed} ({fixed - made} saved, "
               f"{100 * made / max(fixed, 1):.0f}% of the runs).")
    out.append("")
    out.append(md_table(["arm", "verdict", "seeds", "decided in round", "stop reason", "sequential interval",
                         "runs saved"],
                        [[md_escape(r.arm), r.state, str(r.seeds),
                          "-" if absent(r.decided_round) else str(int(r.decided_round)), STOP_REASONS[r.state],
                          interval(r.seq_low, r.seq_high), str(r.runs_saved)] for r in seq.itertuples()], "llrrlrr"))
    out.append("")
    for r in seq.itertuples():
        if r.outlier_seeds:
            out += [f"> {md_escape(r.arm)}: outlying seed {', '.join(map(str, r.outlier_seeds))}: its paired "
                    "difference is far from the others' (see Methods, assumptions); the sequential decision rests on "
                    "a t statistic that one such seed can move", ""]
    return out


def markdown(rep: SweepReport, hh: str) -> list[str]:
    o, t = rep.options, rep.table
    compared = _compared(rep)
    out: list[str] = []
    if rep.adaptive is not None:
        out += _adaptive_markdown(rep, hh)
    elif len(compared):
        out += [f"{hh} Verdicts", ""]
        out += [_verdict_line(r, o.confidence) for r in compared.itertuples()]
        out.append("")
    out += [f"{hh} Test loss" + (" (fixed-n, descriptive: on the seeds each arm was given)"
                                 if rep.adaptive is not None else ""), ""]
    ci_label = f"{o.confidence} CI"
    out.append(md_table(["arm", "n", "mean", "sd", "diff", ci_label, "p", "p (Holm)", "verdict", "test"],
                        [[md_escape(r.arm), str(r.n), num(r.mean), num(r.sd), num(r.diff, sign=True),
                          interval(r.ci_low, r.ci_high), p_value(r.p), p_value(r.p_holm), r.verdict,
                          r.test if r.test != stats.NO_TEST else "-"] for r in t.itertuples()], "lrrrrrrrll"))
    out.append("")
    notes = [f"- {md_escape(r.arm)}: {md_escape(n)}" for r in t.itertuples() for n in r.notes]
    if not len(compared):
        return out + (notes + [""] if len(t) else [])
    margin = o.margin
    out += [f"{hh} Robustness, effect size and power", ""]
    out.append(md_table(
        ["arm", "pairs", "robustness test", "p (robust)", f"BCa bootstrap {ci_label}", "effect size",
         f"min. detectable diff ({o.power:.0%} power, Holm)", "seeds to detect observed diff", "TOST p",
         "TOST p (Holm)"],
        [[md_escape(r.arm), str(r.n_pairs) if r.test == stats.PAIRED_T else "-", r.robust_test or "-",
          p_value(r.p_robust), interval(r.boot_low, r.boot_high),
          f"{num(r.effect_size, 3)} ({r.effect_size_name})" if r.effect_size_name else "n/a",
          num(r.mdd), seed_count(r.seeds_needed), p_value(r.p_tost) if margin else "-",
          p_value(r.p_tost_holm) if margin else "-"] for r in compared.itertuples()], "lrlrrrrrrr"))
    out.append("")
    if notes:
        out += ["Why some numbers are missing or restricted:", ""] + notes + [""]
    return out


def to_json(rep: SweepReport) -> dict:
    arms = []
    for row in rep.table.to_dict(orient="records"):
        row["sweep"] = rep.sweep
        row["seeds_needed"] = int(row["seeds_needed"]) if math.isfinite(stats.as_float(row["seeds_needed"])) else None
        arms.append(row)
    adaptive = None if rep.adaptive is None else {**rep.adaptive_settings.as_dict(),
                                                   "arms": rep.adaptive.to_dict(orient="records")}
    return {"arms": arms, "adaptive": adaptive}


def terminal(rep: SweepReport) -> list:
    table = Table(title=f"sweep {escape(rep.sweep)} (diff = arm - {escape(rep.baseline)}; negative = better)",
                  title_justify="left")
    for col, just in (("arm", "left"), ("n", "right"), ("mean", "right"), ("sd", "right"), ("diff", "right"),
                      (f"{rep.options.confidence} CI", "right"), ("p", "right"), ("p Holm", "right"),
                      ("verdict", "left"), ("test", "left")):
        table.add_column(col, justify=just)
    for r in rep.table.itertuples():
        table.add_row(escape(r.arm), str(r.n), num(r.mean), num(r.sd), num(r.diff, sign=True),
                      interval(r.ci_low, r.ci_high), p_value(r.p), p_value(r.p_holm),
                      f"[{_RICH_VERDICT.get(r.verdict, 'white')}]{escape(r.verdict)}[/]",
                      r.test if r.test != stats.NO_TEST else "-")
    out: list = [table]
    if rep.adaptive is not None:
        out += [f"  {escape(r.arm)}: {r.state} after {r.seeds} seeds (sequential interval "
                f"{interval(r.seq_low, r.seq_high)}), {r.runs_saved} runs saved; the table's tests are descriptive"
                for r in rep.adaptive.itertuples()]
    return out


def methods(rep: SweepReport) -> list[str]:
    o = rep.options
    out = []
    if rep.adaptive_settings is not None:
        a = rep.adaptive_settings
        out.append(f"- adaptive sweep (the verdicts above): {md_escape(METHOD)}; an arm is decided better or worse "
                   "when its repeated confidence interval excludes 0"
                   + (f", equivalent when it lies inside ±{a.margin:g}" if a.margin else "")
                   + f"; decisions from {a.min_seeds} seeds on, at most {a.max_seeds}; family-wise error "
                   f"{a.alpha:g}. The intervals hold at any stopping time; the fixed-n figures below are descriptive "
                   "(they ignore that the number of seeds depended on the data).")
    return out + [
        f"- diff, {o.confidence} CI, p: paired t-test and t interval on per-seed differences when the "
        "arm shares at least 2 seeds (and at least half of its runs) with the baseline, "
        "otherwise Welch's t-test and interval (the `test` column says which).",
        "- p (Holm): Holm step-down adjustment across the arms of this sweep (the same "
        "numbers as statsmodels multipletests(method=\"holm\"), checked in the tests).",
        "- robustness: Wilcoxon signed-rank on the per-seed differences (exact for small n) "
        "for paired arms; Mann-Whitney U for Welch arms.",
        f"- BCa bootstrap: scipy.stats.bootstrap(method=\"BCa\"), {o.n_resamples} resamples, "
        f"seed {o.boot_seed} (deterministic). With few seeds it is too narrow (in simulations "
        "a nominal 95% BCa interval covered about 85% at n = 5 and 91% at n = 30), so the "
        "t interval is the primary one.",
        "- effect size: Cohen's d_z (mean difference / sd of differences) for paired arms; "
        "Hedges' g (pooled sd, small-sample corrected) for Welch arms.",
        f"- power: two-sided t-test power (statsmodels) at {o.power:.0%} power and Holm's strictest level, alpha "
        f"{o.alpha:g} over the number of arms compared (the level the verdict must reach for its smallest p), at the "
        "observed seed noise (paired: sd of differences; Welch: pooled sd); that sd is itself estimated from the "
        "seeds, so where it happens to be low the detectable difference is optimistic.",
        "- equivalence: TOST against ±margin (statsmodels ttost_paired / ttost_ind), "
        "Holm-adjusted across arms." if o.margin else "- equivalence: not tested (no --margin given).",
        ASSUMPTIONS,
        "- verdict: better / worse when p (Holm) < alpha and diff < 0 / > 0; equivalent within "
        "margin when the Holm-adjusted TOST p < alpha; otherwise no detectable difference; "
        "insufficient data when the test cannot be computed. \"No detectable difference\" "
        "is not evidence of no effect: compare |diff| with the minimum detectable difference.",
    ]


def withheld_arms(sweep: dict) -> set[str]:
    """A sweep JSON's arms whose verdicts differences withhold."""
    return set((sweep.get("integrity") or {}).get("withheld") or [])


def compared_verdicts(sweep: dict) -> dict[str, str]:
    """A sweep JSON's compared arms (not the baseline, none withheld) and their verdicts."""
    withheld = withheld_arms(sweep)
    return {str(a["arm"]): str(a.get("verdict")) for a in sweep.get("arms", [])
            if a["arm"] != sweep.get("baseline") and a["arm"] not in withheld}


def tracked(sweep: dict, compared: set[str]) -> tuple[dict[str, float], Series]:
    return {f"{a['arm']}/{f}": float(a[f]) for a in sweep.get("arms", []) if a["arm"] in compared
            for f in TRACKED if finite_number(a.get(f))}, {}


SECTION = Section("verdicts", build, markdown, to_json, terminal, methods, tracked)
