"""Whether arms were trained alike: a comparison is only as good as its arms' sameness.

An arm may differ from its baseline only by what its interventions set (the keys recorded with
each run, harness.store.record.RunSpec.intervention_sets, or the baseline's own when --baseline
names an intervention). Every other key of what a run computes must be equal between the two,
and within each arm across its seeds: every model and training key (the placement knobs aside:
harness.core.config.PLACEMENT_KEYS), the token budget, the corpus (its content, or for rows older
than data ids its path) and the test set, and which random streams the seed drives; at one seed,
arm and baseline must share their sub-seeds (that is the pairing). Each difference is named with
its values and the seeds that have them; the report refuses to compare (or, with
--allow-mismatch, shows the difference and withholds the verdicts it touches).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.core.scheme import every_key, experiment, scheme_of, shown, trainer_table
from harness.core.seeds import STREAMS, derive_seed
from harness.store.record import COMPLETED

BUDGET, TEST_SET, DATA, DATA_PATH, STREAMS_LABEL, PRESET = (
    "token budget (planned_tokens)", "test set (test_set_id)", "data (the corpus's content)", "data (path)",
    "random streams held fixed", "preset")
SUB_SEEDS = "sub-seeds at the same seed (the pairing)"


@dataclass(frozen=True)
class Difference:
    """One way the compared runs were not trained alike."""

    label: str
    arms: frozenset[str]  # the arms whose verdicts it touches
    text: str


def _config(row) -> dict | None:
    try:
        config = json.loads(row.config) if isinstance(row.config, str) and row.config else None
    except ValueError:
        return None
    if trainer_table(config) is not None:  # an external trainer's settings
        return config
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict) or not isinstance(config.get("train"), dict):
        return None
    return config


def streams_held(row) -> str:
    """Which streams are not derived from the row's seed (fixed by hand, or a noise study's)."""
    seeds = {s: getattr(row, f"{s}_seed") for s in STREAMS}
    if not all(np.isfinite(v) for v in seeds.values()):
        return ""
    held = [f"{s} at {int(v)}" for s, v in seeds.items() if int(v) != derive_seed(int(row.seed), s)]
    return ", ".join(held) if held else "none"


LABELS = {"tokens": BUDGET, "data_id": DATA, "data": DATA_PATH, "tokens_per_step": "tokens per step"}
# facts derived from keys: an arm whose interventions set one of the keys may differ in the fact, as
# part of its treatment (a batch-size or context study: its tokens per step; its budget only by the
# rounding up to its own whole global batches: rounded_alike)
DERIVED = {LABELS["tokens_per_step"]: {"global_batch", "context_length"}}


def facts(row, with_data_ids: bool, streams: bool = True) -> dict[str, str]:
    """Everything that must match, as label -> shown value, for one completed run (a row): its
    experiment (harness.core.scheme.experiment, key by key, a key one record lacks at its neutral
    value), test set, and streams held fixed."""
    config = _config(row)
    if config is None:  # a hand-made row: its budget, test set, config hash and preset stand for it
        return {BUDGET: "unknown" if not np.isfinite(row.planned_tokens) else str(int(row.planned_tokens)),
                TEST_SET: str(row.test_set_id), PRESET: str(row.preset)}
    if not (np.isfinite(row.planned_tokens) and np.isfinite(row.tokens_per_step)):
        return {TEST_SET: str(row.test_set_id)}
    keys = every_key(experiment(config, int(row.planned_tokens), int(row.tokens_per_step),
                                row.data_id if with_data_ids else "", scheme_of(getattr(row, "identity_scheme", None)),
                                f"run {row.run_id}"))
    out = {LABELS.get(k, k): f"{v:,}" if k == "tokens" else shown(k, v) if k != "data_id" else str(v)
           for k, v in keys.items()}
    out[TEST_SET] = str(row.test_set_id)
    held = streams_held(row) if streams else ""
    if held:
        out[STREAMS_LABEL] = held
    return out


def own_keys(rows: pd.DataFrame) -> set[str]:
    """The labels an arm's interventions may change: the keys they set (recorded with its runs;
    older rows: its overrides), an intervention that sets `data` also the corpus."""
    keys: set[str] = set()
    for text in list(rows["intervention_sets"]) or []:
        try:
            keys |= set(json.loads(text)) if text else set()
        except (TypeError, ValueError):
            continue
    if not keys and "overrides" in rows:
        for text in rows["overrides"]:
            try:
                keys |= set(json.loads(text)) if text else set()
            except (TypeError, ValueError):
                continue
    derived = {label for label, sources in DERIVED.items() if keys & sources}
    return keys | {LABELS[k] for k in keys if k in LABELS} | ({DATA} if "data" in keys else set()) | derived



def rounded_alike(arm: pd.DataFrame, base: pd.DataFrame) -> bool:
    """Whether an arm that sets its own tokens per step (global_batch, context_length) trains the
    baseline's budget up to rounding to whole steps: the two budgets differ by less than one step of
    the larger of the two (a real mismatch, say another --tokens, is still one)."""
    if arm.empty or base.empty or not own_keys(arm) & set().union(*DERIVED.values()):
        return False
    step = max(int(arm["tokens_per_step"].iloc[0]), int(base["tokens_per_step"].iloc[0]))
    return abs(int(arm["planned_tokens"].iloc[0]) - int(base["planned_tokens"].iloc[0])) < step


def own_budget(rows: pd.DataFrame) -> bool:
    """Whether every run's budget is its own Chinchilla count (`--budget own`): tokens_per_param x
    its parameters, rounded up to whole global batches. Arms that each train on their own count
    differ in budget by design, not by mismatch."""
    for r in rows.itertuples():
        config = _config(r)
        if config is None or not (np.isfinite(r.planned_tokens) and np.isfinite(r.params) and r.tokens_per_step > 0):
            return False
        per_param = float((config.get("train") or trainer_table(config) or {}).get("tokens_per_param", 20.0))
        raw = math.ceil(per_param * int(r.params))
        if int(r.planned_tokens) != math.ceil(raw / int(r.tokens_per_step)) * int(r.tokens_per_step):
            return False
    return len(rows) > 0


def _seeds(values: Sequence[int]) -> str:
    ordered = sorted(int(s) for s in values)
    return ", ".join(map(str, ordered[:8])) + (f" and {len(ordered) - 8} more" if len(ordered) > 8 else "")


def differences(outcomes: pd.DataFrame, arms: Sequence[str], baseline: str, design: bool = True) -> list[Difference]:
    """How the completed runs of `arms` (one sweep's, the baseline among them) were not trained
    alike beyond each arm's own interventions: within an arm across seeds, between an arm and the
    baseline, and in the sub-seeds at one seed. design False (a noise study, whose runs vary their
    streams on purpose): the experiment and test set only."""
    done = outcomes[outcomes["outcome"].eq(COMPLETED) & outcomes["arm"].isin(list(arms))]
    if done.empty:
        return []
    with_ids = bool(done["data_id"].astype(str).str.len().gt(0).all())
    table = pd.DataFrame([facts(r, with_ids, design) | {"_arm": r.arm, "_seed": int(r.seed)} for r in done.itertuples()])
    labels = [c for c in table.columns if not c.startswith("_")]
    out: list[Difference] = []
    for label in labels:  # within an arm, across its seeds
        mixed = []
        for arm, g in table.groupby("_arm", sort=False):
            values = g[label].fillna("(none)")
            if values.nunique() > 1:
                parts = ", ".join(f"{v} (seeds {_seeds(g.loc[values == v, '_seed'])})" for v in sorted(values.unique()))
                mixed.append((arm, f"{arm}: {parts}"))
        if mixed:
            touched = frozenset(arms) if any(a == baseline for a, _ in mixed) else frozenset(a for a, _ in mixed)
            out.append(Difference(label, touched, f"{label} differs across seeds ({'; '.join(t for _, t in mixed)})"))
    within = {d.label for d in out}
    base = table[table["_arm"].eq(baseline)]
    base_keys = own_keys(done[done["arm"].eq(baseline)])
    for label in labels:  # between an arm and the baseline, where both are consistent
        if label in within or base.empty:
            continue
        base_value = base[label].fillna("(none)").iloc[0]
        differing = {}
        for arm, g in table[table["_arm"].ne(baseline)].groupby("_arm", sort=False):
            value = g[label].fillna("(none)").iloc[0]
            arm_rows = done[done["arm"].eq(arm)]
            base_rows = done[done["arm"].eq(baseline)]
            if label == BUDGET and (own_budget(arm_rows) and own_budget(base_rows) or rounded_alike(arm_rows, base_rows)):
                continue  # --budget own (each arm's Chinchilla count), or one budget in each arm's own whole steps
            if value != base_value and label not in own_keys(arm_rows) | base_keys:
                differing[arm] = value
        if differing:
            shown = ", ".join(f"{a}: {v}" for a, v in [(baseline, base_value), *differing.items()])
            out.append(Difference(label, frozenset(differing), f"{label} differs between arms ({shown})"))
    if "config_hash" in done and labels == [BUDGET, TEST_SET, PRESET]:  # hand-made rows: one config per arm
        for arm, values in done.groupby("arm")["config_hash"].unique().items():
            values = sorted(v for v in values if v)
            if len(values) > 1:
                out.append(Difference("config", frozenset({arm}), f"arm {arm} has runs with different configs "
                                                                  f"(config_hash {', '.join(values)})"))
    return out + (_pairing(done, baseline) if design else [])


def _pairing(done: pd.DataFrame, baseline: str) -> list[Difference]:
    """Arms paired with the baseline at a seed must share its sub-seeds there."""
    cols = [f"{s}_seed" for s in STREAMS]
    if not np.isfinite(done[cols].to_numpy(dtype=float)).all():
        return []
    base = done[done["arm"].eq(baseline)].drop_duplicates("seed").set_index("seed")[cols]
    broken: dict[str, list[int]] = {}
    for r in done[done["arm"].ne(baseline)].itertuples():
        if r.seed in base.index and tuple(base.loc[r.seed]) != tuple(getattr(r, c) for c in cols):
            broken.setdefault(r.arm, []).append(int(r.seed))
    return [Difference(SUB_SEEDS, frozenset({arm}), f"{SUB_SEEDS} differ: {arm} and {baseline} at seeds "
                                                    f"{_seeds(seeds)} drew other random streams")
            for arm, seeds in broken.items()]
