"""``harness report``: turn a results store into a statistical report per sweep.

Reads ``runs.parquet`` and ``curves.parquet`` from a results folder, resolves retries (a
(sweep, arm, seed) counts as completed if any attempt completed), checks that the compared
arms are comparable (token budget, preset, test set, one config per arm), compares every arm
with the baseline using :mod:`harness.stats`, and writes

* markdown (default ``reports/<sweep>.md``) with PNG plots next to it, plus a table on the
  terminal, or
* JSON on stdout (``fmt="json"``) with the same numbers.

The entry point for the CLI is :func:`run_report`. No statistics formulas live here: every
number comes from :mod:`harness.stats`. ``python -m harness.report --bench`` times a
10,000-run report on synthetic data.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import io
import json
import math
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TextIO
from urllib.parse import quote

import numpy as np
import pandas as pd
from rich.console import Console
from rich.markup import escape as rich_escape
from rich.table import Table

from harness import stats
from harness.errors import UserError
from harness.results import MANIFEST as STORE_MANIFEST, ResultsStore, sha256_file

RUNS_FILE = "runs.parquet"
CURVES_FILE = "curves.parquet"
RUN_REQUIRED = ("sweep", "arm", "seed", "status", "test_loss")
RUN_COLUMNS: dict[str, object] = {
    "run_id": "", "attempt": np.nan, "sweep": "", "arm": "", "interventions": "", "seed": -1,
    "preset": "",
    "config": "", "config_hash": "", "params": np.nan, "planned_tokens": np.nan,
    "tokens_seen": np.nan, "steps": np.nan, "world_size": np.nan, "device": "", "dtype": "",
    "versions": "", "git_commit": "", "status": "", "reason": "", "test_loss": np.nan,
    "test_tokens": np.nan, "test_set_id": "", "train_loss": np.nan, "wall_time_s": np.nan,
    "tokens_per_s": np.nan, "finished_at": "",
}
CURVE_REQUIRED = ("run_id", "step", "train_loss")
INTEGRITY_FIELDS = (("planned_tokens", "token budget (planned_tokens)"),
                    ("preset", "preset"), ("test_set_id", "test set (test_set_id)"))
OUTCOMES = ("completed", "diverged", "failed", "invalid")
SIGN_CONVENTION = ("diff = mean(arm) - mean(baseline) of test loss: negative = lower loss = "
                   "better.")
MAX_PLOT_ARMS = 12  # arms besides the baseline in the curve and paired plots

Fmt = Literal["markdown", "json"]


# =========================================================================== loading


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


def _candidates(results_dir: Path, name: str) -> list[Path]:
    """``<name>.parquet`` in the results folder (``runs/`` there holds run working folders)."""
    single = results_dir / f"{name}.parquet"
    return [single] if single.is_file() else []


def _read_parquet(path: Path, kind: str, required: Sequence[str], warn) -> pd.DataFrame | None:
    try:
        df = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is skipped, never a traceback
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        warn(f"skipping {path}: not a readable Parquet file ({msg[:160]})")
        return None
    missing = [c for c in required if c not in df.columns]
    if missing:
        warn(f"skipping {path}: {kind} file lacks column(s) {', '.join(missing)}")
        return None
    return df


def load_store(results_dir: Path, warn: Callable[[str], None] | None = None) -> Store:
    """Read every readable runs/curves Parquet file; skip the unreadable ones with a warning."""
    results_dir = Path(results_dir)
    messages: list[str] = []

    def _warn(msg: str) -> None:
        messages.append(msg)
        if warn is not None:
            warn(msg)

    if not results_dir.exists():
        raise UserError(f"no results: folder {results_dir} does not exist (run `harness sweep` "
                        "first, or point --results at a results folder)")
    if not results_dir.is_dir():
        raise UserError(f"no results: {results_dir} is not a folder (expected a results folder "
                        f"holding {RUNS_FILE})")
    if (results_dir / STORE_MANIFEST).exists():
        # a store written by harness: tables failing their checksums are quarantined and rebuilt first
        ResultsStore(results_dir, warn=_warn).check()
    infos: list[FileInfo] = []
    frames: dict[str, list[pd.DataFrame]] = {"runs": [], "curves": []}
    for kind, required in (("runs", RUN_REQUIRED), ("curves", CURVE_REQUIRED)):
        for path in _candidates(results_dir, kind):
            df = _read_parquet(path, kind, required, _warn)
            if df is None:
                continue
            frames[kind].append(df)
            stat = path.stat()
            infos.append(FileInfo(
                path=path, kind=kind, rows=len(df), size=stat.st_size, sha256=sha256_file(path),
                modified=_dt.datetime.fromtimestamp(stat.st_mtime, _dt.timezone.utc)
                .isoformat(timespec="seconds")))
    if not frames["runs"]:
        raise UserError(f"no results: no readable {RUNS_FILE} in {results_dir} (run `harness "
                        "sweep` first, or point --results at a results folder)")
    runs = pd.concat(frames["runs"], ignore_index=True)
    for col, default in RUN_COLUMNS.items():
        if col not in runs.columns:
            runs[col] = default
    runs = _normalise_runs(runs, _warn)
    if len(runs) == 0:
        raise UserError(f"no results: {RUNS_FILE} in {results_dir} holds no runs")
    if frames["curves"]:
        curves = pd.concat(frames["curves"], ignore_index=True)
        if "tokens" not in curves.columns:
            curves["tokens"] = curves["step"]
        if "attempt" not in curves.columns:
            curves["attempt"] = np.nan
        curves = curves[["run_id", "attempt", "step", "tokens", "train_loss"]].copy()
        curves["run_id"] = curves["run_id"].astype(str)
        for c in ("attempt", "step", "tokens", "train_loss"):
            curves[c] = pd.to_numeric(curves[c], errors="coerce")
    else:
        curves = pd.DataFrame({"run_id": pd.Series(dtype=str), "attempt": [], "step": [],
                               "tokens": [], "train_loss": []})
    return Store(runs=runs, curves=curves, files=infos, warnings=messages)


def _normalise_runs(runs: pd.DataFrame, warn) -> pd.DataFrame:
    runs = runs.copy()
    for c in ("run_id", "sweep", "arm", "interventions", "preset", "config_hash", "device",
              "dtype", "versions", "git_commit", "status", "reason", "test_set_id",
              "finished_at"):
        runs[c] = runs[c].astype(object).where(runs[c].notna(), "").astype(str)
    for c in ("attempt", "test_loss", "train_loss", "planned_tokens", "tokens_seen", "world_size",
              "wall_time_s", "tokens_per_s", "params", "steps", "test_tokens"):
        runs[c] = pd.to_numeric(runs[c], errors="coerce").astype(float)
    seed = pd.to_numeric(runs["seed"], errors="coerce")
    bad = seed.isna() | (seed != seed.round())
    if bad.any():
        warn(f"ignoring {int(bad.sum())} run row(s) without an integer seed")
        runs, seed = runs[~bad], seed[~bad]
    runs["seed"] = seed.astype("int64")
    runs["status"] = runs["status"].str.strip().str.lower()
    return runs.reset_index(drop=True)


# =========================================================================== outcomes


def resolve_outcomes(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (sweep, arm, seed): the attempt that counts and its outcome.

    A completed attempt with a finite test loss wins (the latest if several: highest
    ``attempt``, then latest ``finished_at``); otherwise the latest attempt decides:
    ``diverged``, ``failed`` (also for unknown statuses) or ``invalid`` (status completed but
    the test loss is NaN/inf). ``attempts`` counts all attempts.
    """
    r = runs.copy()
    finite = np.isfinite(r["test_loss"].to_numpy(dtype=float))
    completed = r["status"].eq("completed").to_numpy()
    outcome = np.where(completed & finite, "completed",
                       np.where(completed, "invalid",
                                np.where(r["status"].eq("diverged"), "diverged", "failed")))
    r["outcome"] = outcome
    reason = r["reason"].copy()
    reason[(outcome == "invalid") & reason.eq("")] = "status completed but test_loss is NaN/inf"
    unknown = ~r["status"].isin(["completed", "diverged", "failed"])
    reason[unknown] = ("unknown status " + r.loc[unknown, "status"].map(repr) + ": "
                       + reason[unknown]).str.rstrip(": ")
    r["reason"] = reason
    r["_priority"] = (r["outcome"] != "completed").astype(int)
    keys = ["sweep", "arm", "seed"]
    r["attempts"] = r.groupby(keys)["status"].transform("size").astype(int)
    r["_order"] = np.arange(len(r))
    r["_attempt"] = r["attempt"].fillna(-1.0)
    r = r.sort_values(keys + ["_priority", "_attempt", "finished_at", "_order"],
                      ascending=[True, True, True, True, False, False, False], kind="mergesort")
    chosen = r.drop_duplicates(keys, keep="first")
    return chosen.drop(columns=["_priority", "_order", "_attempt"]).reset_index(drop=True)


# =========================================================================== integrity


def check_integrity(outcomes: pd.DataFrame, arms: Sequence[str]) -> list[str]:
    """Mismatches between the compared arms that make a comparison invalid (human-readable)."""
    done = outcomes[outcomes["outcome"].eq("completed") & outcomes["arm"].isin(list(arms))]
    problems = []
    for col, label in INTEGRITY_FIELDS:
        vals = done[col]
        if col == "planned_tokens":
            vals = vals.map(lambda v: "unknown" if not np.isfinite(v) else str(int(v)))
        per_arm = vals.groupby(done["arm"]).unique()
        distinct = set().union(*[set(v) for v in per_arm]) if len(per_arm) else set()
        if len(distinct) > 1:
            detail = ", ".join(f"{a}: {'/'.join(sorted(map(str, v)))}"
                               for a, v in per_arm.items())
            problems.append(f"{label} differs ({detail})")
    hashes = done.groupby("arm")["config_hash"].unique()
    for arm, vals in hashes.items():
        vals = [v for v in vals if v]
        if len(vals) > 1:
            problems.append(f"arm {arm} has runs with different configs (config_hash "
                            f"{', '.join(sorted(vals))})")
    return problems


# =========================================================================== building


@dataclass
class SweepReport:
    sweep: str
    baseline: str
    has_baseline: bool
    table: pd.DataFrame
    accounting: pd.DataFrame
    problems: pd.DataFrame
    mismatches: list[str]
    allow_mismatch: bool
    noise: dict
    provenance: dict
    notes: list[str]
    plots: dict[str, Path] = field(default_factory=dict)


def _arm_order(arms: Sequence[str], baseline: str) -> list[str]:
    rest = sorted(a for a in set(arms) if a != baseline)
    return ([baseline] if baseline in set(arms) else []) + rest


def _unique_join(values) -> str:
    vals = sorted({str(v) for v in values} - {"", "nan", "<NA>"})
    return ", ".join(vals) if vals else "-"


def _provenance(rows: pd.DataFrame, arms: Sequence[str]) -> dict:
    text = rows[["arm", "interventions", "config_hash", "preset", "test_set_id", "dtype",
                 "device"]].copy()
    for col in ("planned_tokens", "world_size"):
        v = rows[col]
        text[col] = v.map(lambda x: str(int(x)) if np.isfinite(x) else "")
    fields = ["interventions", "config_hash", "preset", "planned_tokens", "test_set_id",
              "dtype", "device", "world_size"]
    uniq = {arm: g for arm, g in text.groupby("arm", sort=False)}
    per_arm = []
    for arm in arms:
        g = uniq.get(arm)
        per_arm.append({"arm": arm, **{f: _unique_join(g[f].unique()) if g is not None else "-"
                                       for f in fields}})
    versions = rows["versions"].value_counts()
    commits = rows["git_commit"].value_counts()
    return {
        "arms": per_arm,
        "versions": [{"versions": _parse_json(v), "runs": int(c)} for v, c in versions.items()],
        "git_commits": [{"commit": k or "unknown", "runs": int(c)} for k, c in commits.items()],
    }


def _parse_json(text: str):
    try:
        return json.loads(text) if text else {}
    except (TypeError, ValueError):
        return text


def build_sweep_report(
    outcomes: pd.DataFrame, sweep: str, baseline: str, *, alpha: float, margin: float | None,
    power: float, n_resamples: int, boot_seed: int, allow_mismatch: bool,
    mismatches: list[str] | None = None,
) -> SweepReport:
    """Statistics and accounting for one sweep (no rendering, no files)."""
    rows = outcomes[outcomes["sweep"].eq(sweep)]
    arms = _arm_order(rows["arm"].unique(), baseline)
    has_baseline = baseline in set(arms)
    notes: list[str] = []
    if not has_baseline:
        notes.append(f"no arm named {baseline!r} in this sweep (arms: {', '.join(arms)}); "
                     "only descriptive statistics are shown (choose one with --baseline)")
    if mismatches is None:
        mismatches = check_integrity(rows, arms)
    done = rows[rows["outcome"].eq("completed")]
    table = stats.compare_arms(
        done[["arm", "seed", "test_loss"]], baseline, alpha=alpha, margin=margin, power=power,
        n_resamples=n_resamples, seed=boot_seed, arms=arms,
    )
    if not has_baseline:
        table = table[table["arm"] != baseline].reset_index(drop=True)
    counts = (rows.pivot_table(index="arm", columns="outcome", values="seed", aggfunc="count")
              .reindex(index=arms, columns=list(OUTCOMES)).fillna(0).astype(int))
    counts.insert(0, "seeds", counts.sum(axis=1))
    counts["attempts"] = rows.groupby("arm")["attempts"].sum().reindex(arms).fillna(0).astype(int)
    accounting = counts.reset_index().rename(columns={"index": "arm"})
    problems = rows[~rows["outcome"].eq("completed")][
        ["arm", "seed", "outcome", "status", "reason", "attempts", "run_id"]
    ].sort_values(["arm", "seed"]).reset_index(drop=True)
    short = rows[rows["outcome"].eq("completed")
                 & (rows["tokens_seen"] < rows["planned_tokens"])]
    if len(short):
        notes.append(f"{len(short)} completed run(s) saw fewer tokens than planned "
                     f"(e.g. {short.iloc[0]['arm']} seed {int(short.iloc[0]['seed'])}: "
                     f"{int(short.iloc[0]['tokens_seen'])} of "
                     f"{int(short.iloc[0]['planned_tokens'])})")
    base_losses = done.loc[done["arm"].eq(baseline), "test_loss"].to_numpy()
    noise = stats.noise_floor(base_losses, alpha, power)
    return SweepReport(
        sweep=sweep, baseline=baseline, has_baseline=has_baseline, table=table,
        accounting=accounting, problems=problems, mismatches=mismatches,
        allow_mismatch=allow_mismatch, noise=noise, provenance=_provenance(rows, arms),
        notes=notes,
    )


# =========================================================================== formatting


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
    x = stats._f(x)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _p(x) -> str:
    x = stats._f(x)
    if not math.isfinite(x):
        return "n/a"
    return f"{x:.1e}" if x < 1e-4 else f"{x:.4f}"


def _ci(lo, hi) -> str:
    if not (math.isfinite(stats._f(lo)) and math.isfinite(stats._f(hi))):
        return "n/a"
    return f"[{_num(lo, sign=True)}, {_num(hi, sign=True)}]"


def _seeds(x) -> str:
    x = stats._f(x)
    if math.isnan(x):
        return "n/a"
    if math.isinf(x):
        return "never (diff is 0)" if x > 0 else "n/a"
    return f"{int(x):,}"


def _slug(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    return s or "sweep"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    align = align or "l" * len(header)
    sep = ["---:" if a == "r" else ":---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# =========================================================================== plots


VERDICT_COLOURS = {
    stats.BETTER: "#1a9850", stats.WORSE: "#d73027", stats.EQUIVALENT: "#4575b4",
    stats.NO_DIFFERENCE: "#636363", stats.INSUFFICIENT: "#bdbdbd",
}


def _figure(w: float, h: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(w, h), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _short(name: str, n: int = 40) -> str:
    return name if len(name) <= n else name[: n - 1] + "…"


def plot_arms(rep: SweepReport) -> tuple[list[str], int]:
    """Arms (besides the baseline) shown in the curve and paired plots: all of them, or the
    MAX_PLOT_ARMS with the smallest Holm p-values (then by name) when there are more.
    Returns (arms, number of arms left out)."""
    t = rep.table[rep.table["arm"] != rep.baseline]
    if len(t) <= MAX_PLOT_ARMS:
        return list(t["arm"]), 0
    key = t.assign(_p=t["p_holm"].astype(float).fillna(np.inf)).sort_values(["_p", "arm"])
    keep = set(key["arm"].iloc[:MAX_PLOT_ARMS])
    return [a for a in t["arm"] if a in keep], len(t) - MAX_PLOT_ARMS


def plot_forest(rep: SweepReport, path: Path, margin: float | None, alpha: float) -> bool:
    t = rep.table[rep.table["arm"] != rep.baseline]
    t = t[np.isfinite(t["diff"].astype(float))]
    if t.empty:
        return False
    fig = _figure(7.5, 1.2 + 0.35 * len(t))
    ax = fig.add_subplot()
    y = np.arange(len(t))[::-1]
    for yi, r in zip(y, t.itertuples()):
        col = VERDICT_COLOURS.get(r.verdict, "#636363")
        if np.isfinite(r.ci_low) and np.isfinite(r.ci_high):
            ax.plot([r.ci_low, r.ci_high], [yi, yi], color=col, lw=2)
        ax.plot([r.diff], [yi], "o", color=col)
    ax.axvline(0.0, color="black", lw=0.8)
    if margin:
        ax.axvspan(-margin, margin, color="#4575b4", alpha=0.1, lw=0)
    ax.set_yticks(y, [_short(a) for a in t["arm"]])
    ax.set_xlabel(f"test loss difference vs {_short(rep.baseline, 20)} with "
                  f"{100 * (1 - alpha):g}% t interval (negative = better)")
    ax.set_title(f"{_short(rep.sweep)}: differences from the baseline")
    width_in, height_in = fig.get_size_inches()
    label_in = 0.25 + 0.075 * max(len(_short(a)) for a in t["arm"])
    fig.subplots_adjust(left=min(0.6, label_in / width_in), right=0.97,
                        bottom=min(0.45, 0.55 / height_in), top=1 - min(0.3, 0.35 / height_in))
    fig.savefig(path, pil_kwargs={"compress_level": 1})
    return True


def aggregate_curves(outcomes: pd.DataFrame, curves: pd.DataFrame) -> pd.DataFrame:
    """Mean and sd of the training loss across seeds per (sweep, arm, tokens), completed runs."""
    cols = ["sweep", "arm", "tokens", "mean", "std"]
    done = outcomes[outcomes["outcome"].eq("completed")]
    if curves.empty or done.empty:
        return pd.DataFrame(columns=cols)
    # Attempts of one run share its run_id: match the curve of the attempt that counts.
    keys = ["run_id"]
    if curves["attempt"].notna().any() and done["attempt"].notna().any():
        keys.append("attempt")
    c = curves.merge(done[keys + ["sweep", "arm"]], on=keys, how="inner")
    c = c[np.isfinite(c["train_loss"]) & np.isfinite(c["tokens"])]
    if c.empty:
        return pd.DataFrame(columns=cols)
    return (c.groupby(["sweep", "arm", "tokens"], sort=True)["train_loss"]
            .agg(["mean", "std"]).reset_index())


def plot_curves(rep: SweepReport, curve_agg: pd.DataFrame, path: Path) -> bool:
    agg = curve_agg[curve_agg["sweep"].eq(rep.sweep)]
    agg = agg[agg["arm"].isin([rep.baseline, *plot_arms(rep)[0]])]
    if agg.empty:
        return False
    import matplotlib

    fig = _figure(11, 4.5)
    ax_full, ax_tail = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    n_arms = agg["arm"].nunique()
    cmap = matplotlib.colormaps["tab10" if n_arms <= 10 else "tab20"]
    x_max = float(agg["tokens"].max())
    x_min = float(agg["tokens"].min())
    tail_from = x_min + 0.5 * (x_max - x_min)
    tail_lo, tail_hi = np.inf, -np.inf
    groups = dict(tuple(agg.groupby("arm", sort=False)))
    shown, _ = plot_arms(rep)
    order = [a for a in [rep.baseline, *shown] if a in groups]
    if not order:
        return False
    for i, arm in enumerate(order):
        g = groups[arm]
        col = cmap(i % cmap.N)
        x = g["tokens"].to_numpy()
        m, s = g["mean"].to_numpy(), g["std"].fillna(0).to_numpy()
        for ax in (ax_full, ax_tail):
            ax.plot(x, m, color=col, lw=1.2, label=_short(arm, 30))
            ax.fill_between(x, m - s, m + s, color=col, alpha=0.2, lw=0)
        tail = x >= tail_from
        if tail.any():
            tail_lo = min(tail_lo, float(np.min(m[tail] - s[tail])))
            tail_hi = max(tail_hi, float(np.max(m[tail] + s[tail])))
    pos = agg["mean"][agg["mean"] > 0]
    if len(pos) and pos.max() / max(pos.min(), 1e-12) > 1.5:
        from matplotlib.ticker import LogLocator, NullFormatter, StrMethodFormatter

        ax_full.set_yscale("log")
        # Plain tick labels: the default log labels go through mathtext, which is slow.
        ax_full.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 3.0, 5.0)))
        ax_full.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax_full.yaxis.set_minor_formatter(NullFormatter())
    if x_max > tail_from and np.isfinite(tail_lo) and tail_hi > tail_lo:
        pad = 0.05 * (tail_hi - tail_lo)
        ax_tail.set_xlim(tail_from, x_max)
        ax_tail.set_ylim(tail_lo - pad, tail_hi + pad)
    for ax in (ax_full, ax_tail):
        ax.set_xlabel("tokens")
    ax_full.set_ylabel("train loss (mean ± 1 sd across seeds)")
    ax_full.set_title("whole run", fontsize=9)
    ax_tail.set_title("second half (zoom)", fontsize=9)
    ax_tail.legend(fontsize=7, ncol=2 if n_arms > 8 else 1)
    fig.suptitle(f"{_short(rep.sweep)}: loss curves of completed runs", fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.12, top=0.88, wspace=0.18)
    fig.savefig(path, pil_kwargs={"compress_level": 1})
    return True


def plot_paired(rep: SweepReport, outcomes: pd.DataFrame, path: Path) -> bool:
    from matplotlib.collections import LineCollection

    done = outcomes[outcomes["sweep"].eq(rep.sweep) & outcomes["outcome"].eq("completed")]
    base = done[done["arm"].eq(rep.baseline)].set_index("seed")["test_loss"]
    arms, _ = plot_arms(rep)
    if base.empty or not arms:
        return False
    ncol = min(4, len(arms))
    nrow = math.ceil(len(arms) / ncol)
    fig = _figure(2.6 * ncol + 0.5, 2.6 * nrow + 0.6)
    for i, arm in enumerate(arms):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        a = done[done["arm"].eq(arm)].set_index("seed")["test_loss"]
        common = base.index.intersection(a.index)
        if len(common):
            b_, a_ = base.loc[common].to_numpy(), a.loc[common].to_numpy()
            segs = np.stack([np.column_stack([np.zeros_like(b_), b_]),
                             np.column_stack([np.ones_like(a_), a_])], axis=1)
            cols = np.where(a_ < b_, "#1a9850", "#d73027")
            ax.add_collection(LineCollection(segs, colors=cols, alpha=0.5, lw=0.8))
            ax.plot([0, 1], [b_.mean(), a_.mean()], color="black", lw=2)
        lone_b = base.drop(common)
        lone_a = a.drop(common)
        if len(lone_b) or len(lone_a):
            ax.plot(np.zeros(len(lone_b)), lone_b, ".", color="grey", ms=3)
            ax.plot(np.ones(len(lone_a)), lone_a, ".", color="grey", ms=3)
        ax.set_xlim(-0.2, 1.2)
        ax.autoscale(axis="y")
        ax.set_xticks([0, 1], [_short(rep.baseline, 12), _short(arm, 12)], fontsize=7)
        ax.tick_params(axis="y", labelsize=7)
        ax.set_title(_short(arm, 28), fontsize=8)
    fig.suptitle(f"{_short(rep.sweep)}: test loss per seed, baseline -> arm "
                 "(green = arm lower)", fontsize=9)
    w_in, h_in = fig.get_size_inches()
    fig.subplots_adjust(left=0.5 / w_in, right=1 - 0.1 / w_in, bottom=0.35 / h_in,
                        top=1 - 0.55 / h_in, wspace=0.45, hspace=0.45)
    fig.savefig(path, pil_kwargs={"compress_level": 1})
    return True


# =========================================================================== markdown


def _verdict_line(r, baseline: str, alpha: float) -> str:
    name = md_escape(r.arm)
    if r.verdict == stats.INSUFFICIENT:
        why = "; ".join(r.notes) or "not computable"
        return f"- **{name}**: {r.verdict} (mean {_num(r.mean)}, n = {r.n}): {md_escape(why)}"
    return (f"- **{name}**: {r.verdict}: diff {_num(r.diff, sign=True)} "
            f"({100 * (1 - alpha):g}% CI {_ci(r.ci_low, r.ci_high)}), {r.test} p = {_p(r.p)}, "
            f"Holm p = {_p(r.p_holm)}, n = {r.n}; smallest difference detectable at this n: "
            f"{_num(r.mdd)}")


def render_markdown_section(rep: SweepReport, *, level: int, alpha: float,
                            margin: float | None, power: float, n_resamples: int,
                            boot_seed: int, md_dir: Path) -> str:
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
        out.append("> **WARNING: --allow-mismatch was given; these arms are NOT comparable "
                   "as run:**")
        for m in rep.mismatches:
            out.append(f"> - {md_escape(m)}")
        out.append("")
    for n in rep.notes:
        out.append(f"> Note: {md_escape(n)}")
        out.append("")

    arms_rows = t[t["arm"] != rep.baseline] if rep.has_baseline else t.iloc[0:0]
    if len(arms_rows):
        out += [f"{hh} Verdicts", ""]
        out += [_verdict_line(r, rep.baseline, alpha) for r in arms_rows.itertuples()]
        out.append("")

    out += [f"{hh} Test loss", ""]
    ci_label = f"{100 * (1 - alpha):g}% CI"
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
             "effect size", f"min. detectable diff ({power:.0%} power)",
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
    out.append(f"`harness sweep {md_escape(rep.baseline)} --seeds N` runs the baseline alone "
               "N times: its spread answers \"is it noise?\" directly.")
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
                    "curves": "Loss curves (mean ± 1 sd across seeds, completed runs)",
                    "paired": "Per-seed test loss, baseline -> arm"}
        left_out = plot_arms(rep)[1]
        for key, p in rep.plots.items():
            rel = Path(p).relative_to(md_dir) if Path(p).is_relative_to(md_dir) else Path(p)
            out.append(f"![{captions[key]}]({quote(rel.as_posix())})")
            out.append("")
            if key in ("curves", "paired") and left_out:
                out.append(f"_{captions[key]}: the {MAX_PLOT_ARMS} arms with the smallest Holm "
                           f"p-values are shown; {left_out} more are in the tables._")
                out.append("")

    out += [f"{hh} Comparability", ""]
    if rep.mismatches:
        out.append("Mismatches (reported because --allow-mismatch was given):")
        out += [f"- {md_escape(m)}" for m in rep.mismatches]
    else:
        out.append("All compared arms share the token budget, preset and test set of their "
                   "completed runs, and each arm has one config.")
    out.append("")
    out.append(_md_table(["arm", "interventions", "config hash", "preset", "planned tokens",
                          "test set", "dtype", "device", "world size"],
                         [[md_escape(a[k]) for k in ("arm", "interventions", "config_hash",
                                                     "preset", "planned_tokens", "test_set_id",
                                                     "dtype", "device", "world_size")]
                          for a in rep.provenance["arms"]]))
    out.append("")

    out += [f"{hh} Methods", ""]
    out += [
        f"- diff, {ci_label}, p: paired t-test and t interval on per-seed differences when the "
        "arm shares at least 2 seeds (and at least half of its runs) with the baseline, "
        "otherwise Welch's t-test and interval (the `test` column says which).",
        "- p (Holm): Holm step-down adjustment across the arms of this sweep (the same "
        "numbers as statsmodels multipletests(method=\"holm\"), checked in the tests).",
        "- robustness: Wilcoxon signed-rank on the per-seed differences (exact for small n) "
        "for paired arms; Mann-Whitney U for Welch arms.",
        f"- BCa bootstrap: scipy.stats.bootstrap(method=\"BCa\"), {n_resamples} resamples, "
        f"seed {boot_seed} (deterministic). With few seeds it is too narrow (in simulations "
        "a nominal 95% BCa interval covered about 85% at n = 5 and 91% at n = 30), so the "
        "t interval is the primary one.",
        "- effect size: Cohen's d_z (mean difference / sd of differences) for paired arms; "
        "Hedges' g (pooled sd, small-sample corrected) for Welch arms.",
        f"- power: two-sided t-test power (statsmodels) at alpha {alpha:g} and {power:.0%} "
        "power, at the observed seed noise (paired: sd of differences; Welch: pooled sd). "
        "Holm makes the real requirement somewhat larger.",
        "- equivalence: TOST against ±margin (statsmodels ttost_paired / ttost_ind), "
        "Holm-adjusted across arms." if margin else
        "- equivalence: not tested (no --margin given).",
        "- verdict: better / worse when p (Holm) < alpha and diff < 0 / > 0; equivalent within "
        "margin when the Holm-adjusted TOST p < alpha; otherwise no detectable difference; "
        "insufficient data when the test cannot be computed. \"No detectable difference\" "
        "is not evidence of no effect: compare |diff| with the minimum detectable difference.",
    ]
    out.append("")
    return "\n".join(out)


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


# =========================================================================== json / terminal


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, Path):
        return str(x)
    return x


def sweep_to_json(rep: SweepReport) -> dict:
    arms = []
    for row in rep.table.to_dict(orient="records"):
        row["sweep"] = rep.sweep
        row["seeds_needed"] = (None if not math.isfinite(stats._f(row["seeds_needed"]))
                               else int(row["seeds_needed"]))
        arms.append(row)
    return _jsonable({
        "sweep": rep.sweep,
        "baseline": rep.baseline,
        "has_baseline": rep.has_baseline,
        "arms": arms,
        "runs": rep.accounting.to_dict(orient="records"),
        "not_completed": rep.problems.to_dict(orient="records"),
        "noise_floor": {**{k: v for k, v in rep.noise.items() if k != "seeds_needed"},
                        "seeds_needed": [{"diff": k, "seeds_per_arm": v}
                                         for k, v in rep.noise["seeds_needed"].items()]},
        "integrity": {"mismatches": rep.mismatches, "allow_mismatch": rep.allow_mismatch},
        "notes": rep.notes,
        "provenance": rep.provenance,
        "plots": {k: str(v) for k, v in rep.plots.items()},
    })


_RICH_VERDICT = {stats.BETTER: "green", stats.WORSE: "red", stats.EQUIVALENT: "blue",
                 stats.NO_DIFFERENCE: "white", stats.INSUFFICIENT: "yellow",
                 stats.BASELINE: "dim"}


def render_terminal(rep: SweepReport, console: Console, alpha: float) -> None:
    from rich.markup import escape

    table = Table(title=f"sweep {escape(rep.sweep)} (diff = arm - {escape(rep.baseline)}; "
                        "negative = better)", title_justify="left")
    for col, just in (("arm", "left"), ("n", "right"), ("mean", "right"), ("sd", "right"),
                      ("diff", "right"), (f"{100 * (1 - alpha):g}% CI", "right"),
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
    for m in rep.mismatches:
        console.print(f"  [bold red]--allow-mismatch:[/] {escape(m)}")
    for n in rep.notes:
        console.print(f"  note: {escape(n)}")
    for r in rep.table.itertuples():
        for n in r.notes:
            console.print(f"  {escape(r.arm)}: {escape(n)}", style="dim")


# =========================================================================== entry point


def _validate(alpha: float, margin: float | None, fmt: str, power: float, baseline: str) -> None:
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise UserError(f"--alpha {alpha!r} is not allowed: give a number between 0 and 1, "
                        "e.g. 0.05")
    if margin is not None and not (math.isfinite(margin) and margin > 0):
        raise UserError(f"--margin {margin!r} is not allowed: give a positive test-loss "
                        "difference, e.g. 0.005")
    if fmt not in ("markdown", "json"):
        raise UserError(f"--format {fmt!r} is not allowed: use markdown or json")
    if not 0 < power < 1:
        raise UserError(f"power {power!r} is not allowed: give a number between 0 and 1")
    if not baseline:
        raise UserError("--baseline is empty: name the arm to compare against, e.g. baseline")


def run_report(
    results_dir: Path = Path("results"),
    sweep: str | None = None,
    baseline: str = "baseline",
    alpha: float = 0.05,
    margin: float | None = None,
    out: Path | None = None,
    fmt: Fmt = "markdown",
    allow_mismatch: bool = False,
    console: Console | None = None,
    *,
    reports_dir: Path = Path("reports"),
    power: float = 0.8,
    n_resamples: int = stats.DEFAULT_RESAMPLES,
    boot_seed: int = stats.DEFAULT_BOOT_SEED,
    plots: bool = True,
    stdout: TextIO | None = None,
) -> list[Path]:
    """Build the report; raise :class:`UserError` for bad input. Returns the files written.

    * ``sweep=None``: every sweep in the store, one section each (markdown: one file per sweep,
      ``reports_dir/<sweep>.md``, unless ``out`` is given, which then holds every section).
    * ``fmt="markdown"``: markdown + PNG plots next to it, and a table per sweep on ``console``.
    * ``fmt="json"``: the same numbers as JSON on ``stdout`` (and in ``out`` if given); warnings
      go to stderr so stdout stays machine-readable.
    """
    _validate(alpha, margin, fmt, power, baseline)
    console = console or Console()
    stdout = stdout or sys.stdout
    warn_console = console if fmt == "markdown" else Console(stderr=True)
    warnings_: list[str] = []

    def warn(msg: str) -> None:
        warnings_.append(msg)
        warn_console.print(f"[yellow]warning:[/] {rich_escape(msg)}", markup=True,
                           highlight=False)

    store = load_store(Path(results_dir), warn)
    outcomes = resolve_outcomes(store.runs)
    sweeps = sorted(outcomes["sweep"].unique())
    if sweep is not None:
        if sweep not in sweeps:
            raise UserError(f"unknown sweep {sweep!r}: the sweeps in {results_dir} are "
                            f"{', '.join(map(repr, sweeps))}")
        sweeps = [sweep]
        arms_here = sorted(outcomes.loc[outcomes["sweep"].eq(sweep), "arm"].unique())
        if baseline not in arms_here:
            raise UserError(f"unknown baseline {baseline!r}: sweep {sweep!r} has arms "
                            f"{', '.join(map(repr, arms_here))}; pass one with --baseline")
    elif not outcomes["arm"].eq(baseline).any():
        arms_all = sorted(outcomes["arm"].unique())
        raise UserError(f"unknown baseline {baseline!r}: no sweep in {results_dir} has that arm "
                        f"(arms: {', '.join(map(repr, arms_all))}); pass one with --baseline")

    selected = outcomes[outcomes["sweep"].isin(sweeps)]
    invalid = selected[selected["outcome"].eq("invalid")]
    if len(invalid):
        ex = invalid.iloc[0]
        warn(f"{len(invalid)} run(s) have status completed but a NaN/inf test loss (e.g. "
             f"sweep {ex['sweep']!r} arm {ex['arm']!r} seed {int(ex['seed'])}); they are "
             "counted as invalid, listed in the report, and not in n")
    if not selected["outcome"].eq("completed").any():
        counts = selected["outcome"].value_counts()
        detail = ", ".join(f"{int(counts.get(k, 0))} {k}" for k in OUTCOMES[1:])
        raise UserError(f"nothing to compare: no completed run with a finite test loss in "
                        f"sweep(s) {', '.join(map(repr, sweeps))} ({detail}); finish or "
                        "rerun some runs first")

    mismatched, problems = [], {}
    for sw in sweeps:
        rows = outcomes[outcomes["sweep"].eq(sw)]
        problems[sw] = check_integrity(rows, _arm_order(rows["arm"].unique(), baseline))
        if problems[sw]:
            mismatched.append(f"sweep {sw!r}: " + "; ".join(problems[sw]))
    if mismatched and not allow_mismatch:
        raise UserError("refusing to compare arms that are not comparable: "
                        + " | ".join(mismatched)
                        + "; rerun them with matching settings, or pass --allow-mismatch "
                        "to compare anyway (the report then says so)")

    reps = [build_sweep_report(outcomes, sw, baseline, alpha=alpha, margin=margin, power=power,
                               n_resamples=n_resamples, boot_seed=boot_seed,
                               allow_mismatch=allow_mismatch, mismatches=problems[sw])
            for sw in sweeps]
    options = {"results_dir": str(Path(results_dir).resolve()), "sweep": sweep,
               "baseline": baseline, "alpha": alpha, "margin": margin, "power": power,
               "bootstrap_resamples": n_resamples, "bootstrap_seed": boot_seed,
               "allow_mismatch": allow_mismatch}
    generated = _generated_by()

    if fmt == "json":
        doc = _jsonable({
            "generated_by": generated, "options": options, "sign_convention": SIGN_CONVENTION,
            "results_files": [{"path": str(f.path.resolve()), "kind": f.kind, "rows": f.rows,
                               "bytes": f.size, "sha256": f.sha256, "modified": f.modified}
                              for f in store.files],
            "warnings": warnings_,
            "sweeps": [sweep_to_json(r) for r in reps],
        })
        text = json.dumps(doc, indent=2, allow_nan=False)
        stdout.write(text + "\n")
        stdout.flush()
        if out is None:
            return []
        out = Path(out)
        if out.is_dir():
            out = out / "report.json"
        try:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(text + "\n", encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write {out}: {exc.strerror}; choose another --out") from None
        return [out]

    # markdown
    if out is not None and Path(out).is_dir():  # --out names a folder: one file per sweep there
        reports_dir, out = Path(out), None
    groups: list[tuple[Path, list[SweepReport]]]
    if out is not None:
        groups = [(Path(out), reps)]
    else:
        groups, used = [], set()
        for r in reps:
            name = _slug(r.sweep)
            if name.lower() in used:  # two sweep names that map to one file name
                name += "_" + hashlib.sha256(r.sweep.encode()).hexdigest()[:8]
            used.add(name.lower())
            groups.append((Path(reports_dir) / f"{name}.md", [r]))
    md_written: list[Path] = []
    written: list[Path] = []
    curve_agg = aggregate_curves(outcomes, store.curves) if plots else None
    for md_path, group in groups:
        md_dir = md_path.parent
        try:
            md_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create report folder {md_dir}: {exc.strerror}; choose "
                            "another --out") from None
        multi = len(group) > 1
        for rep in group:
            if plots:
                stem = md_path.stem + (f"_{_slug(rep.sweep)}" if multi else "")
                try:
                    _make_plots(rep, outcomes, curve_agg, md_dir, stem, margin, alpha)
                except OSError as exc:
                    raise UserError(f"cannot write plots to {md_dir}: {exc.strerror}; choose "
                                    "another --out") from None
                written += list(rep.plots.values())
        level = 2 if multi else 1
        parts = []
        if multi:
            parts += ["# Harness report", ""]
        parts.append(f"_Generated {generated['at']} by harness {generated['harness']} "
                     f"(scipy {generated['scipy']}, statsmodels {generated['statsmodels']})._")
        parts.append("")
        for msg in warnings_:
            parts.append(f"> Warning: {md_escape(msg)}")
            parts.append("")
        for rep in group:
            parts.append(render_markdown_section(
                rep, level=level, alpha=alpha, margin=margin, power=power,
                n_resamples=n_resamples, boot_seed=boot_seed, md_dir=md_dir))
        parts.append(render_provenance(store.files, group, options, level + (0 if multi else 1)))
        try:
            md_path.write_text("\n".join(parts), encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot write report {md_path}: {exc.strerror}; choose another "
                            "--out") from None
        md_written.append(md_path)
        for rep in group:
            render_terminal(rep, console, alpha)
        console.print(f"report written to {rich_escape(str(md_path))}", highlight=False)
    return md_written + written


def _make_plots(rep: SweepReport, outcomes, curve_agg, md_dir: Path, stem: str,
                margin: float | None, alpha: float) -> None:
    targets = {"forest": md_dir / f"{stem}_forest.png", "curves": md_dir / f"{stem}_curves.png",
               "paired": md_dir / f"{stem}_paired.png"}
    made = {
        "forest": plot_forest(rep, targets["forest"], margin, alpha) if rep.has_baseline
        else False,
        "curves": plot_curves(rep, curve_agg, targets["curves"]),
        "paired": plot_paired(rep, outcomes, targets["paired"]) if rep.has_baseline else False,
    }
    rep.plots = {k: targets[k] for k, ok in made.items() if ok}


def _generated_by() -> dict:
    import importlib.metadata as md

    import scipy
    import statsmodels

    try:
        version = md.version("harness")
    except md.PackageNotFoundError:  # pragma: no cover
        version = "unknown"
    return {"harness": version, "scipy": scipy.__version__,
            "statsmodels": statsmodels.__version__, "numpy": np.__version__,
            "pandas": pd.__version__,
            "at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


# =========================================================================== synthetic data


def synthetic_results(
    *, sweep: str = "demo", arms: dict[str, float] | None = None, seeds: int = 5,
    sd: float = 0.002, seed_sd: float = 0.002, base_loss: float = 3.69, curve_points: int = 20,
    rng_seed: int = 0, preset: str = "gpt2-small", planned_tokens: int = 3_260_252_160,
    test_set_id: str = "fineweb-test-v1",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Synthetic (runs, curves) in the results-store schema, for tests and the benchmark.

    ``arms`` maps arm name -> true difference from ``base_loss`` (default baseline 0 and
    qkv_bias -0.02). Each seed has a shared effect (sd ``seed_sd``, common to all arms: the
    paired design) plus per-run noise (sd ``sd``).
    """
    arms = arms if arms is not None else {"baseline": 0.0, "qkv_bias": -0.02}
    rng = np.random.default_rng(rng_seed)
    seed_effect = rng.normal(0, seed_sd, seeds)
    steps = np.linspace(0, 1000, curve_points).astype(np.int64)
    runs, curves = [], []
    for arm, delta in arms.items():
        losses = base_loss + delta + seed_effect + rng.normal(0, sd, seeds)
        chash = hashlib.sha256(f"{preset}/{arm}".encode()).hexdigest()[:12]
        run_ids = np.array([f"{sweep}-{arm}-s{s}" for s in range(seeds)], dtype=object)
        runs.append(pd.DataFrame({
            "run_id": run_ids, "attempt": np.int64(1), "sweep": sweep, "arm": arm,
            "interventions": "" if arm == "baseline" else arm,
            "seed": np.arange(seeds, dtype=np.int64), "preset": preset,
            "config": json.dumps({"preset": preset, "arm": arm}), "config_hash": chash,
            "params": np.int64(163_009_536), "planned_tokens": np.int64(planned_tokens),
            "tokens_seen": np.int64(planned_tokens), "steps": np.int64(1000),
            "world_size": np.int64(1), "device": "cpu", "dtype": "float32",
            "versions": json.dumps({"harness": "0.1.0", "torch": "x"}),
            "git_commit": "abc123", "status": "completed", "reason": "",
            "test_loss": losses, "test_tokens": np.int64(19_660_800),
            "test_set_id": test_set_id, "train_loss": losses - 0.01, "wall_time_s": 100.0,
            "tokens_per_s": 1000.0,
            "finished_at": [f"2025-01-01T00:{s // 60 % 60:02d}:{s % 60:02d}+00:00"
                            for s in range(seeds)],
        }))
        if curve_points:
            final = np.repeat(losses, curve_points)
            st_ = np.tile(steps, seeds)
            curves.append(pd.DataFrame({
                "run_id": np.repeat(run_ids, curve_points), "attempt": np.int64(1),
                "step": st_, "tokens": st_ * 1024,
                "train_loss": final + (11.0 - final) * np.exp(-st_ / 150.0)
                + rng.normal(0, 0.01, st_.size),
                "lr": 4e-4,
            }))
    runs_df = pd.concat(runs, ignore_index=True)
    curves_df = (pd.concat(curves, ignore_index=True) if curves else
                 pd.DataFrame({"run_id": pd.Series(dtype=str),
                               "attempt": pd.Series(dtype="int64"),
                               "step": pd.Series(dtype="int64"),
                               "tokens": pd.Series(dtype="int64"),
                               "train_loss": pd.Series(dtype=float),
                               "lr": pd.Series(dtype=float)}))
    return runs_df, curves_df


def write_results(results_dir: Path, runs: pd.DataFrame, curves: pd.DataFrame | None) -> None:
    """Write (runs, curves) as the two Parquet files of a results folder."""
    results_dir = Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    runs.to_parquet(results_dir / RUNS_FILE, index=False)
    if curves is not None:
        curves.to_parquet(results_dir / CURVES_FILE, index=False)


def bench_report(n_runs: int = 10_000, n_arms: int = 10, n_sweeps: int = 1,
                 curve_points: int = 50, plots: bool = True, fmt: Fmt = "markdown",
                 quiet: bool = False) -> float:
    """Time ``run_report`` over ``n_runs`` synthetic runs (n_sweeps x n_arms x seeds); prints
    and returns the seconds taken (data generation not included)."""
    seeds = max(2, n_runs // (n_arms * n_sweeps))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        all_runs, all_curves = [], []
        arms = {"baseline": 0.0, **{f"arm{i}": -0.001 * i for i in range(1, n_arms)}}
        for k in range(n_sweeps):
            r, c = synthetic_results(sweep=f"sweep{k}", arms=arms, seeds=seeds, rng_seed=k,
                                     curve_points=curve_points)
            all_runs.append(r)
            all_curves.append(c)
        runs = pd.concat(all_runs, ignore_index=True)
        write_results(tmp / "results", runs, pd.concat(all_curves, ignore_index=True))
        t0 = time.perf_counter()
        run_report(tmp / "results", None, "baseline", 0.05, 0.005, None, fmt, False,
                   Console(file=io.StringIO(), width=160), reports_dir=tmp / "reports",
                   plots=plots, stdout=io.StringIO())
        dt = time.perf_counter() - t0
    if not quiet:
        print(f"report over {len(runs):,} runs ({n_sweeps} sweep(s) x {n_arms} arms x {seeds} "
              f"seeds, {curve_points} curve points each, format {fmt}, plots {plots}): "
              f"{dt:.2f} s")
    return dt


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.report",
                                 description="Benchmark the report on synthetic data.")
    ap.add_argument("--bench", action="store_true", help="time a report over synthetic runs")
    ap.add_argument("--runs", type=int, default=10_000)
    ap.add_argument("--arms", type=int, default=10)
    ap.add_argument("--sweeps", type=int, default=1)
    ap.add_argument("--curve-points", type=int, default=50)
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--format", choices=["markdown", "json"], default="markdown")
    args = ap.parse_args(argv)
    if not args.bench:
        ap.print_help()
        return 0
    bench_report(args.runs, args.arms, args.sweeps, args.curve_points, not args.no_plots,
                 args.format)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
