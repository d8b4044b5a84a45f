"""Rendering a built SweepReport: markdown (with the Methods that say how each number was made),
JSON (the same numbers), and the terminal table. Nothing here computes a statistic.

This module is the report's frame: the sweep's heading and notes, its runs, plots, comparability,
Methods and provenance. Each section between them renders itself, its markdown, JSON and terminal
forms side by side in its own module (harness.report.section; the order: harness.report.compare.
SECTIONS). A noise study, a report of another shape, renders at the end of this module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from harness.core.code import CODE_FOLDER
from harness.report.cells import code_span, jsonable, md_escape, md_table, num, sd_interval
from harness.report import compare
from harness.report.compare import NoiseReport
from harness.report.section import SweepReport
from harness.report.outcomes import FileInfo
from harness.report.plots import MAX_PLOT_ARMS, plot_arms
from harness.stats import noise
from harness.stats.inference import as_float

SIGN_CONVENTION = ("diff = mean(arm) - mean(baseline) of test loss: negative = lower loss = "
                   "better.")


def render_markdown_section(rep: SweepReport, *, level: int, md_dir: Path) -> str:
    """One sweep's markdown: the frame's heading, each section in order, then the frame's runs,
    plots, comparability and the sections' Methods."""
    hh = "#" * (level + 1)
    out = _heading(rep, "#" * level)
    for section in compare.SECTIONS:
        out += section.markdown(rep, hh)
    out += _runs(rep, hh) + _plots(rep, hh, md_dir) + _comparability(rep, hh)
    out += [f"{hh} Methods", ""] + [line for section in compare.SECTIONS for line in section.methods(rep)] + [""]
    return "\n".join(out)


def _heading(rep: SweepReport, h: str) -> list[str]:
    """The sweep's title, its sign convention and levels, the mismatches' warning and the notes."""
    o = rep.options
    out = [f"{h} Sweep {md_escape(rep.sweep)}: arms vs {md_escape(rep.baseline)}", ""]
    out.append(f"Sign convention: {SIGN_CONVENTION} Alpha {o.alpha:g}"
               + (f", equivalence margin ±{o.margin:g}" if o.margin else ", no equivalence margin")
               + f"; Holm-adjusted across the {max(len(rep.table) - int(rep.has_baseline), 0)} "
               "compared arm(s) of this sweep.")
    out.append("")
    if rep.mismatches:
        out.append("> **WARNING: --allow-mismatch was given; these arms were NOT trained alike, so their "
                   "verdicts are withheld" + (f" ({md_escape(', '.join(rep.withheld))})" if rep.withheld else "")
                   + ":**")
        out += [f"> - {md_escape(m)}" for m in rep.mismatches] + [""]
    for n in rep.notes:
        out += [f"> Note: {md_escape(n)}", ""]
    return out


def _runs(rep: SweepReport, hh: str) -> list[str]:
    """Every seed that was started, by outcome, and the runs not in n with their reasons."""
    out = [f"{hh} Runs", "", "Every seed that was started is counted; n in the tables above is the completed "
           "runs only. \"invalid\" = status completed but a NaN/inf test loss.", ""]
    out.append(md_table(["arm", "seeds", "completed", "diverged", "failed", "invalid", "attempts"],
                        [[md_escape(r.arm), str(r.seeds), str(r.completed), str(r.diverged), str(r.failed),
                          str(r.invalid), str(r.attempts)] for r in rep.accounting.itertuples()], "lrrrrrr"))
    out.append("")
    if len(rep.problems):
        out += ["Runs not in n (diverged, failed or invalid):", ""]
        out.append(md_table(["arm", "seed", "outcome", "reason", "attempts", "run id"],
                            [[md_escape(r.arm), str(r.seed), r.outcome, md_escape(r.reason or "-"), str(r.attempts),
                              md_escape(r.run_id)] for r in rep.problems.itertuples()], "lrllrl"))
        out.append("")
    return out


def _plots(rep: SweepReport, hh: str, md_dir: Path) -> list[str]:
    """The plots beside the markdown, linked relative to it, with their captions."""
    if not rep.plots:
        return []
    captions = {"forest": "Differences from the baseline with t intervals",
                "curves": "Held-out loss along training (mean ± 1 sd across seeds, completed runs)"
                if rep.worth is not None and len(rep.worth.heldout) else
                "Training loss curves (mean ± 1 sd across seeds, completed runs)",
                "effect": "The effect along training: arm - baseline held-out loss, paired by seed, with "
                          "pointwise intervals",
                "paired": "Per-seed test loss, baseline -> arm"}
    left_out = plot_arms(rep)[1]
    out = [f"{hh} Plots", ""]
    for key, p in rep.plots.items():
        rel = Path(p).relative_to(md_dir) if Path(p).is_relative_to(md_dir) else Path(p)
        out += [f"![{captions[key]}]({quote(rel.as_posix())})", ""]
        if key in ("curves", "effect", "paired") and left_out:
            out += [f"_{captions[key]}: the {MAX_PLOT_ARMS} arms with the smallest Holm "
                    f"p-values are shown; {left_out} more are in the tables._", ""]
    return out


def _comparability(rep: SweepReport, hh: str) -> list[str]:
    """Whether the arms were trained alike, and what each arm ran with."""
    out = [f"{hh} Comparability", ""]
    if rep.mismatches:
        out.append("Mismatches (reported because --allow-mismatch was given):")
        out += [f"- {md_escape(m)}" for m in rep.mismatches]
    else:
        out.append("The compared arms were trained alike: every model and training key (placement knobs aside), "
                   "the token budget, the corpus and the test set are the same across each arm's seeds and "
                   "between each arm and the baseline, except what the arm's own interventions set; arm and "
                   "baseline share their random streams at every seed.")
    out.append("")
    keys = ("arm", "interventions", "config_hash", "code", "preset", "planned_tokens", "test_set_id", "dtype",
            "device", "world_size")
    out.append(md_table(["arm", "interventions", "config hash", "code", "preset", "planned tokens", "test set", "dtype",
                         "device", "world size"], [[md_escape(a[k]) for k in keys] for a in rep.provenance["arms"]]))
    if any(a["code"] != "-" for a in rep.provenance["arms"]):
        out += ["", f"Code: each file as its runs imported it, under the results folder's `{CODE_FOLDER}/<sha256>/` "
                    "(the hash's first 12 digits above)."]
    out.append("")
    return out


def render_provenance(files: Sequence[FileInfo], reps: Sequence[SweepReport], options: dict,
                      level: int) -> str:
    h = "#" * level
    out = [f"{h} Reproducibility", ""]
    out.append(md_table(["results file", "rows", "bytes", "sha256", "modified (UTC)"],
                        [[md_escape(str(f.path.resolve())), str(f.rows), str(f.size),
                           f"`{f.sha256[:16]}`", f.modified] for f in files], "lrrll"))
    out.append("")
    for rep in reps:
        out.append(f"Sweep {md_escape(rep.sweep)}: config hashes "
                   + "; ".join(f"{md_escape(a['arm'])} {code_span(a['config_hash'])}"
                               for a in rep.provenance["arms"]))
        for v in rep.provenance["versions"]:
            out.append(f"- versions {code_span(json.dumps(v['versions'], sort_keys=True))} "
                       f"({v['runs']} runs)")
        for c in rep.provenance["git_commits"]:
            out.append(f"- git commit {code_span(c['commit'])} ({c['runs']} runs)")
        out.append("")
    out.append("Report options: " + code_span(json.dumps(options, sort_keys=True)))
    out.append("")
    return "\n".join(out)


def sweep_to_json(rep: SweepReport) -> dict:
    sections = {key: value for section in compare.SECTIONS for key, value in section.json(rep).items()}
    return jsonable({
        "sweep": rep.sweep,
        "baseline": rep.baseline,
        "has_baseline": rep.has_baseline,
        "runs": rep.accounting.to_dict(orient="records"),
        "not_completed": rep.problems.to_dict(orient="records"),
        "integrity": {"mismatches": rep.mismatches, "allow_mismatch": rep.allow_mismatch,
                      "withheld": rep.withheld},
        "complete": rep.complete,
        "notes": rep.notes,
        **sections,
        "provenance": rep.provenance,
        "plots": {k: str(v) for k, v in rep.plots.items()},
    })


def render_terminal(rep: SweepReport, console: Console) -> None:
    for section in compare.SECTIONS:
        for line in section.terminal(rep):
            console.print(line)
    bad = rep.accounting[["diverged", "failed", "invalid"]].sum()
    if bad.sum():
        console.print(f"  not completed: {int(bad['diverged'])} diverged, {int(bad['failed'])} "
                      f"failed, {int(bad['invalid'])} invalid (listed in the report)")
    for m in rep.mismatches:
        console.print(f"  [bold red]--allow-mismatch:[/] {escape(m)}")
    for n in rep.notes:
        console.print(f"  note: {escape(n)}")
    for r in rep.table.itertuples():
        for n in r.notes:
            console.print(f"  {escape(r.arm)}: {escape(n)}", style="dim")


# =========================================================================== noise studies


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
        out.append(md_table(["source", "runs", "sd of the test loss", ci, "share of the three sources' variance"],
                            [[md_escape(r.label), str(r.n), num(r.sd), sd_interval(r.low, r.high),
                               "-" if not math.isfinite(as_float(r.share)) else f"{100 * r.share:.0f}%"]
                              for r in t.itertuples()], "lrrrr"))
        out.append("")
        parts = t[t["source"].isin(noise.SOURCES)]
        everything = t[t["source"] == noise.ALL]
        if len(parts) == 3 and len(everything) and math.isfinite(as_float(everything["sd"].iloc[0])):
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
        out.append(md_table(["source", "pairs", "sd of the paired difference", ci,
                              "unpaired variance left by pairing"],
                            [[md_escape(r.label), str(r.n), num(r.sd_diff), sd_interval(r.low, r.high),
                               "-" if not math.isfinite(as_float(r.left)) else f"{100 * r.left:.1f}%"]
                              for r in rep.paired.itertuples()], "lrrrr"))
        out.append("")
    out += [f"{hh} The smallest difference this setup can detect", ""]
    what = (f"paired seeds (sd of {md_escape(rep.arm)} - {md_escape(rep.baseline)} over the ordinary seeds)"
            if rep.detect_paired else "seeds per arm, unpaired (no --arm in this study: the paired figure needs one)")
    out.append(md_table(["seeds", f"difference detected with {power:.0%} power at alpha {alpha:g}"],
                        [[str(n), num(d)] for n, d in rep.detect.items()], "rr"))
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
    for n in rep.notes:  # an interim study says so before its shares
        console.print(f"note: {escape(n)}")
    for name, t in rep.components.items():
        table = Table(title=f"noise study {escape(rep.sweep)}: {escape(name)}", title_justify="left")
        for col in ("source", "runs", "sd", "95% CI", "share"):
            table.add_column(col, justify="left" if col == "source" else "right")
        for r in t.itertuples():
            table.add_row(r.label, str(r.n), num(r.sd), sd_interval(r.low, r.high),
                          "-" if not math.isfinite(as_float(r.share)) else f"{100 * r.share:.0f}%")
        console.print(table)
    console.print("  smallest detectable difference (80% power): "
                  + ", ".join(f"{n} seeds {num(d)}" for n, d in rep.detect.items())
                  + (" (paired)" if rep.detect_paired else " (unpaired)"))
