"""A sweep report's section as one unit: the numbers it builds from the sweep's runs and every form
they take (markdown, its keys in the JSON, terminal lines, its Methods bullets, a tracker's fields).

A new statistic is one module that defines a Section, and one entry in
harness.report.compare.SECTIONS, whose order is the order of the report; the report's frame (its
heading, runs, plots, comparability and provenance) renders around the sections and knows none of
them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import pandas as pd

if TYPE_CHECKING:
    from harness.planning.adaptive import Adaptive
    from harness.report.compare import ReportOptions, SweepReport

WITHHELD = "withheld: not trained alike"  # an arm's verdict, or its row's note, where differences withhold it
Series = dict[str, list[tuple[int, float]]]  # a tracker's curves: name -> (step or tokens, value)


@dataclass(frozen=True)
class SweepData:
    """What every section builds from: one sweep's rows and the report's options."""

    sweep: str
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
    terminal: Callable[[SweepReport], list] = _nothing  # rich renderables or markup lines, after the frame's
    methods: Callable[[SweepReport], list[str]] = _nothing  # its bullets in the report's Methods
    tracked: Callable[[dict, set[str]], tuple[dict[str, float], Series]] = _untracked
    """A tracker's metrics ("<arm>/<field>") and series of the compared arms, read from the sweep's
    JSON (harness.trackers.records), so that a tracker shows exactly what the report says."""
