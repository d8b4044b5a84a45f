"""Adaptive sweeps (`harness sweep --until-decided`): run only as many seeds as the evidence needs.

The sweep runs in rounds, seed-major: round r gives seed r to the baseline and to every arm still
undecided after the rounds before it. After each round every undecided arm is looked at with the
sequential test of harness.stats.sequential (repeated confidence intervals, valid under optional
stopping, Holm-type alpha recycling across arms); a decided arm gets no more seeds; the baseline goes on while
any arm is undecided; at max_seeds the rest are "undecided at the cap".

Everything here is a function of the results store: an arm's state is recomputed from its
recorded paired differences in seed order, so a sweep stopped and started again picks up at the
same round with the same decisions, and the report and `harness status` see what the sweep saw.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Iterator

import numpy as np
import pandas as pd

from harness.core.config import BASELINE
from harness.core.errors import UserError
from harness.store.record import COMPLETED, ordinary_budget
from harness.stats.sequential import DEFAULT_MAX_SEEDS, DEFAULT_MIN_SEEDS, METHOD, Look, decide, decided


MAX_ALPHA = 0.5  # above it a "significant" verdict is closer to a coin toss than to evidence
MAX_MARGIN = 1.0  # nats of test loss: larger than any intervention's effect, so everything is "equivalent"


def check_error_rates(alpha, margin) -> None:
    """--alpha and --margin as a test can use them (one line naming what is allowed otherwise)."""
    if not (isinstance(alpha, (int, float)) and 0 < alpha <= MAX_ALPHA):
        raise UserError(f"--alpha {alpha!r} is not allowed: give a significance level above 0 and at most "
                        f"{MAX_ALPHA:g}, e.g. 0.05")
    if margin is not None and not (math.isfinite(margin) and 0 < margin < MAX_MARGIN):
        raise UserError(f"--margin {margin!r} is not allowed: give a positive test-loss difference below "
                        f"{MAX_MARGIN:g} nat (larger margins call any two arms equivalent), e.g. 0.005")


DEFAULT_ALPHA = 0.05  # family-wise error across an adaptive sweep's arms


@dataclass(frozen=True)
class Adaptive:
    """The settings of an adaptive sweep (saved with its plan)."""

    alpha: float = DEFAULT_ALPHA
    margin: float | None = None
    min_seeds: int = DEFAULT_MIN_SEEDS
    max_seeds: int = DEFAULT_MAX_SEEDS

    def check(self) -> None:
        check_error_rates(self.alpha, self.margin)
        for flag, value in (("--min-seeds", self.min_seeds), ("--max-seeds", self.max_seeds)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise UserError(f"{flag} {value!r}: give a whole number of seeds")
        if self.min_seeds < 2:
            raise UserError(f"--min-seeds must be >= 2 (a t interval needs 2 pairs), got {self.min_seeds}")
        if self.max_seeds < self.min_seeds:
            raise UserError(f"--max-seeds {self.max_seeds} is below --min-seeds {self.min_seeds}; "
                            "give a cap at least as large")
        if self.max_seeds > 1000:
            raise UserError(f"--max-seeds must be at most 1000, got {self.max_seeds}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self) | {"method": METHOD}

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "Adaptive | None":
        if not isinstance(data, dict):
            return None
        try:
            return cls(**{k: data[k] for k in ("alpha", "margin", "min_seeds", "max_seeds")})
        except (KeyError, TypeError):
            return None


@dataclass(frozen=True)
class ArmState:
    arm: str
    look: Look  # the deciding look, or the latest one
    seeds: list[int]  # seeds whose pair entered, in order
    decided_round: int | None  # the seed (round) at which it was decided
    outliers: list[int] = field(default_factory=list)  # seeds whose paired difference is far from the rest's

    @property
    def state(self) -> str:
        return self.look.state

    @property
    def decided(self) -> bool:
        return decided(self.look.state)


def paired_differences(rows: pd.DataFrame, arms: list[str], baseline: str, max_seeds: int) -> np.ndarray:
    """[arm, seed] arm - baseline test loss over seeds 0 .. max_seeds-1 where both completed (NaN elsewhere)."""
    done = ordinary_budget(rows)
    done = done[done["status"].eq(COMPLETED) & np.isfinite(done["test_loss"].astype(float))]
    by = done.drop_duplicates(["arm", "seed"]).set_index(["arm", "seed"])["test_loss"]
    out = np.full((len(arms), max_seeds), np.nan)
    if baseline not in by.index.get_level_values(0):
        return out
    base = by.loc[baseline]
    for j, arm in enumerate(arms):
        if arm in by.index.get_level_values(0):
            diff = (by.loc[arm] - base).dropna()
            diff = diff[(diff.index >= 0) & (diff.index < max_seeds)]
            out[j, diff.index.to_numpy(dtype=int)] = diff.to_numpy(dtype=float)
    return out


def arm_states(rows: pd.DataFrame, arms: list[str], baseline: str, settings: Adaptive,
               before_round: int | None = None) -> dict[str, ArmState]:
    """Every compared arm's state from the recorded rows, as the sweep decided them round by round
    (rounds 0 .. before_round-1; default: every round that has a baseline row)."""
    diffs = paired_differences(rows, arms, baseline, settings.max_seeds)
    if before_round is None:
        base_rows = ordinary_budget(rows)
        ran = base_rows.loc[base_rows["arm"].eq(baseline), "seed"] if len(base_rows) else pd.Series(dtype=int)
        before_round = int(ran.max()) + 1 if len(ran) else 0
    before_round = min(before_round, settings.max_seeds)  # rows of seeds past the cap (added by hand) never look
    got = decide(diffs[None], settings.alpha, settings.min_seeds, settings.max_seeds, settings.margin, before_round)
    from harness.stats.inference import outlying_seeds  # scipy: here, so that the CLI checks its options without it

    out = {}
    for j, arm in enumerate(arms):
        at = int(got["round"][0, j])
        last = at if at >= 0 else before_round - 1
        seeds = [int(s) for s in np.flatnonzero(np.isfinite(diffs[j, :last + 1]))] if last >= 0 else []
        n = got["n"][0, j]
        look = Look(int(n) if np.isfinite(n) else len(seeds), float(got["mean"][0, j]), float(got["low"][0, j]),
                    float(got["high"][0, j]), str(got["state"][0, j]))
        flagged = outlying_seeds(pd.Series(diffs[j, seeds], index=seeds)) if seeds else []
        out[arm] = ArmState(arm, look, seeds, at if at >= 0 else None, [s for s, _ in flagged])
    return out


def round_arms(rows: pd.DataFrame, arms: list[str], baseline: str, settings: Adaptive, r: int) -> list[str]:
    """The arms that get seed r: the baseline and every arm undecided after rounds 0..r-1
    (none once every arm is decided)."""
    states = arm_states(rows, arms, baseline, settings, before_round=r)
    open_arms = [a for a in arms if not states[a].decided]
    return [baseline, *open_arms] if open_arms else []


def rounds(plan, console) -> Iterator[list]:
    """The runs of a plan (a harness.planning.plan.Plan) to run: all at once for a fixed sweep; for an
    adaptive one, round by round (seed r for the baseline and every arm still undecided), each
    decided from what the store holds when the round comes. Prints each round's decisions. The
    baseline's runs at other budgets (--extend-baseline) come last, for the seeds the baseline ran:
    an extended run continues its ordinary run's final checkpoint."""
    from harness.store.results import ResultsStore

    ordinary = [s for s in plan.specs if s.budget_factor == 1.0]
    extended = [s for s in plan.specs if s.budget_factor != 1.0]
    if plan.adaptive is None:
        yield ordinary
        if extended:
            yield extended
        return
    store = ResultsStore(plan.results)
    by_run = {(s.arm, s.seed): s for s in ordinary}
    arms = [a for a in plan.arms if a != BASELINE]
    ran = []
    for r in plan.seeds:
        give = round_arms(store.sweep_frame(plan.sweep), arms, BASELINE, plan.adaptive, r)
        if not give:
            break
        ran.append(r)
        yield [by_run[(arm, r)] for arm in plan.arms if arm in give]
        states = arm_states(store.sweep_frame(plan.sweep), arms, BASELINE, plan.adaptive, before_round=r + 1)
        console.print(f"round {r + 1}: {summary(states)}", markup=False, highlight=False)
    if extended and ran:
        yield [s for s in extended if s.seed in ran]


def summary(states: dict[str, ArmState]) -> str:
    """One line: each arm's state, interval and seeds."""
    parts = []
    for arm, s in states.items():
        flag = f"; outlying seed {', '.join(map(str, s.outliers))}: see the report" if s.outliers else ""
        if s.decided:
            parts.append(f"{arm}: {s.state} at {len(s.seeds)} seeds "
                         f"(interval [{s.look.low:+.6f}, {s.look.high:+.6f}]{flag})")
        else:
            parts.append(f"{arm}: undecided after {len(s.seeds)} seeds{flag}")
    return "; ".join(parts)
