"""``harness report``: a results store in, a statistical report per sweep out.

The steps, each in its own module:
  1. load the store and resolve each (sweep, arm, seed) to the attempt that counts  (harness.report.outcomes)
  2. refuse arms that are not comparable (token budget, preset, test set, one config per arm)
  3. compare every arm with the baseline                                           (harness.report.compare, harness.stats.inference)
  4. write markdown with plots and a terminal table, or JSON on stdout             (harness.report.render, harness.report.plots)
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import re
import sys
from pathlib import Path
from dataclasses import dataclass, field
from typing import Callable, Literal, TextIO

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape as rich_escape

from harness.report.compare import NoiseReport, arm_order, build_noise_report, build_sweep_report
from harness.report.section import ReportOptions, SweepReport
from harness.core.errors import Refusal, UserError
from harness.core.files import is_folder, user_path
from harness.report.outcomes import OUTCOMES, Store, load_store, resolve_outcomes
from harness.report.sameness import Difference, differences
from harness.report.text import COLUMNS as TEXT_COLUMNS
from harness.report.worth import COLUMNS as WORTH_COLUMNS
from harness.report.plots import aggregate_curves, make_plots, plot_forest, plot_ladder, plot_noise
from harness.report.ladder import LadderReport, build_ladder_report
from harness.report.render_ladder import ladder_to_json, render_ladder_section, render_ladder_terminal
from harness.store.planfile import saved_ladders
from harness.store.record import COMPLETED, ordinary_budget
from harness.store.outputs import guard_destination
from harness.store.results import CURVES, MANIFEST, RUNS
from harness.report.cells import jsonable, md_escape
from harness.report.render import (SIGN_CONVENTION, noise_to_json, render_markdown_section,
                            render_noise_section, render_noise_terminal, render_provenance, render_terminal,
                            sweep_to_json)

Fmt = Literal["markdown", "json"]
FORMATS = ("markdown", "json")


@dataclass
class Report:
    """A built report: each reported sweep (SweepReport or NoiseReport: its tables are DataFrames)
    and ladder, with the store it read and the settings that made it. The command and the API both
    build one, then write it (markdown and plots, or JSON) or read its tables."""

    sweeps: list
    ladders: list[LadderReport]
    store: Store
    outcomes: pd.DataFrame
    settings: dict
    options: ReportOptions
    warnings: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # "sweep 'x': why" for sweeps that could not be reported

    def sweep_report(self, sweep: str | None = None):
        """One sweep's report: the one named, or the only one (UserError where there are several)."""
        if sweep is None:
            if len(self.sweeps) != 1:
                raise UserError(f"the report holds {len(self.sweeps)} sweeps "
                                f"({', '.join(r.sweep for r in self.sweeps)}): name one")
            return self.sweeps[0]
        for rep in self.sweeps:
            if rep.sweep == sweep:
                return rep
        raise UserError(f"no sweep {sweep!r} in this report: it holds {', '.join(r.sweep for r in self.sweeps)}")

    def arms(self, sweep: str | None = None) -> pd.DataFrame:
        """Each arm's numbers (harness.stats.inference.COLUMNS): mean, diff, intervals, p, Holm p, verdict."""
        return self.sweep_report(sweep).table

    def worth(self, sweep: str | None = None) -> pd.DataFrame:
        """Each arm's compute multiplier k and tokens to match (harness.report.worth.COLUMNS)."""
        w = self.sweep_report(sweep).worth
        return w.table if w is not None else pd.DataFrame(columns=WORTH_COLUMNS)

    def text(self, sweep: str | None = None) -> pd.DataFrame:
        """Each arm's uncertainty from the seeds and from the test text (harness.report.text.COLUMNS)."""
        t = self.sweep_report(sweep).text
        return t.table if t is not None else pd.DataFrame(columns=TEXT_COLUMNS)

    def pairing(self, sweep: str | None = None) -> pd.DataFrame:
        """What pairing by seed bought, per paired arm (harness.stats.pairing)."""
        return self.sweep_report(sweep).pairing

    def ladder_report(self, ladder: str | None = None) -> LadderReport:
        """One ladder's report: the one named, or the only one (UserError where there is none or several)."""
        names = ", ".join(r.ladder for r in self.ladders)
        if not self.ladders:
            raise UserError("the report holds no ladder: report a results folder where `harness ladder` ran")
        if ladder is None and len(self.ladders) == 1:
            return self.ladders[0]
        found = [r for r in self.ladders if r.ladder == ladder]
        if ladder is None or not found:
            raise UserError(f"the report holds {len(self.ladders)} ladders ({names}): name one of them"
                            if ladder is None else f"no ladder {ladder!r} in this report: it holds {names}")
        return found[0]

    def ladder_trend(self, ladder: str | None = None) -> pd.DataFrame:
        """Each arm's trend over the ladder's sizes, read at its target (harness.report.ladder.TREND_COLUMNS)."""
        return self.ladder_report(ladder).trends

    def ladder_rungs(self, ladder: str | None = None) -> pd.DataFrame:
        """Each rung's and arm's difference from the baseline (harness.report.ladder.RUNG_COLUMNS)."""
        return self.ladder_report(ladder).table

    def markdown(self, sweep: str | None = None) -> str:
        """One sweep's markdown section, as the report file holds it (without writing files)."""
        rep = self.sweep_report(sweep)
        if isinstance(rep, NoiseReport):
            return render_noise_section(rep, level=1, md_dir=Path("."))
        return render_markdown_section(rep, level=1, md_dir=Path("."))

    def print(self, console: Console | None = None) -> None:
        """Every sweep's table on the terminal, as `harness report` prints it."""
        console = console or Console()
        for rep in self.sweeps:
            (render_noise_terminal if isinstance(rep, NoiseReport) else render_terminal)(rep, console)

    def forest_plot(self, path: str | Path, sweep: str | None = None) -> Path:
        """Draw each arm's difference and interval against the baseline into `path` (a PNG)."""
        rep = self.sweep_report(sweep)
        if isinstance(rep, NoiseReport) or not rep.has_baseline or not plot_forest(rep, Path(path)):
            raise UserError(f"sweep {rep.sweep!r} has no arm compared with a baseline to draw")
        return Path(path)

    def to_json(self) -> dict:
        """The report as JSON-ready data: what `harness report --format json` prints."""
        return jsonable({
            "generated_by": generated_by(), "options": self.settings, "sign_convention": SIGN_CONVENTION,
            "results_files": [{"path": str(f.path.resolve()), "kind": f.kind, "rows": f.rows, "bytes": f.size,
                               "sha256": f.sha256, "modified": f.modified} for f in self.store.files],
            "warnings": self.warnings,
            "sweeps": [noise_to_json(r) if isinstance(r, NoiseReport) else sweep_to_json(r) for r in self.sweeps],
            "ladders": [ladder_to_json(r) for r in self.ladders],
        })

    def _guard(self, out: str | Path | None) -> None:
        """Never write over the results store this report read."""
        if out is not None:
            root = Path(self.settings["results_dir"])
            guard_destination(user_path(out), "--out", {f"the results store's {name}": root / name
                                                        for name in (RUNS, CURVES, MANIFEST)})

    def write_json(self, out: str | Path | None, stdout: TextIO) -> list[Path]:
        self._guard(out)
        text = json.dumps(self.to_json(), indent=2, allow_nan=False)
        stdout.write(text + "\n")
        stdout.flush()
        if out is None:
            return []
        out = user_path(out) / "report.json" if is_folder(out) else user_path(out)
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write {out}: {exc.strerror}; choose another --out") from None
        return [out]

    def write_markdown(self, out: str | Path | None = None, reports_dir: Path = Path("reports"), plots: bool = True,
                       console: Console | None = None) -> list[Path]:
        """Markdown files with their plots (module docstring of run_report), each sweep's table on `console`."""
        self._guard(out)
        console = console or Console()
        written = write_markdown(self.sweeps, self.store, self.outcomes, self.settings, self.warnings, self.options,
                                 out, reports_dir, plots, console)
        return written + write_ladders(self.ladders, out, reports_dir, plots, console)


def build_report(results_dir: Path = Path("results"), sweep: str | None = None,
                 warn: Callable[[str], None] | None = None, **options) -> Report:
    """Read the store and build every sweep's (or the one named's) report and its ladders; raise
    UserError for bad input or where nothing can be reported. A sweep that cannot be reported
    beside others is left out and named in `refused` (and `warn`ed). `options`: ReportOptions."""
    opts = ReportOptions(**options)
    opts.check()
    said: list[str] = []

    def _warn(msg: str) -> None:
        said.append(msg)
        if warn is not None:
            warn(msg)

    store = load_store(Path(results_dir), _warn)
    outcomes = resolve_outcomes(store.runs)
    ladders = saved_ladders(Path(results_dir))
    if sweep is not None and sweep in ladders and sweep not in set(outcomes["sweep"]):
        ladders = {sweep: ladders[sweep]}
        sweeps = [r["sweep"] for r in ladders[sweep]["rungs"] if r["sweep"] in set(outcomes["sweep"])]
        if not sweeps:
            raise UserError(f"ladder {sweep!r} has no recorded runs yet in {results_dir}")
    else:
        sweeps = select_sweeps(outcomes, sweep, opts.baseline, results_dir)
        ladders = {name: rec for name, rec in ladders.items() if sweep is None
                   and any(r["sweep"] in set(sweeps) for r in rec["rungs"])}
    require_completed(outcomes[outcomes["sweep"].isin(sweeps)], sweeps, _warn)
    reps, refused = [], []
    for sw in sweeps:  # one sweep that cannot be reported never stops the others
        try:
            diffs = comparable(outcomes, sw, opts, noise=sw in store.noise)
            reps.append(build_noise_report(outcomes, sw, opts, store.noise[sw], store.planned.get(sw))
                        if sw in store.noise else
                        build_sweep_report(outcomes, sw, opts, differences=diffs, adaptive=store.adaptive.get(sw),
                                           inert=store.inert.get(sw), planned=store.planned.get(sw),
                                           curves=store.curves))
        except UserError as err:
            if sweep is not None:
                raise
            refused.append(f"sweep {sw!r}: {err}")
            _warn(f"sweep {sw!r} is not reported: {err}")
    if not reps:
        raise UserError(" | ".join(refused))
    by_sweep = {r.sweep: r for r in reps if isinstance(r, SweepReport)}
    ladder_reps = []
    for name, record in ladders.items():
        try:
            ladder_reps.append(build_ladder_report(record, outcomes, by_sweep, opts))
        except UserError as err:
            if sweep is not None:
                raise
            refused.append(f"ladder {name!r}: {err}")
            _warn(f"ladder {name!r} is not reported: {err}")
    settings = {"results_dir": str(Path(results_dir).resolve()), "sweep": sweep, "baseline": opts.baseline,
                "alpha": opts.alpha, "margin": opts.margin, "power": opts.power,
                "bootstrap_resamples": opts.n_resamples, "bootstrap_seed": opts.boot_seed,
                "allow_mismatch": opts.allow_mismatch}
    return Report(reps, ladder_reps, store, outcomes, settings, opts, said, refused)


def run_report(results_dir: Path = Path("results"), sweep: str | None = None, *, fmt: Fmt = "markdown",
               out: str | Path | None = None, reports_dir: Path = Path("reports"), plots: bool = True,
               console: Console | None = None, stdout: TextIO | None = None, **options) -> list[Path]:
    """`harness report`: build the report, then write it; raise UserError for bad input. Returns
    the files written.

    sweep None: every sweep in the store, one section each (markdown: one file per sweep,
    reports_dir/<sweep>.md, unless `out` is given, which then holds every section).
    fmt "markdown": markdown + PNG plots next to it, and a table per sweep on `console`.
    fmt "json": the same numbers as JSON on `stdout` (and in `out` if given); warnings go to
    stderr so stdout stays machine-readable. `options`: the fields of ReportOptions."""
    ReportOptions(**options).check()
    if out is not None:  # before the store is read; the writers check it again
        root = Path(results_dir)
        guard_destination(user_path(out), "--out", {f"the results store's {name}": root / name for name in (RUNS, CURVES, MANIFEST)})
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r} is not allowed: use markdown or json")
    console = console or Console()
    warn = _warner(console if fmt == "markdown" else Console(stderr=True))
    report = build_report(results_dir, sweep, warn, **options)
    if fmt == "json":
        written = report.write_json(out, stdout or sys.stdout)
    else:
        written = report.write_markdown(out, reports_dir, plots, console)
    if report.refused:
        selected = len(report.sweeps) + sum(r.startswith("sweep ") for r in report.refused)
        raise UserError(f"{len(report.refused)} of {selected} sweeps could not be reported (the others were): "
                        + " | ".join(report.refused))
    return written


def _warner(console: Console) -> Callable[[str], None]:
    def warn(msg: str) -> None:
        console.print(f"[yellow]warning:[/] {rich_escape(msg)}", markup=True, highlight=False)

    return warn


def select_sweeps(outcomes: pd.DataFrame, sweep: str | None, baseline: str, results_dir: Path) -> list[str]:
    """The sweeps to report: the one asked for, or every one; the baseline must exist."""
    sweeps = sorted(outcomes["sweep"].unique())
    if sweep is not None:
        if sweep not in sweeps:
            raise UserError(f"unknown sweep {sweep!r}: the sweeps in {results_dir} are "
                            f"{', '.join(map(repr, sweeps))}")
        arms_here = sorted(outcomes.loc[outcomes["sweep"].eq(sweep), "arm"].unique())
        if baseline not in arms_here:
            raise UserError(f"unknown baseline {baseline!r}: sweep {sweep!r} has arms "
                            f"{', '.join(map(repr, arms_here))}; pass one with --baseline")
        return [sweep]
    if not outcomes["arm"].eq(baseline).any():
        arms_all = sorted(outcomes["arm"].unique())
        raise UserError(f"unknown baseline {baseline!r}: no sweep in {results_dir} has that arm "
                        f"(arms: {', '.join(map(repr, arms_all))}); pass one with --baseline")
    return sweeps


def require_completed(selected: pd.DataFrame, sweeps: list[str], warn: Callable[[str], None]) -> None:
    """Warn about invalid runs; refuse when no run of the selected sweeps can be compared."""
    invalid = selected[selected["outcome"].eq("invalid")]
    if len(invalid):
        ex = invalid.iloc[0]
        warn(f"{len(invalid)} run(s) have status completed but a NaN/inf test loss (e.g. "
             f"sweep {ex['sweep']!r} arm {ex['arm']!r} seed {int(ex['seed'])}); they are "
             "counted as invalid, listed in the report, and not in n")
    if not selected["outcome"].eq(COMPLETED).any():
        counts = selected["outcome"].value_counts()
        detail = ", ".join(f"{int(counts.get(k, 0))} {k}" for k in OUTCOMES[1:])
        raise UserError(f"nothing to compare: no completed run with a finite test loss in "
                        f"sweep(s) {', '.join(map(repr, sweeps))} ({detail}); finish or "
                        "rerun some runs first")


def comparable(outcomes: pd.DataFrame, sweep: str, opts: ReportOptions, noise: bool = False) -> list[Difference]:
    """How a sweep's arms were not trained alike (harness.report.sameness): refused with one line
    naming the keys and values, unless --allow-mismatch (the report then shows them and withholds
    the verdicts they touch)."""
    rows = ordinary_budget(outcomes[outcomes["sweep"].eq(sweep)])
    diffs = differences(rows, arm_order(rows["arm"].unique(), opts.baseline), opts.baseline, design=not noise)
    if diffs and not opts.allow_mismatch:
        raise Refusal("refusing to compare arms that were not trained alike: " + "; ".join(d.text for d in diffs)
                        + "; rerun them with matching settings (a new --name for a new experiment), or pass "
                        "--allow-mismatch to see them side by side with the verdicts withheld")
    return diffs


def markdown_files(reps: list, out: Path | None, reports_dir: Path) -> list[tuple[Path, list[SweepReport]]]:
    """Which sections go in which file: all in `out` (a file), else one file per sweep in
    `out` (a folder: one that exists, or text ending in '/') or reports_dir, named after the sweep."""
    if out is not None and not is_folder(out):
        return [(user_path(out), reps)]
    folder = user_path(out) if out is not None else Path(reports_dir)
    groups, used = [], set()
    for r in reps:
        name = slug(r.sweep)
        if name.lower() in used:  # two sweep names that map to one file name
            name += "_" + hashlib.sha256(r.sweep.encode()).hexdigest()[:8]
        used.add(name.lower())
        groups.append((folder / f"{name}.md", [r]))
    return groups


def write_markdown(reps: list, store: Store, outcomes: pd.DataFrame, settings: dict,
                   warnings_: list[str], opts: ReportOptions, out: Path | None, reports_dir: Path, plots: bool,
                   console: Console) -> list[Path]:
    md_written: list[Path] = []
    written: list[Path] = []
    curve_agg = aggregate_curves(outcomes, store.curves) if plots else None
    generated = generated_by()
    for md_path, group in markdown_files(reps, out, reports_dir):
        md_dir = md_path.parent
        try:
            md_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create report folder {md_dir}: {exc.strerror}; choose another --out") from None
        multi = len(group) > 1
        for rep in group:
            if plots:
                stem = md_path.stem + (f"_{slug(rep.sweep)}" if multi else "")
                try:
                    if isinstance(rep, NoiseReport):
                        target = md_dir / f"{stem}_noise.png"
                        rep.plots = {"noise": target} if plot_noise(rep, target) else {}
                    else:
                        make_plots(rep, outcomes, curve_agg, md_dir, stem)
                except OSError as exc:
                    raise UserError(f"cannot write plots to {md_dir}: {exc.strerror}; choose another --out") from None
                written += list(rep.plots.values())
        level = 2 if multi else 1
        parts = ["# Harness report", ""] if multi else []
        parts += [f"_Generated {generated['at']} by harness {generated['harness']} "
                  f"(scipy {generated['scipy']}, statsmodels {generated['statsmodels']})._", ""]
        for msg in warnings_:
            parts += [f"> Warning: {md_escape(msg)}", ""]
        for rep in group:
            parts.append(render_noise_section(rep, level=level, md_dir=md_dir) if isinstance(rep, NoiseReport)
                         else render_markdown_section(rep, level=level, md_dir=md_dir))
        parts.append(render_provenance(store.files, group, settings, level + (0 if multi else 1)))
        try:
            md_path.write_text("\n".join(parts), encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write report {md_path}: {exc.strerror}; choose another --out") from None
        md_written.append(md_path)
        for rep in group:
            if isinstance(rep, NoiseReport):
                render_noise_terminal(rep, console)
            else:
                render_terminal(rep, console)
        console.print(f"report written to {rich_escape(str(md_path))}", highlight=False)
    return md_written + written


def write_ladders(reps: list[LadderReport], out: Path | None, reports_dir: Path, plots: bool,
                  console: Console) -> list[Path]:
    """One markdown file per ladder, <ladder>.md, in the folder the sweeps' reports go to (next
    to `out` when it names a file), with its plot; the trend table in the terminal."""
    folder = Path(reports_dir) if out is None else user_path(out) if is_folder(out) else user_path(out).parent
    written = []
    for rep in reps:
        md_path = folder / f"{slug(rep.ladder)}.md"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            if plots and plot_ladder(rep, folder / f"{slug(rep.ladder)}_ladder.png"):
                rep.plots["ladder"] = folder / f"{slug(rep.ladder)}_ladder.png"
                written.append(rep.plots["ladder"])
            md_path.write_text(render_ladder_section(rep, folder), encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write the ladder report {md_path}: {exc.strerror}; choose another --out") from None
        render_ladder_terminal(rep, console)
        console.print(f"ladder report written to {rich_escape(str(md_path))}", highlight=False)
        written.insert(0, md_path)
    return written


def slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return s or "sweep"


def generated_by() -> dict:
    import importlib.metadata as md

    import scipy
    import statsmodels

    try:
        version = md.version("harness")
    except md.PackageNotFoundError:  # pragma: no cover
        version = "unknown"
    return {"harness": version, "scipy": scipy.__version__, "statsmodels": statsmodels.__version__,
            "numpy": np.__version__, "pandas": pd.__version__,
            "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}
