"""The run record: what one run is, from its plan to its row in the results store.

  RunSpec      fixed before launch, written to runs/<id>/spec.json; the worker trains exactly it
  PROGRESS     the line format the worker prints while training and the parent parses
  RANK         the line each worker of a DDP run prints once it has its rank (where each rank ran)
  STOPPED      the line a worker prints when it stops on an error that is not the run's: the
               machine's (disk full, read-only, permissions: not counted, the run resumes), the
               configuration's (the run can never run as planned: recorded unrunnable, not retried)
               or the data's (the corpus is no longer the one planned: not counted, plan again)
  RunResult    what the worker measured, written to runs/<id>/result.json at the end
  RunRow       one attempt's row in runs.parquet: who (the spec), which attempt, and the result
  CurvePoint   one point of a loss curve in curves.parquet
  statuses     completed, diverged, unrunnable, failed; FINAL ones are never retried (training is
               deterministic, and so is a configuration that cannot run)
  identity     what makes two runs one run: the experiment (harness.core.scheme.experiment_hash)
               and the sub-seeds, never the labels or where and how fast it computed
  counted      the one rule for which attempt counts, for every command: the first final one
  RetryPolicy  when a run still has to run, and when it has settled

The Parquet schemas are derived from these dataclasses, so a new per-run metric is one field of
RunResult (and the worker filling it in): result.json, the row, the schema, the journal, the
report's loading and `harness status --json` all follow. Standard library only: the worker uses
this module without importing pyarrow (harness.store.results builds RUN_SCHEMA and CURVE_SCHEMA).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence, get_type_hints

from harness.core.definitions import BASELINE

COMPLETED, DIVERGED, UNRUNNABLE, FAILED = "completed", "diverged", "unrunnable", "failed"
STATUSES = (COMPLETED, DIVERGED, UNRUNNABLE, FAILED)
FINAL = (COMPLETED, DIVERGED, UNRUNNABLE)  # outcomes that are not retried: each would happen again

PROGRESS = "PROGRESS "  # prefix of the worker's progress lines: PROGRESS {"step": .., "steps": .., ...}


def progress_line(step: int, steps: int, tokens: int, loss: float, tokens_per_s: float) -> str:
    return PROGRESS + json.dumps({"step": step, "steps": steps, "tokens": tokens, "loss": loss,
                                  "tokens_per_s": tokens_per_s})


# Where each attempt's part of a run's log begins: "=== attempt N at T: COMMAND", on a multi-node
# run "=== attempt N at T on node K (host): COMMAND"; and, once a node's part ended, "=== ended
# attempt N on node K (host): exit code C"
ATTEMPT_BEGAN = "=== attempt "
NODE_HEADER = re.compile(r"on node (\d+) \(([^)]*)\)")
ATTEMPT_ENDED = "=== ended attempt"


def attempt_header(attempt: int, when: str, where: str, command: str) -> str:
    """The line that begins an attempt's part of a log (where: "" or " on node K (host)")."""
    return f"{ATTEMPT_BEGAN}{attempt} at {when}{where}: {command}\n"


def attempt_part(text: str, attempt: int | None = None) -> str:
    """The last attempt's part of a log's text; with `attempt`, that attempt's part (the last one,
    should a node have started it twice), or nothing."""
    if attempt is None:
        at = text.rfind(ATTEMPT_BEGAN)
        return text[at:] if at >= 0 else ""
    at = text.rfind(f"{ATTEMPT_BEGAN}{attempt} at ")
    if at < 0:
        return ""
    end = text.find(ATTEMPT_BEGAN, at + 1)
    return text[at:] if end < 0 else text[at:end]


RANK = "HARNESS-RANK "  # RANK {"rank": .., "world": .., "host": .., "pid": ..}


def rank_line(rank: int, world: int, host: str, pid: int) -> str:
    return RANK + json.dumps({"rank": rank, "world": world, "host": host, "pid": pid})


def find_ranks(text: str) -> list[int]:
    """The ranks that announced themselves in a node's output (torchrun may prefix the lines)."""
    ranks = []
    for line in text.splitlines():
        at = line.find(RANK)
        if at >= 0:
            try:
                ranks.append(int(json.loads(line[at + len(RANK):])["rank"]))
            except (ValueError, KeyError, TypeError):
                continue
    return sorted(set(ranks))


STOPPED = "HARNESS-STOPPED "  # STOPPED {"kind": "environment" | "config" | "data", "message": ...}
ENVIRONMENT, CONFIG, DATA_CHANGED = "environment", "config", "data"  # DATA_CHANGED: the corpus is not the planned one


def stopped_line(kind: str, message: str) -> str:
    return STOPPED + json.dumps({"kind": kind, "message": message})


def find_stopped(text: str) -> tuple[str, str] | None:
    """(kind, message) of the last STOPPED line in a worker's output (torchrun may prefix it)."""
    for line in reversed(text.splitlines()):
        at = line.find(STOPPED)
        if at < 0:
            continue
        try:
            value = json.loads(line[at + len(STOPPED):])
            return str(value["kind"]), str(value["message"])
        except (ValueError, KeyError, TypeError):
            continue
    return None


def parse_progress(line: str) -> dict[str, Any] | None:
    """The dict of a PROGRESS line; None for any other line (or a garbled one)."""
    if not line.startswith(PROGRESS):
        return None
    try:
        value = json.loads(line[len(PROGRESS):])
    except ValueError:
        return None
    return value if isinstance(value, dict) and {"step", "steps", "loss"} <= value.keys() else None


# ----------------------------------------------------------------------------- the spec


@dataclass(frozen=True)
class RunSpec:
    """Everything one run needs, fixed before launch and shared by the parent and the worker."""

    run_id: str
    sweep: str
    arm: str
    seed: int
    init_seed: int
    data_seed: int
    dropout_seed: int
    preset: str
    config: dict[str, Any]  # ArmConfig.as_dict()
    overrides: dict[str, Any]
    config_hash: str  # the arm's experiment: config without placement knobs, budget, data (experiment_hash)
    params: int
    tokens: int
    steps: int
    tokens_per_step: int
    world_size: int
    vary: str = ""  # "": the ordinary seeds; a noise study's "init", "data", "dropout" or "replicate"
    identity: str = ""  # run_identity(config_hash, sub-seeds, replica): what the run computes
    data_id: str = ""  # the corpus's content (harness.data.corpus.Corpus.data_id) when planned
    replica: int = 0  # > 0: a deliberate repeat of identical seeds (a noise study's replicates)
    intervention_sets: dict[str, Any] = field(default_factory=dict)  # the keys the arm's interventions set, and to what
    budget_factor: float = 1.0  # a baseline run at another budget than the sweep's (the compute multiplier's)
    start_from: str = ""  # run id whose final checkpoint this (longer, constant-schedule) run continues
    anchor_steps: list[int] = field(default_factory=list)  # extra held-out points (an extended run's 1x step)
    identity_scheme: int = 1  # the identity scheme it was planned under (harness.core.scheme; older specs: 1)
    workdir: str = ""  # an external trainer's folder, where its command runs (harness.planning.trainer)

    @property
    def interventions(self) -> str:
        return "+".join(p for p in self.arm.split("+") if p != BASELINE)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: Path) -> "RunSpec":
        """A spec.json (keys a newer harness wrote that this one lacks are ignored)."""
        data = json.loads(Path(path).read_text())
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def run_identity(config_hash: str, init_seed: int, data_seed: int, dropout_seed: int, replica: int = 0) -> str:
    """16 hex digits that are equal for two runs exactly when they compute the same thing: the same
    experiment (config_hash) from the same sub-seeds, unless one is a deliberate replica."""
    payload = {"experiment": config_hash, "init": int(init_seed), "data": int(data_seed),
               "dropout": int(dropout_seed)} | ({"replica": int(replica)} if replica else {})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------- the result


def _not_a_column() -> Any:
    return field(default_factory=list, metadata={"column": False})


@dataclass(kw_only=True)
class RunResult:
    """What the worker measured (result.json). Every field but `curve` is a column of runs.parquet."""

    status: str  # one of STATUSES
    reason: str = ""  # why a run failed or diverged
    diverged_step: int | None = None  # the step whose training loss was not finite
    test_loss: float | None = None  # summed token NLL over every held-out token / token count (float64)
    test_tokens: int = 0
    test_set_id: str = ""  # 16 hex digits of the test shard's sha256
    train_loss: float | None = None  # the last loss-curve point
    tokens_seen: int = 0  # tokens trained, exactly (steps x tokens per step)
    steps: int = 0  # optimiser steps trained
    wall_time_s: float | None = None  # train_time_s + heldout_time_s + eval_time_s + checkpoint writes
    train_time_s: float | None = None  # the training loop, summed over resumed attempts (held-out points and checkpoint writes apart)
    eval_time_s: float | None = None  # the test-set evaluation
    heldout_time_s: float | None = None  # the held-out points along training, summed over resumed attempts
    heldout_tokens: int = 0  # test tokens each held-out point evaluated
    test_units: str = ""  # what the final evaluation's units are (harness.data.batches.evaluation_units)
    unit_loss_sums: str = ""  # per unit: summed token NLL, float64 (pack_units)
    unit_tokens: str = ""  # per unit: target tokens, int64 (pack_units)
    tokens_per_s: float | None = None  # training throughput
    peak_memory_bytes: int | None = None  # rank 0's peak: CUDA memory allocated, else the process's max RSS
    dtype: str = ""  # autocast dtype of the training step
    device: str = ""  # "cpu" or the CUDA device name
    versions: dict[str, Any] = field(default_factory=dict)  # python, torch, harness ...
    finished_at: str = ""
    curve: list[dict[str, Any]] = _not_a_column()  # CurvePoint dicts, kept in curves.parquet

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunResult":
        """From result.json; keys an older or newer harness wrote that this one lacks are ignored."""
        if not isinstance(data, dict) or data.get("status") not in STATUSES:
            raise ValueError("not a run result")
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @classmethod
    def load(cls, path: Path) -> "RunResult":
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(kw_only=True)
class RunRow(RunResult):
    """One attempt of one run: a row of runs.parquet (the spec's identity, the attempt, the result)."""

    run_id: str
    attempt: int  # 1, 2, ...: (run_id, attempt) is the row key
    sweep: str
    arm: str
    interventions: str  # the arm without 'baseline'
    seed: int
    init_seed: int
    data_seed: int
    dropout_seed: int
    preset: str
    config: dict[str, Any]  # the resolved config (JSON in the table)
    config_hash: str
    overrides: dict[str, Any]  # what the arm and --set changed (JSON in the table)
    params: int
    planned_tokens: int  # the budget; tokens_seen equals it for a completed run
    tokens_per_step: int
    world_size: int  # processes per run
    vary: str = ""  # which random streams the seed varied: "" all three; init, data, dropout; replicate none
    identity: str = ""  # what the run computes (run_identity); "" in rows older than identities
    data_id: str = ""  # the corpus trained on (train and test shards' sha256)
    replica: int = 0
    intervention_sets: dict[str, Any] = field(default_factory=dict)  # what the arm itself changes (JSON in the table)
    budget_factor: float = 1.0  # the run's budget over the sweep's (baseline runs for the compute multiplier)
    identity_scheme: int = 1  # the identity scheme it was planned under (null in older rows: 1)
    git_commit: str = ""
    started_at: str = ""
    run_dir: str = ""

    @classmethod
    def of(cls, spec: RunSpec, attempt: int, result: RunResult, **attempt_facts: Any) -> "RunRow":
        """The row of `spec`'s attempt number `attempt` that ended with `result`."""
        measured = {f.name: getattr(result, f.name) for f in dataclasses.fields(RunResult)}
        return cls(**measured, run_id=spec.run_id, attempt=attempt, sweep=spec.sweep, arm=spec.arm,
                   interventions=spec.interventions, seed=spec.seed, init_seed=spec.init_seed,
                   data_seed=spec.data_seed, dropout_seed=spec.dropout_seed, preset=spec.preset,
                   config=spec.config, config_hash=spec.config_hash, overrides=spec.overrides,
                   params=spec.params, planned_tokens=spec.tokens, tokens_per_step=spec.tokens_per_step,
                   world_size=spec.world_size, vary=spec.vary, identity=spec.identity, data_id=spec.data_id,
                   replica=spec.replica, intervention_sets=spec.intervention_sets,
                   budget_factor=spec.budget_factor, identity_scheme=spec.identity_scheme, **attempt_facts)

    def columns(self) -> dict[str, Any]:
        """The row as the table stores it: JSON text for dicts, no curve."""
        return {name: _cell(getattr(self, name)) for name in column_names(RunRow)}


@dataclass(kw_only=True)
class CurvePoint:
    """One point of a run's loss curve (curves.parquet also keys it by run_id, attempt): the training
    loss since the point before, and at the held-out points (TrainConfig.heldout_points) the
    held-out subset's loss."""

    run_id: str
    attempt: int
    step: int
    tokens: int
    train_loss: float  # mean training loss over the steps since the previous point
    lr: float
    heldout_loss: float | None = None  # at a held-out point: the held-out subset's loss in eval mode
    tokens_per_s: float | None = None  # training throughput since the point before (held-out evaluation apart)


def pack_units(sums: Sequence[float], tokens: Sequence[int]) -> tuple[str, str]:
    """The compact table of a final evaluation's per-unit sums, as two text cells: base64 of
    little-endian float64 loss sums and of int64 token counts (12 KiB for 1,024 units)."""
    return (base64.b64encode(struct.pack(f"<{len(sums)}d", *sums)).decode(),
            base64.b64encode(struct.pack(f"<{len(tokens)}q", *tokens)).decode())


def unpack_units(sums: str, tokens: str) -> tuple[list[float], list[int]] | None:
    """pack_units' inverse; None where a run has no per-unit sums (recorded before them) or they
    are damaged."""
    if not isinstance(sums, str) or not isinstance(tokens, str) or not sums or not tokens:
        return None
    try:
        s, t = base64.b64decode(sums, validate=True), base64.b64decode(tokens, validate=True)
    except ValueError:
        return None
    if len(s) % 8 or len(s) != len(t):
        return None
    return list(struct.unpack(f"<{len(s) // 8}d", s)), list(struct.unpack(f"<{len(t) // 8}q", t))


def _cell(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value


# ----------------------------------------------------------------------------- schemas


def column_names(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("column", True)]


def column_kinds(cls: type) -> dict[str, type]:
    """Column name -> int, float or str (dicts are stored as JSON text)."""
    hints = get_type_hints(cls)
    kinds = {}
    for name in column_names(cls):
        hint = hints[name]
        args = [a for a in getattr(hint, "__args__", ()) if a is not type(None)]
        base = args[0] if args and getattr(hint, "__origin__", None) is not dict else hint
        kinds[name] = base if base in (int, float, str) else str
    return kinds


def arrow_schema(cls: type):
    import pyarrow as pa

    types = {int: pa.int64(), float: pa.float64(), str: pa.string()}
    return pa.schema([(name, types[kind]) for name, kind in column_kinds(cls).items()])


# ----------------------------------------------------------------------------- which attempt counts


def counted(attempts: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The attempt that speaks for a run: its first final one (completed, diverged or unrunnable)
    by attempt number. Training is deterministic, so a later final attempt (a re-recording) can
    only repeat it; a run without one has not settled (see RetryPolicy). status, sweep, export,
    report, the trackers and Slurm all use this rule."""
    ordered = sorted(attempts, key=lambda r: (r.get("attempt") is None, r.get("attempt") or 0))
    return next((r for r in ordered if r.get("status") in FINAL), None)


def ordinary_budget(rows):
    """The rows (a DataFrame) at the sweep's own budget: not the baseline's runs at other budgets
    (--extend-baseline), which only the compute multiplier reads (older tables have no
    budget_factor: all ordinary)."""
    if "budget_factor" not in rows or rows.empty:
        return rows
    return rows[rows["budget_factor"].astype(float).fillna(1.0).eq(1.0)]


@dataclass(frozen=True)
class RetryPolicy:
    """One rule for every launcher: a run is settled by its counted attempt (the first final one),
    or as failed once it has failed more than `retries` times; otherwise it (still) has to run."""

    retries: int = 1

    def settled(self, statuses: Sequence[str]) -> str | None:
        """The run's settled status given its attempts' statuses (oldest first), or None when it has to run."""
        row = counted([{"attempt": i, "status": s} for i, s in enumerate(statuses)])
        if row is not None:
            return str(row["status"])
        return FAILED if sum(s == FAILED for s in statuses) > self.retries else None
