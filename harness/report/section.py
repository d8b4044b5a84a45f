"""A sweep report's section as one unit: the numbers it builds from the sweep's runs and every form
they take (markdown, its keys in the JSON, terminal lines, its Methods bullets, a tracker's fields);
and what every section reads: the report's options, the sweep's data, the built SweepReport.

A new statistic is one module that defines a Section, and one entry in
harness.report.compare.SECTIONS, whose order is the order of the report (the renderers and the
trackers read SECTIONS when they run). The report's frame (its heading, runs, plots,
comparability and provenance) renders around the sections and calls none by name; it reads two
parts that every sweep report has: the verdicts' table (the arms compared, their notes) and the
worth's held-out curves (a plot's caption).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from harness.core.config import BASELINE
from harness.core.errors import UserError
from harness.planning.adaptive import Adaptive, check_error_rates
from harness.stats import inference as stats

WITHHELD = "withheld: not trained alike"  # an arm's verdict, or its row's note, where differences withhold it
Series = dict[str, list[tuple[int, float]]]  # a tracker's curves: name -> (step or tokens, value)


@dataclass(frozen=True)
class ReportOptions:
    """How arms are compared (every field is also a `harness report` option)."""

    baseline: str = BASELINE
    alpha: float = 0.05  # significance level, after Holm's correction across arms
    margin: float | None = None  # equivalence margin in test loss (TOST); None: not tested
    power: float = 0.8  # for minimum detectable differences and seeds needed
    n_resamples: int = stats.DEFAULT_RESAMPLES  # BCa bootstrap resamples
    boot_seed: int = stats.DEFAULT_BOOT_SEED
    allow_mismatch: bool = False  # compare arms whose budgets, presets or test sets differ

    @property
    def confidence(self) -> str:
        """The intervals' level as the report labels them, e.g. '95%'."""
        return f"{100 * (1 - self.alpha):g}%"

    def check(self) -> None:
        check_error_rates(self.alpha, self.margin)
        if not 0 < self.power < 1:
            raise UserError(f"power {self.power!r} is not allowed: give a number between 0 and 1")
        if not self.baseline:
            raise UserError("--baseline is empty: name the arm to compare against, e.g. baseline")


@dataclass
class SweepReport:
    """One sweep's report: its frame (accounting, provenance, differences, notes) and each section's
    part (harness.report.compare.SECTIONS; the properties name the parts that the report's tables
    and plots read)."""

    sweep: str
    baseline: str
    has_baseline: bool
    accounting: pd.DataFrame
    problems: pd.DataFrame
    mismatches: list[str]
    allow_mismatch: bool
    provenance: dict
    notes: list[str]
    options: ReportOptions  # the settings that made it: alpha, margin, power, bootstrap
    parts: dict[str, Any] = field(default_factory=dict)  # section key -> what its build made
    withheld: list[str] = field(default_factory=list)  # arms whose verdicts differences withhold
    complete: bool = True  # every planned run has a recorded result
    plots: dict[str, Path] = field(default_factory=dict)

    @property
    def table(self) -> pd.DataFrame:
        """Each arm's numbers (harness.stats.inference.COLUMNS)."""
        return self.parts["verdicts"].table

    @property
    def adaptive(self) -> pd.DataFrame | None:
        """An adaptive sweep's sequential decisions per arm."""
        return self.parts["verdicts"].sequential

    @property
    def adaptive_settings(self) -> Adaptive | None:
        return self.parts["verdicts"].settings

    @property
    def worth(self):
        """Compute multipliers and held-out curves (harness.report.worth.Worth), or None."""
        return self.parts["worth"]

    @property
    def text(self):
        """The seeds' and the test text's uncertainty (harness.report.text.TextReport), or None."""
        return self.parts["text"]

    @property
    def pairing(self) -> pd.DataFrame:
        """What pairing by seed bought, per paired arm (harness.report.pairing)."""
        return self.parts["pairing"]

    @property
    def noise(self) -> dict:
        """The baseline's noise floor (harness.stats.inference.noise_floor)."""
        return self.parts["noise_floor"]


@dataclass(frozen=True)
class SweepData:
    """What every section builds from: one sweep's rows and the report's options."""

    baseline: str
    options: ReportOptions
    arms: list[str]  # in report order, the baseline first
    every_budget: pd.DataFrame  # the sweep's rows (harness.report.outcomes), the baseline's other budgets too
    rows: pd.DataFrame  # ... at the sweep's own budget
    done: pd.DataFrame  # ... completed, one per arm and seed
    accounting: pd.DataFrame  # per arm: seeds started, their outcomes, attempts
    withheld: frozenset[str]  # arms whose comparisons differences withhold
    interim: bool  # a fixed design with planned runs missing: its verdicts are interim
    curves: pd.DataFrame | None = None  # the store's curves (held-out points), None where not read
    adaptive: Adaptive | None = None  # an adaptive sweep's settings

    @property
    def has_baseline(self) -> bool:
        return self.baseline in set(self.arms)


def _nothing(rep: SweepReport) -> list:
    return []


def _untracked(sweep: dict, compared: set[str]) -> tuple[dict[str, float], Series]:
    return {}, {}


@dataclass(frozen=True)
class Section:
    """One section: `build` makes its part of SweepReport.parts (None: nothing to say), the rest
    render that part. `hh` is the markdown heading of its subsections (the sweep's level plus one)."""

    key: str
    build: Callable[[SweepData], Any]
    markdown: Callable[[SweepReport, str], list[str]]
    json: Callable[[SweepReport], dict[str, Any]]  # its keys in the sweep's JSON
    terminal: Callable[[SweepReport], list] = _nothing  # rich renderables or markup lines, before the frame's
    methods: Callable[[SweepReport], list[str]] = _nothing  # its bullets in the report's Methods
    tracked: Callable[[dict, set[str]], tuple[dict[str, float], Series]] = _untracked
    """A tracker's metrics ("<arm>/<field>") and series of the compared arms, read from the sweep's
    JSON (harness.trackers.records), so that a tracker shows exactly what the report says."""
