"""What an experiment tracker is given: the results store's runs and a sweep's verdicts, as
tracker-neutral records that each tracker module maps onto its own conventions.

  TrackedRun    one recorded attempt of one run (arm x seed): its tags (arm, seeds and sub-seeds,
                attempt, whether it is the attempt that counts, the pair it belongs to, config
                hash, preset, budget), its flattened config, its curves by step (train/loss,
                train/lr, train/tokens_per_s, heldout/loss) and its final figures (test/loss ...)
  TrackedSweep  one state of a sweep's report: per compared arm its verdict, and each report
                section's tracked numbers (harness.report.section: the difference, its interval, p
                and Holm p; the compute multiplier; the paired-difference curve by tokens)

The store stays the source of truth: every value here is read from it (the sweep's numbers through
`harness report`'s own JSON), so a tracker shows exactly what the store and the report hold. A
record's key is how a tracker finds it again, so that publishing twice adds nothing.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.bounds import finite_number
from harness.core.errors import Refusal, UserError
from harness.core.scheme import recorded
from harness.store.record import counted

RUN_METRICS = {"train_loss": "train/loss", "lr": "train/lr", "tokens_per_s": "train/tokens_per_s",
               "heldout_loss": "heldout/loss"}
FINAL_METRICS = {"test_loss": "test/loss", "train_loss": "final/train_loss", "tokens_per_s": "final/tokens_per_s",
                 "wall_time_s": "final/wall_time_s", "tokens_seen": "final/tokens_seen"}


@dataclass(frozen=True)
class TrackedRun:
    key: str  # sweep/run_id/attempt: one tracker run per recorded attempt
    sweep: str
    name: str  # "qkv_bias seed 3", "... (attempt 2)" for a rerun attempt
    tags: dict[str, str]
    config: dict[str, Any]
    series: dict[str, list[tuple[int, float]]]  # metric -> (step, value), steps ascending
    final: dict[str, float]  # figures at the end of the run (FINAL_METRICS)
    status: str
    steps: int


@dataclass(frozen=True)
class TrackedSweep:
    sweep: str
    state: str  # 12 hex digits of the content: a changed report is a new state, the same one is not
    runs: int  # runs the report counted
    tags: dict[str, str]
    metrics: dict[str, float]  # "<arm>/diff", "<arm>/p_holm", "<arm>/k" ...
    series: dict[str, list[tuple[int, float]]] = field(default_factory=dict)  # "paired_diff/<arm>/mean" by tokens

    @property
    def key(self) -> str:
        return f"{self.sweep}/summary/{self.state}"

    @property
    def name(self) -> str:
        return f"{self.sweep} summary ({self.runs} runs{', refused' if REFUSED in self.tags else ''})"


REFUSED = "harness.refused"  # a summary's tag: why the report refuses the sweep (it then has no verdicts)


def run_key(sweep: str, run_id: str, attempt: int) -> str:
    return f"{sweep}/{run_id}/{int(attempt)}"


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"model": {"n_layers": 2}} -> {"model.n_layers": 2}: trackers' config tables are flat."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _read_config(row: dict[str, Any]) -> dict[str, Any]:
    """A row's config as this version records it (harness.core.scheme.recorded), so that runs
    recorded by older and newer versions show the same parameters for the same computation; a
    hand-made row's as it is."""
    config = _json(row["config"])
    if not all(isinstance(config.get(s), dict) for s in ("model", "train")):
        return config
    return recorded(config, f"run {row['run_id']} of sweep {row['sweep']!r}")


def _json(text: Any) -> dict[str, Any]:
    if isinstance(text, dict):
        return text
    try:
        value = json.loads(text) if isinstance(text, str) and text else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def run_records(store, sweep: str | None = None, run_ids: set[str] | None = None) -> list[TrackedRun]:
    """Every recorded attempt in the store (of one sweep, of some runs), oldest first per run."""
    runs = store.runs_frame()
    if sweep is not None:
        runs = runs[runs["sweep"] == sweep]
    if run_ids is not None:
        runs = runs[runs["run_id"].isin(run_ids)]
    if runs.empty:
        return []
    curves = store.curves().to_pandas(use_threads=False)
    curves = curves[curves["run_id"].isin(set(runs["run_id"]))]
    by_attempt = {key: group.sort_values("step") for key, group in curves.groupby(["run_id", "attempt"])}
    records = []
    for (sweep_name, run_id), attempts in runs.groupby(["sweep", "run_id"], sort=False):
        rows = attempts.sort_values("attempt").to_dict("records")
        speaks = counted(rows)
        for row in rows:
            records.append(_run_record(row, by_attempt.get((run_id, row["attempt"])),
                                       speaks is not None and speaks["attempt"] == row["attempt"]))
    return records


def _run_record(row: dict[str, Any], curve, is_counted: bool) -> TrackedRun:
    attempt = int(row["attempt"])
    name = f"{row['arm']} seed {int(row['seed'])}" + (f" (attempt {attempt})" if attempt > 1 else "")
    tags = {"harness.sweep": row["sweep"], "harness.run_id": row["run_id"], "harness.arm": row["arm"],
            "harness.interventions": row["interventions"] or "none", "harness.seed": str(int(row["seed"])),
            "harness.init_seed": str(int(row["init_seed"])), "harness.data_seed": str(int(row["data_seed"])),
            "harness.dropout_seed": str(int(row["dropout_seed"])), "harness.attempt": str(attempt),
            "harness.counted": "true" if is_counted else "false", "harness.status": row["status"],
            "harness.pair": f"{row['sweep']}/seed {int(row['seed'])}", "harness.config_hash": row["config_hash"],
            "harness.identity": row.get("identity") or "", "harness.preset": row["preset"],
            "harness.params": str(int(row["params"])), "harness.budget_tokens": str(int(row["planned_tokens"])),
            "harness.budget_factor": f"{float(row.get('budget_factor') or 1.0):g}",
            "harness.world_size": str(int(row["world_size"])), "harness.device": row.get("device") or "",
            "harness.vary": row.get("vary") or "", "harness.data_id": row.get("data_id") or ""}
    if row.get("reason"):
        tags["harness.reason"] = str(row["reason"])[:500]
    config = flatten(_read_config(row)) | {f"overrides.{k}": v for k, v in flatten(_json(row["overrides"])).items()}
    series: dict[str, list[tuple[int, float]]] = {}
    if curve is not None:
        for column, metric in RUN_METRICS.items():
            if column not in curve.columns:
                continue
            points = [(int(s), float(v)) for s, v in zip(curve["step"], curve[column]) if finite_number(v)]
            if points:
                series[metric] = points
    final = {metric: float(row[column]) for column, metric in FINAL_METRICS.items() if finite_number(row.get(column))}
    return TrackedRun(key=run_key(row["sweep"], row["run_id"], attempt), sweep=row["sweep"], name=name, tags=tags,
                      config=config, series=series, final=final, status=row["status"], steps=int(row["steps"] or 0))


def _state(content: Any) -> str:
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:12]


def sweep_record(results: Path, sweep: str) -> tuple[TrackedSweep | None, str]:
    """The sweep's report as a tracker record, or None and why there is none (a noise study, no
    baseline yet, nothing completed). A report that refuses the sweep (harness.core.errors.Refusal:
    arms not trained alike) is a record too: no verdicts, its reason under REFUSED, so that a tracker
    never goes on showing an earlier verdict."""
    from harness.report.build import run_report
    from harness.report.compare import SECTIONS
    from harness.report.verdicts import compared_verdicts, withheld_arms
    from harness.store.results import ResultsStore

    out = io.StringIO()
    try:
        run_report(Path(results), sweep, fmt="json", plots=False, stdout=out, console=_quiet_console())
    except Refusal as err:
        runs = ResultsStore(Path(results)).runs_frame()
        rows = runs[runs["sweep"] == sweep] if len(runs) else runs
        tags = {"harness.sweep": sweep, "harness.kind": "summary", REFUSED: str(err)[:500]}
        recorded = sorted(zip(rows["run_id"], rows["attempt"].astype(int).tolist())) if len(rows) else []
        return TrackedSweep(sweep=sweep, state=_state([tags, recorded]), runs=len({r for r, _ in recorded}),
                            tags=tags, metrics={}), ""  # the state: the refusal of these very rows
    except UserError as err:
        return None, str(err)
    report = json.loads(out.getvalue() or "{}")
    section = next((s for s in report.get("sweeps", []) if s.get("sweep") == sweep), None)
    if section is None:
        return None, "not a sweep with arms to compare (a noise study, or a ladder's name)"
    if not section.get("has_baseline"):
        return None, "no baseline runs yet"
    verdicts = compared_verdicts(section)
    withheld = withheld_arms(section)
    metrics: dict[str, float] = {}
    series: dict[str, list[tuple[int, float]]] = {}
    for part in SECTIONS:  # each section says which of its numbers a tracker shows
        more, curves = part.tracked(section, set(verdicts))
        metrics.update(more)
        series.update(curves)
    counted_runs = sum(int(r.get("seeds", 0) or 0) for r in section.get("runs", []))
    tags = {"harness.sweep": sweep, "harness.kind": "summary", "harness.baseline": section["baseline"],
            "harness.complete": str(bool(section.get("complete"))).lower(),
            "harness.sign": "diff = arm - baseline test loss; negative = better",
            "harness.paired_interval": "pointwise t interval over seeds at each held-out point"}
    tags.update({f"harness.verdict.{arm}": v for arm, v in verdicts.items()})
    if withheld:
        tags["harness.withheld"] = ", ".join(sorted(withheld))
    return TrackedSweep(sweep=sweep, state=_state([metrics, series, tags]), runs=counted_runs, tags=tags,
                        metrics=metrics, series=series), ""


def _quiet_console():
    from rich.console import Console

    return Console(file=io.StringIO())
