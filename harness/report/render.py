"""Rendering a built SweepReport: markdown (with the Methods that say how each number was made),
JSON (the same numbers), and the terminal table. Nothing here computes a statistic.

One module, on purpose: each report section's markdown, JSON and terminal forms stay side by
side so that they say the same thing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from harness.core.code import CODE_FOLDER
from harness.stats import noise

from harness.stats import inference as stats
from harness.report.compare import NoiseReport, SweepReport
from harness.report.outcomes import FileInfo
from harness.stats.pairing import fraction
from harness.report.plots import MAX_PLOT_ARMS, plot_arms
from harness.report.text import NOT_DETECTED
from harness.stats.worth import IN_RANGE
from harness.stats.sequential import METHOD

SIGN_CONVENTION = ("diff = mean(arm) - mean(baseline) of test loss: negative = lower loss = "
                   "better.")


_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]<>#!|~])")


def md_escape(text) -> str:
    """Escape markdown metacharacters (|, *, _, [, ...) so names render literally in tables."""
    s = str(text).replace("\r", " ").replace("\n", " ")
    s = _MD_SPECIAL.sub(r"\\\1", s)
    return s.replace("&", "&amp;")


def _code(text) -> str:
    """An inline code span (outside tables): shown verbatim, backticks neutralised."""
    return "`" + str(text).replace("`", "'").replace("\n", " ") + "`"


def _num(x, digits: int = 6, sign: bool = False) -> str:
    x = stats.as_float(x)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _p(x) -> str:
    x = stats.as_float(x)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.1e}" if x < 1e-4 else f"{x:.4f}"


def _ci(lo, hi) -> str:
    if not (math.isfinite(stats.as_float(lo)) and math.isfinite(stats.as_float(hi))):
        return "n/a"
    return f"[{_num(lo, sign=True)}, {_num(hi, sign=True)}]"


def _seeds(x) -> str:
    x = stats.as_float(x)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "never (diff is 0)" if x > 0 else "n/a"
    return f"{int(x):,}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)



def _verdict_line(r, confidence: str) -> str:
    name = md_escape(r.arm)
    if r.verdict == stats.INSUFFICIENT:
        why = "; ".join(r.notes) or "not computable"
        return f"- **{name}**: {r.verdict} (mean {_num(r.mean)}, n = {r.n}): {md_escape(why)}"
    return (f"- **{name}**: {r.verdict}: diff {_num(r.diff, sign=True)} "
            f"({confidence} CI {_ci(r.ci_low, r.ci_high)}), {r.test} p = {_p(r.p)}, "
            f"Holm p = {_p(r.p_holm)}, n = {r.n}; smallest difference detectable at this n (Holm): "
            f"{_num(r.mdd)}")


def render_markdown_section(rep: SweepReport, *, level: int, md_dir: Path) -> str:
    o = rep.options
    alpha, margin, power = o.alpha, o.margin, o.power
    h = "#" * level
    hh = "#" * (level + 1)
    t = rep.table
    out: list[str] = [f"{h} Sweep {md_escape(rep.sweep)}: arms vs {md_escape(rep.baseline)}", ""]
    out.append(f"Sign convention: {SIGN_CONVENTION} Alpha {alpha:g}"
               + (f", equivalence margin ±{margin:g}" if margin else ", no equivalence margin")
               + f"; Holm-adjusted across the {max(len(t) - int(rep.has_baseline), 0)} "
               "compared arm(s) of this sweep.")
    out.append("")
    if rep.mismatches:
        out.append("> **WARNING: --allow-mismatch was given; these arms were NOT trained alike, so their "
                   "verdicts are withheld" + (f" ({md_escape(', '.join(rep.withheld))})" if rep.withheld else "")
                   + ":**")
        for m in rep.mismatches:
            out.append(f"> - {md_escape(m)}")
        out.append("")
    for n in rep.notes:
        out.append(f"> Note: {md_escape(n)}")
        out.append("")

    arms_rows = t[t["arm"] != rep.baseline] if rep.has_baseline else t.iloc[0:0]
    if rep.adaptive is not None:
        out += render_adaptive(rep, hh)
    elif len(arms_rows):
        out += [f"{hh} Verdicts", ""]
        out += [_verdict_line(r, o.confidence) for r in arms_rows.itertuples()]
        out.append("")

    out += [f"{hh} Test loss" + (" (fixed-n, descriptive: on the seeds each arm was given)"
                                 if rep.adaptive is not None else ""), ""]
    ci_label = f"{o.confidence} CI"
    rows = []
    for r in t.itertuples():
        rows.append([md_escape(r.arm), str(r.n), _num(r.mean), _num(r.sd),
                     _num(r.diff, sign=True), _ci(r.ci_low, r.ci_high), _p(r.p),
                     _p(r.p_holm), r.verdict, r.test if r.test != stats.NO_TEST else "-"])
    out.append(_md_table(["arm", "n", "mean", "sd", "diff", ci_label, "p", "p (Holm)",
                          "verdict", "test"], rows, "lrrrrrrrll"))
    out.append("")
    if len(arms_rows):
        out += [f"{hh} Robustness, effect size and power", ""]
        rows = []
        for r in arms_rows.itertuples():
            rows.append([md_escape(r.arm), str(r.n_pairs) if r.test == stats.PAIRED_T else "-",
                         r.robust_test or "-", _p(r.p_robust), _ci(r.boot_low, r.boot_high),
                         f"{_num(r.effect_size, 3)} ({r.effect_size_name})"
                         if r.effect_size_name else "n/a",
                         _num(r.mdd), _seeds(r.seeds_needed),
                         _p(r.p_tost) if margin else "-", _p(r.p_tost_holm) if margin else "-"])
        out.append(_md_table(
            ["arm", "pairs", "robustness test", "p (robust)", f"BCa bootstrap {ci_label}",
             "effect size", f"min. detectable diff ({power:.0%} power, Holm)",
             "seeds to detect observed diff", "TOST p", "TOST p (Holm)"], rows, "lrlrrrrrrr"))
        out.append("")
        notes = [(r.arm, n) for r in t.itertuples() for n in r.notes]
        if notes:
            out += ["Why some numbers are missing or restricted:", ""]
            out += [f"- {md_escape(a)}: {md_escape(n)}" for a, n in notes]
            out.append("")
    elif len(t):
        notes = [(r.arm, n) for r in t.itertuples() for n in r.notes]
        out += [f"- {md_escape(a)}: {md_escape(n)}" for a, n in notes]
        out.append("")

    out += render_worth(rep, hh)
    out += render_text(rep, hh)
    out += [f"{hh} Noise floor", ""]
    nf = rep.noise
    if nf["n"] >= 2 and nf["note"] is None:
        out.append(f"The baseline's test loss varies across seeds with sd {_num(nf['sd'])} "
                   f"(n = {nf['n']}, standard error of the mean {_num(nf['sem'])}). With "
                   f"{nf['n']} seeds per arm, an unpaired comparison detects a difference of "
                   f"{_num(nf['mdd_two_sample'])} with {power:.0%} power at alpha {alpha:g}; "
                   "paired seeds usually do better (see the per-arm figures above).")
        out.append("")
        out.append(_md_table(["true difference", "seeds per arm (unpaired, at the baseline sd)"],
                             [[f"{k:g}", _seeds(v)] for k, v in nf["seeds_needed"].items()],
                             "rr"))
    else:
        out.append(f"Not computable: {md_escape(nf['note'] or 'no baseline runs')}; a noise "
                   "floor needs at least 2 completed baseline runs with different losses.")
    out.append("")
    if len(rep.pairing):
        out.append(pairing_sentence(rep.pairing))
        out.append("")
    out.append(f"`harness sweep {md_escape(rep.baseline)} --seeds N` runs the baseline alone "
               "N times: its spread answers \"is it noise?\" directly.")
    out.append("")
    if len(rep.pairing):
        out += [f"{hh} What pairing bought", ""]
        out.append("Every arm shares its seeds with the baseline: identical shared initial weights, the same data "
                   "order and dropout masks. How much that cut the noise of the difference:")
        out.append("")
        out.append(_md_table(["arm", "shared seeds", "correlation with baseline",
                              f"variance unpaired / paired ({ci_label})", "equivalent unpaired seeds"],
                             [[md_escape(r.arm), str(r.n), f"{r.correlation:.3f}",
                               f"{r.variance_ratio:,.1f} [{r.ratio_low:,.1f}, {r.ratio_high:,.1f}]",
                               f"{r.equivalent_seeds:,.0f}"] for r in rep.pairing.itertuples()], "lrrrr"))
        out.append("")

    out += [f"{hh} Runs", ""]
    out.append("Every seed that was started is counted; n in the tables above is the completed "
               "runs only. \"invalid\" = status completed but a NaN/inf test loss.")
    out.append("")
    acc = rep.accounting
    out.append(_md_table(["arm", "seeds", "completed", "diverged", "failed", "invalid",
                          "attempts"],
                         [[md_escape(r.arm), str(r.seeds), str(r.completed), str(r.diverged),
                           str(r.failed), str(r.invalid), str(r.attempts)]
                          for r in acc.itertuples()], "lrrrrrr"))
    out.append("")
    if len(rep.problems):
        out += ["Runs not in n (diverged, failed or invalid):", ""]
        out.append(_md_table(["arm", "seed", "outcome", "reason", "attempts", "run id"],
                             [[md_escape(r.arm), str(r.seed), r.outcome,
                               md_escape(r.reason or "-"), str(r.attempts), md_escape(r.run_id)]
                              for r in rep.problems.itertuples()], "lrllrl"))
        out.append("")

    if rep.plots:
        out += [f"{hh} Plots", ""]
        captions = {"forest": "Differences from the baseline with t intervals",
                    "curves": "Held-out loss along training (mean ± 1 sd across seeds, completed runs)"
                    if rep.worth is not None and len(rep.worth.heldout) else
                    "Training loss curves (mean ± 1 sd across seeds, completed runs)",
                    "effect": "The effect along training: arm - baseline held-out loss, paired by seed, with "
                              "pointwise intervals",
                    "paired": "Per-seed test loss, baseline -> arm"}
        left_out = plot_arms(rep)[1]
        for key, p in rep.plots.items():
            rel = Path(p).relative_to(md_dir) if Path(p).is_relative_to(md_dir) else Path(p)
            out.append(f"![{captions[key]}]({quote(rel.as_posix())})")
            out.append("")
            if key in ("curves", "effect", "paired") and left_out:
                out.append(f"_{captions[key]}: the {MAX_PLOT_ARMS} arms with the smallest Holm "
                           f"p-values are shown; {left_out} more are in the tables._")
                out.append("")

    out += [f"{hh} Comparability", ""]
    if rep.mismatches:
        out.append("Mismatches (reported because --allow-mismatch was given):")
        out += [f"- {md_escape(m)}" for m in rep.mismatches]
    else:
        out.append("The compared arms were trained alike: every model and training key (placement knobs aside), "
                   "the token budget, the corpus and the test set are the same across each arm's seeds and "
                   "between each arm and the baseline, except what the arm's own interventions set; arm and "
                   "baseline share their random streams at every seed.")
    out.append("")
    out.append(_md_table(["arm", "interventions", "config hash", "code", "preset", "planned tokens",
                          "test set", "dtype", "device", "world size"],
                         [[md_escape(a[k]) for k in ("arm", "interventions", "config_hash", "code",
                                                     "preset", "planned_tokens", "test_set_id",
                                                     "dtype", "device", "world_size")]
                          for a in rep.provenance["arms"]]))
    if any(a["code"] != "-" for a in rep.provenance["arms"]):
        out += ["", f"Code: each file as its runs imported it, under the results folder's `{CODE_FOLDER}/<sha256>/` "
                    "(the hash's first 12 digits above)."]
    out.append("")

    out += [f"{hh} Methods", ""]
    if rep.adaptive_settings is not None:
        a = rep.adaptive_settings
        out.append(f"- adaptive sweep (the verdicts above): {md_escape(METHOD)}; an arm is decided better or worse "
                   "when its repeated confidence interval excludes 0"
                   + (f", equivalent when it lies inside ±{a.margin:g}" if a.margin else "")
                   + f"; decisions from {a.min_seeds} seeds on, at most {a.max_seeds}; family-wise error "
                   f"{a.alpha:g}. The intervals hold at any stopping time; the fixed-n figures below are descriptive "
                   "(they ignore that the number of seeds depended on the data).")
    if len(rep.pairing):
        out.append("- pairing: Pearson correlation of arm and baseline over shared seeds; variance ratio "
                   "(var(arm) + var(baseline)) / var(arm - baseline) with an F(n-1, n-1) interval on "
                   "var(arm + baseline) / var(arm - baseline) (exact when both have equal seed variance, "
                   "Pitman-Morgan); equivalent unpaired seeds = shared seeds x ratio.")
    out += [
        f"- diff, {ci_label}, p: paired t-test and t interval on per-seed differences when the "
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
        f"- power: two-sided t-test power (statsmodels) at {power:.0%} power and Holm's strictest level, alpha "
        f"{alpha:g} over the number of arms compared (the level the verdict must reach for its smallest p), at the "
        "observed seed noise (paired: sd of differences; Welch: pooled sd); that sd is itself estimated from the "
        "seeds, so where it happens to be low the detectable difference is optimistic.",
        "- equivalence: TOST against ±margin (statsmodels ttost_paired / ttost_ind), "
        "Holm-adjusted across arms." if margin else
        "- equivalence: not tested (no --margin given).",
        ASSUMPTIONS,
        WORTH_METHOD,
        TEXT_METHOD,
        "- verdict: better / worse when p (Holm) < alpha and diff < 0 / > 0; equivalent within "
        "margin when the Holm-adjusted TOST p < alpha; otherwise no detectable difference; "
        "insufficient data when the test cannot be computed. \"No detectable difference\" "
        "is not evidence of no effect: compare |diff| with the minimum detectable difference.",
    ]
    out.append("")
    return "\n".join(out)


def k_read(r) -> bool:
    """Whether an arm has a k: the seeds' mean curves cross inside the measured range."""
    return math.isfinite(stats.as_float(r.k)) and r.state == IN_RANGE


def k_interval(low: float, high: float, opens: str, sep: str = ", ") -> str:
    """k's interval, an end that reaches past the measured range shown as beyond it ("<" or ">")."""
    if not math.isfinite(stats.as_float(low)):
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


def render_worth(rep: SweepReport, hh: str) -> list[str]:
    """The compute multiplier section: what each arm is worth in the baseline's training tokens."""
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
        ci = rep.options.confidence
        rows = []
        for r in w.table.itertuples():
            k = f"{r.k:.3g}" if k_read(r) else "n/a"
            k_ci = f"[{k_interval(r.k_low, r.k_high, r.k_open)}]" if k_read(r) and math.isfinite(r.k_low) else "-"
            interval = k_interval(r.match_low, r.match_high, r.match_open)
            match = (f"{r.match:.3g}" + (f" [{interval}]" if interval else "")
                     if math.isfinite(stats.as_float(r.match)) else "-")
            rows.append([md_escape(r.arm), k, k_ci, str(r.seeds), match, md_escape(r.note or "-")])
        out.append(_md_table(["arm", "k", f"{ci} CI", "seeds", "tokens to match (fraction of budget)", "note"],
                             rows, "lrrrrl"))
        out.append("")
    return out


def _text_part(value: float, se_text: float) -> str:
    """An SE or floor from the test text; zero is an estimate truncated at zero, not a measured zero."""
    return NOT_DETECTED if se_text == 0 else _num(value)


def text_line(r, confidence: str) -> str:
    """One arm's seeds-and-text uncertainty, as the report and the terminal say it."""
    if r.note:
        return f"{r.arm}: {r.note}"
    return (f"{r.arm}: diff {_num(r.diff, sign=True)}, SE seeds {_num(r.se_seed)}, SE test text "
            f"{_text_part(r.se_text, r.se_text)}; {confidence} CI over both {_ci(r.low, r.high)}; floor "
            f"{_text_part(r.floor, r.se_text)}; {r.dominant} dominate" + ("" if r.dominant == "seeds" else "s"))


def render_text(rep: SweepReport, hh: str) -> list[str]:
    """The test-text section: how much of each difference's uncertainty another test sample would bring."""
    x = rep.text
    if x is None:
        return []
    out = [f"{hh} The test set is a sample too", ""]
    if x.n_units:
        out += [f"The final evaluation keeps its loss per test unit: {md_escape(x.units)}. The seed SE is what another "
                "set of seeds would do on this test set (the intervals above); the test-text SE what another test "
                "sample of this size would do, however many seeds; the interval covers both (two-way crossed "
                "seeds x units, see Methods). The floor is the smallest difference this test set can detect at "
                "any number of seeds (2.8 test-text SEs: two-sided 5%, 80% power). Where the test text's part "
                "estimates at zero or below (the units differ no more than the seeds' noise explains), it reads "
                f"'{NOT_DETECTED}'.", ""]
    if x.note:
        out += [f"> {md_escape(x.note)}", ""]
    if len(x.table):
        ci = rep.options.confidence
        rows = [[md_escape(r.arm), str(r.seeds), _num(r.diff, sign=True), _num(r.se_seed),
                 _text_part(r.se_text, r.se_text), _num(r.se), _ci(r.low, r.high), _text_part(r.floor, r.se_text),
                 f"{r.dominant} ({100 * r.text_share:.0f}% text)" if not r.note else md_escape(r.note)]
                for r in x.table.itertuples()]
        out.append(_md_table(["arm", "seeds", "diff", "SE seeds", "SE test text", "SE both", f"{ci} CI (seeds and "
                              "texts)", "floor", "dominant source"], rows, "lrrrrrrrl"))
        out.append("")
        sentence = x.dominance()
        if sentence:
            out += [sentence, ""]
    if np.isfinite(x.snr):
        out += [f"Signal-to-noise (Heineman et al. 2025): the arms' mean test losses span {_num(x.snr * x.seed_sd)} "
                f"nats against a seed sd of one run of {_num(x.seed_sd)}: SNR {x.snr:.3g}; against one run's "
                f"test-text SE ({_num(x.run_text_se)}), {x.snr_text:.3g}.", ""]
    for arm in x.helps:
        out += [f"Where {md_escape(arm)} helps and hurts most (the units with the largest mean paired differences; "
                "each is a few seeds on a small piece of text, so expect some of these to be noise: the SE column "
                "says how much):", ""]
        table = pd.concat([x.helps[arm].assign(side="helps most"),
                           x.hurts[arm].assign(side=np.where(x.hurts[arm]["diff"] > 0, "hurts", "helps least"))])
        out.append(_md_table(["", "unit", "test-split positions", "share", "diff", "SE (seeds)"],
                             [[u.side, str(u.unit), f"{u.first_token:,}-{u.last_token:,}", f"{100 * u.share:.2f}%",
                               _num(u.diff, sign=True), _num(u.se_seed)] for u in table.itertuples()], "lrrrrr"))
        out.append("")
    return out


def render_provenance(files: Sequence[FileInfo], reps: Sequence[SweepReport], options: dict,
                      level: int) -> str:
    h = "#" * level
    out = [f"{h} Reproducibility", ""]
    out.append(_md_table(["results file", "rows", "bytes", "sha256", "modified (UTC)"],
                         [[md_escape(str(f.path.resolve())), str(f.rows), str(f.size),
                           f"`{f.sha256[:16]}`", f.modified] for f in files], "lrrll"))
    out.append("")
    for rep in reps:
        out.append(f"Sweep {md_escape(rep.sweep)}: config hashes "
                   + "; ".join(f"{md_escape(a['arm'])} {_code(a['config_hash'])}"
                               for a in rep.provenance["arms"]))
        for v in rep.provenance["versions"]:
            out.append(f"- versions {_code(json.dumps(v['versions'], sort_keys=True))} "
                       f"({v['runs']} runs)")
        for c in rep.provenance["git_commits"]:
            out.append(f"- git commit {_code(c['commit'])} ({c['runs']} runs)")
        out.append("")
    out.append("Report options: " + _code(json.dumps(options, sort_keys=True)))
    out.append("")
    return "\n".join(out)


def jsonable(x):
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    return x


def pairing_sentence(pairing) -> str:
    """The noise floor's one sentence on pairing: the median arm."""
    mid = pairing.sort_values("variance_ratio").iloc[(len(pairing) - 1) // 2]
    over = f" (the median of {len(pairing)} arms)" if len(pairing) > 1 else ""
    return (f"Pairing by seed{over}: arm and baseline correlate at r = {mid.correlation:.2f}, so the paired "
            f"difference has {fraction(mid.variance_ratio)} the unpaired variance: {mid.n} paired seeds are worth "
            f"about {mid.equivalent_seeds:,.0f} unpaired ones.")


WORTH_METHOD = (
    "- compute multiplier k: every run evaluates the same subset of the test split (windows spread evenly over "
    "it) in eval mode at 11 points along training, log-spaced (the budget, 1/sqrt(2), 1/2, ... of it). k is where "
    "the seeds' mean baseline curve (a cubic spline through the points in log tokens, which follows a convex curve "
    "where straight lines between points place the crossing late) reaches the seeds' mean final loss of the arm, "
    "over the budget. Its interval is the t interval over the paired seeds of each seed's reading linearised at "
    "that crossing (its target less its own curve there, over the slope of a least-squares cubic through the "
    "mean curve's seven nearest points); its coverage (0.93 to 0.97 at 5, 10 and 20 seeds, curves from nearly "
    "straight to strongly bent, a sum of two power laws and a late plateau, point noise up to half the drop "
    "between points; 0.92 to 0.97 at noise equal to the drop) is checked by simulation. No seed is read alone and none is left out. Beyond the curve's points k "
    "is not extrapolated: where the mean curve does not reach the arm's loss the report says k lies beyond the "
    "measured range and what to add, and an interval that reaches past it ends there, marked with > or <. Where "
    "the mean curve reaches the arm's loss more than once (points noisier than their drop) there is no k. Under a "
    "constant learning rate a point at fewer tokens is exactly a shorter run and --extend-baseline continues the "
    "baseline's runs past the budget; under a schedule that decays with the run's length only final points of "
    "baseline runs at other budgets are used. The paired-difference curve's interval is pointwise.")

TEXT_METHOD = (
    "- test text: the final evaluation sums its token losses per test unit (a document; consecutive documents "
    "grouped into 1,024 units where there are more; 64 blocks of consecutive tokens where the split holds fewer "
    "than 32 documents). Per arm, the paired per-unit differences D[seed, unit] (the same units for arm and "
    "baseline) are split by the method of moments of a two-way crossed random-effects model, with each unit "
    "weighted by its share of the test tokens: the seed variance (as the paired t), the unit-clustered variance "
    "of the seed means, and the seed-by-unit interaction; the test text's part is the clustered variance less the "
    "interaction's, and the interval over both uses Satterthwaite's degrees of freedom (3 seeds at least; each "
    "part's unbiasedness and the interval's coverage are checked by simulation). Blocks inside a few long "
    "documents sample the text within them, not the documents: with four plays, another four plays could differ "
    "more. Signal-to-noise after Heineman et al. (2025): the spread of the arms' mean test losses over the pooled "
    "seed sd of one run.")

ASSUMPTIONS = (
    "- assumptions: the t tests and intervals (fixed-n and sequential) assume the paired differences are "
    "roughly normal. One seed far from the others (a loss spike in one run) can decide a verdict, and skewed "
    "differences weaken the error control: with 8 null arms whose paired differences have skewness 1.25, the "
    "family-wise error at alpha 0.05 is about 0.16 for the adaptive rule and 0.08 to 0.11 for fixed-n Holm at 3 "
    "to 20 seeds (0.05 for normal differences; tests/bench/adaptive.py --skew 1.25). So every paired arm's seeds are "
    "checked: each difference against the mean and sd of the others (its externally studentized residual, t with "
    "n - 2 degrees of freedom), Bonferroni over the seeds at 0.05, so that normal differences flag a seed in 5% of "
    "arms; a flagged seed is named with the Wilcoxon signed-rank test beside the t-test.")

STOP_REASONS = {"better": "interval below 0", "worse": "interval above 0", "equivalent": "interval inside the margin",
                "undecided at the cap": "reached --max-seeds", "undecided": "not decided yet (stopped early)"}


def render_adaptive(rep: SweepReport, hh: str) -> list[str]:
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
    out.append(_md_table(["arm", "verdict", "seeds", "decided in round", "stop reason", "sequential interval",
                          "runs saved"],
                         [[md_escape(r.arm), r.state, str(r.seeds),
                           "-" if pd_isna(r.decided_round) else str(int(r.decided_round)), STOP_REASONS[r.state],
                           _ci(r.seq_low, r.seq_high), str(r.runs_saved)] for r in seq.itertuples()], "llrrlrr"))
    out.append("")
    for r in seq.itertuples():
        if r.outlier_seeds:
            out += [f"> {md_escape(r.arm)}: outlying seed {', '.join(map(str, r.outlier_seeds))}: its paired "
                    "difference is far from the others' (see Methods, assumptions); the sequential decision rests on "
                    "a t statistic that one such seed can move", ""]
    return out


def pd_isna(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def sweep_to_json(rep: SweepReport) -> dict:
    arms = []
    for row in rep.table.to_dict(orient="records"):
        row["sweep"] = rep.sweep
        row["seeds_needed"] = (None if not math.isfinite(stats.as_float(row["seeds_needed"]))
                               else int(row["seeds_needed"]))
        arms.append(row)
    return jsonable({
        "sweep": rep.sweep,
        "baseline": rep.baseline,
        "has_baseline": rep.has_baseline,
        "arms": arms,
        "runs": rep.accounting.to_dict(orient="records"),
        "not_completed": rep.problems.to_dict(orient="records"),
        "noise_floor": {**{k: v for k, v in rep.noise.items() if k != "seeds_needed"},
                        "seeds_needed": [{"diff": k, "seeds_per_arm": v}
                                         for k, v in rep.noise["seeds_needed"].items()]},
        "integrity": {"mismatches": rep.mismatches, "allow_mismatch": rep.allow_mismatch,
                      "withheld": rep.withheld},
        "complete": rep.complete,
        "notes": rep.notes,
        "pairing": rep.pairing.drop(columns="sentence").to_dict(orient="records"),
        "worth": None if rep.worth is None else {
            "source": rep.worth.source, "note": rep.worth.note, "arms": rep.worth.table.to_dict(orient="records"),
            "heldout_curves": rep.worth.heldout.to_dict(orient="records"),
            "paired_curves": {arm: df.to_dict(orient="records") for arm, df in rep.worth.paired.items()},
            "paired_interval": "pointwise (each point's own t interval, not simultaneous across points)"},
        "test_text": None if rep.text is None else {
            "units": rep.text.units, "n_units": rep.text.n_units, "note": rep.text.note,
            "arms": rep.text.table.to_dict(orient="records"), "dominance": rep.text.dominance(),
            "signal_to_noise": {"snr_seeds": rep.text.snr, "snr_test_text": rep.text.snr_text,
                                "seed_sd": rep.text.seed_sd, "run_test_text_se": rep.text.run_text_se},
            "units_where_it_helps": {a: df.to_dict(orient="records") for a, df in rep.text.helps.items()},
            "units_where_it_hurts": {a: df.to_dict(orient="records") for a, df in rep.text.hurts.items()}},
        "adaptive": None if rep.adaptive is None else {
            **rep.adaptive_settings.as_dict(), "arms": rep.adaptive.to_dict(orient="records")},
        "provenance": rep.provenance,
        "plots": {k: str(v) for k, v in rep.plots.items()},
    })


_RICH_VERDICT = {stats.BETTER: "green", stats.WORSE: "red", stats.EQUIVALENT: "blue",
                 stats.NO_DIFFERENCE: "white", stats.INSUFFICIENT: "yellow",
                 stats.REFERENCE: "dim"}


def render_terminal(rep: SweepReport, console: Console) -> None:
    from rich.markup import escape

    table = Table(title=f"sweep {escape(rep.sweep)} (diff = arm - {escape(rep.baseline)}; "
                        "negative = better)", title_justify="left")
    for col, just in (("arm", "left"), ("n", "right"), ("mean", "right"), ("sd", "right"),
                      ("diff", "right"), (f"{rep.options.confidence} CI", "right"),
                      ("p", "right"), ("p Holm", "right"), ("verdict", "left"),
                      ("test", "left")):
        table.add_column(col, justify=just)
    for r in rep.table.itertuples():
        v = r.verdict
        table.add_row(escape(r.arm), str(r.n), _num(r.mean), _num(r.sd),
                      _num(r.diff, sign=True), _ci(r.ci_low, r.ci_high), _p(r.p),
                      _p(r.p_holm), f"[{_RICH_VERDICT.get(v, 'white')}]{escape(v)}[/]",
                      r.test if r.test != stats.NO_TEST else "-")
    console.print(table)
    bad = rep.accounting[["diverged", "failed", "invalid"]].sum()
    if bad.sum():
        console.print(f"  not completed: {int(bad['diverged'])} diverged, {int(bad['failed'])} "
                      f"failed, {int(bad['invalid'])} invalid (listed in the report)")
    if rep.adaptive is not None:
        for r in rep.adaptive.itertuples():
            console.print(f"  {escape(r.arm)}: {r.state} after {r.seeds} seeds (sequential interval "
                          f"{_ci(r.seq_low, r.seq_high)}), {r.runs_saved} runs saved; the table's tests are descriptive")
    if len(rep.pairing):
        console.print(f"  {escape(pairing_sentence(rep.pairing))}")
    if rep.worth is not None:
        if rep.worth.note:
            console.print(f"  worth: {escape(rep.worth.note)}")
        for r in rep.worth.table.itertuples():
            console.print(f"  worth: {escape(worth_line(r, rep.options.confidence))}")
    if rep.text is not None:
        if rep.text.note:
            console.print(f"  test text: {escape(rep.text.note)}")
        for r in rep.text.table.itertuples():
            console.print(f"  test text: {escape(text_line(r, rep.options.confidence))}")
    for m in rep.mismatches:
        console.print(f"  [bold red]--allow-mismatch:[/] {escape(m)}")
    for n in rep.notes:
        console.print(f"  note: {escape(n)}")
    for r in rep.table.itertuples():
        for n in r.notes:
            console.print(f"  {escape(r.arm)}: {escape(n)}", style="dim")


# =========================================================================== noise studies


def _sd_ci(low, high) -> str:
    return "n/a" if not (math.isfinite(stats.as_float(low)) and math.isfinite(stats.as_float(high))) else \
        f"[{_num(low)}, {_num(high)}]"


def render_noise_section(rep: NoiseReport, *, level: int, md_dir: Path) -> str:
    alpha, power = rep.options.alpha, rep.options.power
    h, hh = "#" * level, "#" * (level + 1)
    ci = f"{rep.options.confidence} CI"
    arms = ", ".join(md_escape(a) for a in rep.components)
    out = [f"{h} Noise study {md_escape(rep.sweep)}", ""]
    out.append(f"Runs of {arms} that vary one random stream at a time with the seed, the other two held at seed 0's "
               "values: the initial weights, the data order, the dropout masks; then all three (the ordinary seeds), "
               "and none (identical seeds).")
    out.append("")
    for n in rep.notes:
        out += [f"> Note: {md_escape(n)}", ""]
    for name, t in rep.components.items():
        out += [f"{hh} Where {md_escape(name)}'s seed noise comes from", ""]
        out.append(_md_table(["source", "runs", "sd of the test loss", ci, "share of the three sources' variance"],
                             [[md_escape(r.label), str(r.n), _num(r.sd), _sd_ci(r.low, r.high),
                               "-" if not math.isfinite(stats.as_float(r.share)) else f"{100 * r.share:.0f}%"]
                              for r in t.itertuples()], "lrrrr"))
        out.append("")
        parts = t[t["source"].isin(noise.SOURCES)]
        everything = t[t["source"] == noise.ALL]
        if len(parts) == 3 and len(everything) and math.isfinite(stats.as_float(everything["sd"].iloc[0])):
            summed, whole = float((parts["sd"] ** 2).sum()), float(everything["sd"].iloc[0] ** 2)
            if whole > 0:
                out.append(f"The three sources' variances sum to {100 * summed / whole:.0f}% of the ordinary seeds' "
                           "variance (100% when they add up independently; each figure is an estimate from few runs).")
                out.append("")
    if rep.replicates_identical is not None:
        out.append("Identical seeds gave bit-identical test losses (the CPU path is deterministic): no "
                   "nondeterminism floor." if rep.replicates_identical else
                   "Identical seeds gave different test losses: their sd above is the nondeterminism floor "
                   "(GPU kernels), and every source's sd includes it.")
        out.append("")
    if rep.paired is not None and len(rep.paired):
        out += [f"{hh} What pairing cancels: {md_escape(rep.arm)} - {md_escape(rep.baseline)} per source", ""]
        out.append(_md_table(["source", "pairs", "sd of the paired difference", ci,
                              "unpaired variance left by pairing"],
                             [[md_escape(r.label), str(r.n), _num(r.sd_diff), _sd_ci(r.low, r.high),
                               "-" if not math.isfinite(stats.as_float(r.left)) else f"{100 * r.left:.1f}%"]
                              for r in rep.paired.itertuples()], "lrrrr"))
        out.append("")
    out += [f"{hh} The smallest difference this setup can detect", ""]
    what = (f"paired seeds (sd of {md_escape(rep.arm)} - {md_escape(rep.baseline)} over the ordinary seeds)"
            if rep.detect_paired else "seeds per arm, unpaired (no --arm in this study: the paired figure needs one)")
    out.append(_md_table(["seeds", f"difference detected with {power:.0%} power at alpha {alpha:g}"],
                         [[str(n), _num(d)] for n, d in rep.detect.items()], "rr"))
    out.append("")
    out.append(f"Seeds are {what}.")
    out.append("")
    if rep.plots:
        out += [f"{hh} Plot", ""]
        for p in rep.plots.values():
            rel = Path(p).relative_to(md_dir) if Path(p).is_relative_to(md_dir) else Path(p)
            out += [f"![Per-source sd with intervals]({quote(rel.as_posix())})", ""]
    out += [f"{hh} Methods", ""]
    out.append(f"- {md_escape(noise.METHOD)}.")
    out.append(f"- smallest detectable difference: two-sided t-test power (statsmodels) at alpha {alpha:g}, "
               f"{power:.0%} power, at the observed sd.")
    out.append("")
    return "\n".join(out)


def noise_to_json(rep: NoiseReport) -> dict:
    return jsonable({
        "sweep": rep.sweep, "kind": "noise study", "baseline": rep.baseline, "arm": rep.arm,
        "components": {name: t.to_dict(orient="records") for name, t in rep.components.items()},
        "paired": None if rep.paired is None else rep.paired.to_dict(orient="records"),
        "detectable": [{"seeds": n, "difference": d} for n, d in rep.detect.items()],
        "detectable_paired": rep.detect_paired, "replicates_identical": rep.replicates_identical,
        "notes": rep.notes, "plots": {k: str(v) for k, v in rep.plots.items()},
    })


def render_noise_terminal(rep: NoiseReport, console: Console) -> None:
    from rich.markup import escape

    for n in rep.notes:  # an interim study says so before its shares
        console.print(f"note: {escape(n)}")
    for name, t in rep.components.items():
        table = Table(title=f"noise study {escape(rep.sweep)}: {escape(name)}", title_justify="left")
        for col in ("source", "runs", "sd", "95% CI", "share"):
            table.add_column(col, justify="left" if col == "source" else "right")
        for r in t.itertuples():
            table.add_row(r.label, str(r.n), _num(r.sd), _sd_ci(r.low, r.high),
                          "-" if not math.isfinite(stats.as_float(r.share)) else f"{100 * r.share:.0f}%")
        console.print(table)
    console.print("  smallest detectable difference (80% power): "
                  + ", ".join(f"{n} seeds {_num(d)}" for n, d in rep.detect.items())
                  + (" (paired)" if rep.detect_paired else " (unpaired)"))
