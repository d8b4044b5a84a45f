"""Loading a results folder for a report, and what each (sweep, arm, seed) amounts to.

load_store reads runs.parquet and curves.parquet once (a harness-written store through the
ResultsStore, which verifies them against its manifest; a hand-made table as it is, skipped with a
warning when unreadable, never a traceback) and normalises the columns the run record defines. resolve_outcomes picks the attempt that counts
for every run; harness.report.sameness names what makes arms incomparable.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from harness.planning.adaptive import Adaptive
from harness.core.errors import UserError
from harness.core.files import sha256_file
from harness.store.record import COMPLETED, DIVERGED, FAILED, FINAL, STATUSES, RunRow, column_kinds
from harness.store.planfile import read_plan
from harness.store.outputs import require_folder
from harness.store.results import MANIFEST as STORE_MANIFEST, RUNS as RUNS_FILE, ResultsStore

RUN_KINDS = column_kinds(RunRow)  # every column of the run record: int, float or str
RUN_REQUIRED = ("sweep", "arm", "seed", "status", "test_loss")
CURVE_REQUIRED = ("run_id", "step", "train_loss")
INVALID = "invalid"  # status completed but a NaN/inf test loss
OUTCOMES = (COMPLETED, DIVERGED, FAILED, INVALID)


@dataclass
class FileInfo:
    path: Path
    kind: str
    rows: int
    size: int
    sha256: str
    modified: str


@dataclass
class Store:
    runs: pd.DataFrame
    curves: pd.DataFrame
    files: list[FileInfo]
    warnings: list[str] = field(default_factory=list)
    adaptive: dict[str, Adaptive] = field(default_factory=dict)  # sweep -> settings, for adaptive sweeps
    noise: dict[str, dict] = field(default_factory=dict)  # sweep -> settings, for noise studies
    inert: dict[str, dict[str, str]] = field(default_factory=dict)  # sweep -> A/A arm -> why (harness.planning.plan)
    planned: dict[str, list[dict]] = field(default_factory=dict)  # sweep -> the runs its saved plan names


def _candidates(results_dir: Path, name: str) -> list[Path]:
    """``<name>.parquet`` in the results folder (``runs/`` there holds run working folders)."""
    single = results_dir / f"{name}.parquet"
    return [single] if single.is_file() else []


def _read_parquet(path: Path, kind: str, required: Sequence[str], warn) -> pd.DataFrame | None:
    try:
        df = pd.read_parquet(path, use_threads=False)  # a file, not Python bytes: see harness.store.results._parquet_file
    except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped, never a traceback
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        warn(f"skipping {path}: not a readable Parquet file ({msg[:160]})")
        return None
    missing = [c for c in required if c not in df.columns]
    if missing:
        warn(f"skipping {path}: {kind} file lacks column(s) {', '.join(missing)}")
        return None
    return df


def _file_info(path: Path, kind: str, rows: int, sha256: str) -> FileInfo:
    stat = path.stat()
    return FileInfo(path=path, kind=kind, rows=rows, size=stat.st_size, sha256=sha256,
                    modified=_dt.datetime.fromtimestamp(stat.st_mtime, _dt.timezone.utc).isoformat(timespec="seconds"))


def load_store(results_dir: Path, warn: Callable[[str], None] | None = None) -> Store:
    """Read every readable runs/curves Parquet file; skip the unreadable ones with a warning. One
    function (about 70 lines): each file is read, checked against the manifest and merged in turn,
    and every skip's warning names what the step before found."""
    results_dir = Path(results_dir)
    messages: list[str] = []

    def _warn(msg: str) -> None:
        messages.append(msg)
        if warn is not None:
            warn(msg)

    if not results_dir.exists():
        raise UserError(f"no results: folder {results_dir} does not exist (run `harness sweep` "
                        "first, or point --results at a results folder)")
    require_folder(results_dir)
    infos: list[FileInfo] = []
    frames: dict[str, list[pd.DataFrame]] = {"runs": [], "curves": []}
    if (results_dir / STORE_MANIFEST).exists() or (results_dir / "runs").is_dir():
        # a store written by harness: read once, verified (what fails its checksums is quarantined and rebuilt)
        store = ResultsStore(results_dir, warn=_warn)
        store.check()
        for kind, table in (("runs", store.runs()), ("curves", store.curves())):
            state = store.table_state(f"{kind}.parquet")
            if state is None:
                continue
            frames[kind].append(table.to_pandas(use_threads=False))
            infos.append(_file_info(results_dir / f"{kind}.parquet", kind, state["rows"], state["sha256"]))
    else:  # a hand-made folder of tables: read as it is, nothing moved
        for kind, required in (("runs", RUN_REQUIRED), ("curves", CURVE_REQUIRED)):
            for path in _candidates(results_dir, kind):
                df = _read_parquet(path, kind, required, _warn)
                if df is not None:
                    frames[kind].append(df)
                    infos.append(_file_info(path, kind, len(df), sha256_file(path)))
    if not frames["runs"]:
        raise UserError(f"no results: no readable {RUNS_FILE} in {results_dir} (run `harness "
                        "sweep` first, or point --results at a results folder)")
    runs = pd.concat(frames["runs"], ignore_index=True)
    runs = _normalise_runs(runs, _warn)
    if len(runs) == 0:
        raise UserError(f"no results: {RUNS_FILE} in {results_dir} holds no runs")
    if frames["curves"]:
        curves = pd.concat(frames["curves"], ignore_index=True)
        if "tokens" not in curves.columns:
            curves["tokens"] = curves["step"]
        for missing in ("attempt", "heldout_loss"):  # hand-made or older tables
            if missing not in curves.columns:
                curves[missing] = np.nan
        curves = curves[["run_id", "attempt", "step", "tokens", "train_loss", "heldout_loss"]].copy()
        curves["run_id"] = curves["run_id"].astype(str)
        for c in ("attempt", "step", "tokens", "train_loss", "heldout_loss"):
            curves[c] = pd.to_numeric(curves[c], errors="coerce")
    else:
        curves = pd.DataFrame({"run_id": pd.Series(dtype=str), "attempt": [], "step": [],
                               "tokens": [], "train_loss": [], "heldout_loss": []})
    adaptive, noise, inert, planned = {}, {}, {}, {}
    for sweep in runs["sweep"].unique():
        plan = read_plan(results_dir, sweep)
        settings = Adaptive.from_dict(plan.get("adaptive"))
        if settings is not None:
            adaptive[sweep] = settings
        if isinstance(plan.get("noise"), dict):
            noise[sweep] = plan["noise"]
        if isinstance(plan.get("inert"), dict):
            inert[sweep] = {str(a): str(why) for a, why in plan["inert"].items()}
        if isinstance(plan.get("runs"), list):
            planned[sweep] = [r for r in plan["runs"] if isinstance(r, dict)]
    return Store(runs=runs, curves=curves, files=infos, warnings=messages, adaptive=adaptive, noise=noise,
                 inert=inert, planned=planned)


def _normalise_runs(runs: pd.DataFrame, warn) -> pd.DataFrame:
    """Every column of the run record (a hand-made or older table may lack some): text as str
    ("" for missing), numbers as float (NaN for missing), seeds as int."""
    runs = runs.copy()
    for col, kind in RUN_KINDS.items():
        if col not in runs.columns:
            runs[col] = -1 if col == "seed" else "" if kind is str else np.nan
    for c, kind in RUN_KINDS.items():
        if c == "seed":
            continue
        if kind is str:
            runs[c] = runs[c].astype(object).where(runs[c].notna(), "").astype(str)
        else:
            runs[c] = pd.to_numeric(runs[c], errors="coerce").astype(float)
    seed = pd.to_numeric(runs["seed"], errors="coerce")
    bad = seed.isna() | (seed != seed.round())
    if bad.any():
        warn(f"ignoring {int(bad.sum())} run row(s) without an integer seed")
        runs, seed = runs[~bad], seed[~bad]
    runs["seed"] = seed.astype("int64")
    runs["status"] = runs["status"].str.strip().str.lower()
    return runs.reset_index(drop=True)


def resolve_outcomes(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per run of each sweep: the attempt that counts and its outcome.

    The attempt that counts is harness.store.record.counted's: the first final attempt (completed,
    diverged, unrunnable) by attempt number (rows without one, from hand-made tables, in order of
    finished_at); a run without a final attempt is shown by its latest. Its outcome: ``completed``
    (a finite test loss), ``invalid`` (status completed but a NaN/inf test loss), ``diverged``, or
    ``failed`` (failed, unrunnable, or an unknown status). ``attempts`` counts all attempts. A run
    is its run_id; rows without one (hand-made) are told apart by arm, vary and seed.
    """
    r = runs.copy()
    finite = np.isfinite(r["test_loss"].to_numpy(dtype=float))
    completed = r["status"].eq(COMPLETED).to_numpy()
    outcome = np.where(completed & finite, COMPLETED,
                       np.where(completed, INVALID,
                                np.where(r["status"].eq(DIVERGED), DIVERGED, FAILED)))
    r["outcome"] = outcome
    reason = r["reason"].copy()
    reason[(outcome == INVALID) & reason.eq("")] = "status completed but test_loss is NaN/inf"
    unknown = ~r["status"].isin(list(STATUSES))
    reason[unknown] = ("unknown status " + r.loc[unknown, "status"].map(repr) + ": "
                       + reason[unknown]).str.rstrip(": ")
    r["reason"] = reason
    named = r["run_id"].astype(str).str.len() > 0
    r["_run"] = np.where(named, r["run_id"].astype(str),
                         r["arm"].astype(str) + "/" + r["vary"].astype(str) + "/" + r["seed"].astype(str))
    keys = ["sweep", "_run"]
    r["attempts"] = r.groupby(keys)["status"].transform("size").astype(int)
    r["_order"] = np.arange(len(r))
    r["_attempt"] = r["attempt"].fillna(np.inf)
    r = r.sort_values(keys + ["_attempt", "finished_at", "_order"], kind="mergesort")
    final = r["status"].isin(list(FINAL))
    first_final = r[final].drop_duplicates(keys, keep="first")
    unsettled = r[~r.set_index(keys).index.isin(first_final.set_index(keys).index)].drop_duplicates(keys, keep="last")
    chosen = pd.concat([first_final, unsettled]).sort_values(["sweep", "arm", "vary", "seed", "_order"], kind="mergesort")
    return chosen.drop(columns=["_order", "_attempt", "_run"]).reset_index(drop=True)
