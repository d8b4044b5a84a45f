"""harness.report.build: reports built from synthetic results stores written as Parquet."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from bench.report import bench_report
from synthetic import synthetic_results, write_results

from harness.report import build as R
from harness.stats import inference as S
from harness.core.errors import UserError
from harness.report.outcomes import _normalise_runs, load_store, resolve_outcomes
from harness.report.plots import aggregate_curves
from harness.report.cells import md_escape

REQUIRED_JSON_KEYS = {"arm", "n", "mean", "sd", "diff", "ci_low", "ci_high", "p", "p_holm",
                      "verdict"}


# --------------------------------------------------------------------------- synthetic store


def make_runs(arms=None, seeds=5, sweep="demo", rng_seed=0, curve_points=10, **kw):
    """(runs, curves) DataFrames in the results-store schema (see tests/synthetic.py)."""
    return synthetic_results(sweep=sweep, arms=arms, seeds=seeds, rng_seed=rng_seed,
                               curve_points=curve_points, **kw)


def write_store(path: Path, runs: pd.DataFrame, curves: pd.DataFrame | None = None) -> Path:
    write_results(path, runs, curves)
    return path


def attempt(runs: pd.DataFrame, arm: str, seed: int, **changes) -> pd.DataFrame:
    """A copy of the (arm, seed) row with some fields changed (e.g. a failed attempt)."""
    row = runs[(runs["arm"] == arm) & (runs["seed"] == seed)].iloc[[0]].copy()
    for k, v in changes.items():
        row[k] = v
    return row


class Run:
    """Calls run_report with a captured console and stdout."""

    def __init__(self, tmp_path: Path):
        self.tmp = tmp_path
        self.console_buf = io.StringIO()
        self.stdout = io.StringIO()

    def __call__(self, results, **kw):
        args = dict(sweep=None, baseline="baseline", alpha=0.05, margin=None, out=None,
                    fmt="markdown", allow_mismatch=False)
        args.update({k: kw.pop(k) for k in list(kw) if k in args})
        kw.setdefault("reports_dir", self.tmp / "reports")
        kw.setdefault("n_resamples", 500)
        return R.run_report(results, console=Console(file=self.console_buf, width=220), stdout=self.stdout,
                            **args, **kw)

    @property
    def terminal(self) -> str:
        return self.console_buf.getvalue()


@pytest.fixture
def run(tmp_path):
    return Run(tmp_path)


@pytest.fixture
def store(tmp_path):
    arms = {"baseline": 0.0, "qkv_bias": -0.02, "no_dropout": 0.0, "weight_tying": 0.03}
    runs, curves = make_runs(arms, seeds=6)
    return write_store(tmp_path / "results", runs, curves)


def md_cells(line: str) -> list[str]:
    """Cells of a markdown table row, splitting on unescaped pipes only."""
    return re.split(r"(?<!\\)\|", line.strip().strip("|"))


# --------------------------------------------------------------------------- markdown


def test_markdown_report_contents_and_plots(run, store, tmp_path):
    written = run(store, margin=0.005)
    md = tmp_path / "reports" / "demo.md"
    assert written[0] == md and md.exists()
    text = md.read_text()
    assert "negative = lower loss = better" in text
    for arm in ("baseline", "qkv\\_bias", "no\\_dropout", "weight\\_tying"):
        assert f"| {arm} |" in text
    assert "p (Holm)" in text and "paired t" in text and "Wilcoxon signed-rank" in text
    assert "BCa" in text and "Cohen's d_z" in text
    assert "min. detectable diff (80% power, Holm)" in text
    assert "Noise floor" in text and "harness sweep baseline --seeds N" in text
    # verdicts: big effects found, the null arm is not called better or worse
    assert re.search(r"\*\*qkv\\_bias\*\*: better", text)
    assert re.search(r"\*\*weight\\_tying\*\*: worse", text)
    assert not re.search(r"\*\*no\\_dropout\*\*: (better|worse)", text)
    # 6 decimals for mean and sd
    table = [ln for ln in text.splitlines() if ln.startswith("| qkv\\_bias | 6 |")][0]
    assert re.fullmatch(r"\d\.\d{6}", md_cells(table)[2].strip())
    # plots exist next to the markdown and are linked from it
    for kind in ("forest", "curves", "paired"):
        png = tmp_path / "reports" / f"demo_{kind}.png"
        assert png.exists() and png.stat().st_size > 1000
        assert f"(demo_{kind}.png)" in text
        assert png in written
    # reproducibility: files, config hashes, versions
    assert "runs.parquet" in text and "curves.parquet" in text and "sha256" in text
    runs = pd.read_parquet(store / "runs.parquet")
    for h in runs["config_hash"].unique():
        assert h in text
    assert '"torch": "x"' in text and "abc123" in text
    # terminal table
    assert "qkv_bias" in run.terminal and "better" in run.terminal
    assert "report written to" in run.terminal


def test_a_new_section_is_one_unit(run, store, tmp_path, monkeypatch):
    """A statistic added as one Section in one place (compare.SECTIONS) reaches the markdown, the
    JSON, the terminal, the Methods and a tracker's record, with the numbers its build made."""
    from harness.report import compare
    from harness.report.section import Section
    from harness.trackers.records import sweep_record

    def build(data):  # the range of each arm's test loss over its completed seeds
        spread = data.done.groupby("arm")["test_loss"].agg(lambda x: x.max() - x.min())
        return {arm: float(spread[arm]) for arm in data.arms}

    spread = Section(
        key="spread", build=build,
        markdown=lambda rep, hh: [f"{hh} Spread", ""] + [f"- {a}: {v:.6f}" for a, v in rep.parts["spread"].items()],
        json=lambda rep: {"spread": rep.parts["spread"]},
        terminal=lambda rep: [f"  spread: {a} {v:.6f}" for a, v in rep.parts["spread"].items()],
        methods=lambda rep: ["- spread: the largest less the smallest test loss over an arm's seeds."],
        tracked=lambda sweep, compared: ({f"{a}/spread": v for a, v in sweep["spread"].items() if a in compared}, {}))
    monkeypatch.setattr(compare, "SECTIONS", (*compare.SECTIONS, spread))

    runs = pd.read_parquet(store / "runs.parquet")
    qkv = runs.loc[runs["arm"].eq("qkv_bias"), "test_loss"]
    expected = float(qkv.max() - qkv.min())
    run(store, plots=False)
    text = (tmp_path / "reports" / "demo.md").read_text()
    assert f"- qkv_bias: {expected:.6f}" in re.split("#+ Runs", text)[0]  # before the frame's runs
    assert "- spread: the largest less" in re.split("#+ Methods", text)[1]
    assert f"spread: qkv_bias {expected:.6f}" in run.terminal
    run.stdout.truncate(0)
    run(store, fmt="json")
    assert json.loads(run.stdout.getvalue())["sweeps"][0]["spread"]["qkv_bias"] == pytest.approx(expected)
    record, _ = sweep_record(store, "demo")
    assert record.metrics["qkv_bias/spread"] == pytest.approx(expected)
    assert "baseline/spread" not in record.metrics  # the baseline is no compared arm
    assert record.metrics["qkv_bias/diff"] < 0  # the other sections' fields are still there


def test_a_report_without_ladders_says_so_when_asked_for_one(store):
    with pytest.raises(UserError, match="^the report holds no ladder: report a results folder where"):
        R.build_report(store).ladder_trend()


def test_markdown_numbers_match_stats(run, store, tmp_path):
    run(store)
    runs = pd.read_parquet(store / "runs.parquet")
    t = S.compare_arms(runs[["arm", "seed", "test_loss"]], "baseline", n_resamples=500)
    text = (tmp_path / "reports" / "demo.md").read_text()
    for r in t.itertuples():
        assert f"{r.mean:.6f}" in text and f"{r.sd:.6f}" in text
        if r.arm != "baseline":
            assert f"{r.diff:+.6f}" in text


def test_out_path_and_multiple_sweeps_in_one_file(run, tmp_path):
    r1, c1 = make_runs({"baseline": 0, "a": -0.01}, sweep="one")
    r2, c2 = make_runs({"baseline": 0, "b": 0.01}, sweep="two", rng_seed=1)
    store = write_store(tmp_path / "res", pd.concat([r1, r2]), pd.concat([c1, c2]))
    out = tmp_path / "custom" / "all.md"
    run(store, out=out)
    text = out.read_text()
    assert "## Sweep one" in text and "## Sweep two" in text
    assert (tmp_path / "custom" / "all_one_forest.png").exists()
    assert (tmp_path / "custom" / "all_two_paired.png").exists()
    # default: one file per sweep
    run(store)
    assert (tmp_path / "reports" / "one.md").exists() and (tmp_path / "reports" / "two.md").exists()
    # --sweep selects one
    run(store, sweep="two", out=tmp_path / "two_only.md")
    assert "Sweep one" not in (tmp_path / "two_only.md").read_text()


# --------------------------------------------------------------------------- json


def test_json_output(run, store):
    written = run(store, fmt="json", margin=0.005)
    assert written == []
    doc = json.loads(run.stdout.getvalue())  # strict JSON: NaN became null
    assert "negative" in doc["sign_convention"]
    sw = doc["sweeps"][0]
    assert sw["sweep"] == "demo" and sw["baseline"] == "baseline"
    rows = {r["arm"]: r for r in sw["arms"]}
    assert set(rows) == {"baseline", "qkv_bias", "no_dropout", "weight_tying"}
    for r in rows.values():
        assert REQUIRED_JSON_KEYS <= set(r)
        assert r["n"] == 6
    assert rows["baseline"]["diff"] is None and rows["baseline"]["verdict"] == "baseline"
    assert rows["qkv_bias"]["verdict"] == "better" and rows["qkv_bias"]["test"] == "paired t"
    assert rows["qkv_bias"]["ci_low"] < rows["qkv_bias"]["diff"] < rows["qkv_bias"]["ci_high"]
    assert rows["weight_tying"]["verdict"] == "worse"
    runs = pd.read_parquet(store / "runs.parquet")
    t = S.compare_arms(runs[["arm", "seed", "test_loss"]], "baseline", margin=0.005,
                       n_resamples=500).set_index("arm")
    for arm, r in rows.items():
        for key in ("mean", "sd", "diff", "p", "p_holm", "ci_low", "ci_high"):
            ref = t.loc[arm, key]
            assert (r[key] is None and math.isnan(ref)) or r[key] == pytest.approx(ref)
        assert r["verdict"] == t.loc[arm, "verdict"]
    assert {f["kind"] for f in doc["results_files"]} == {"runs", "curves"}
    assert sw["integrity"] == {"mismatches": [], "allow_mismatch": False, "withheld": []} and sw["complete"] is True
    assert sw["noise_floor"]["n"] == 6
    assert not (Path(run.tmp) / "reports").exists()  # json writes no markdown or plots


def test_json_is_deterministic_and_can_go_to_a_file(run, store, tmp_path):
    run(store, fmt="json")
    first = json.loads(run.stdout.getvalue())
    run.stdout = io.StringIO()
    run(store, fmt="json", out=tmp_path / "r.json")
    second = json.loads((tmp_path / "r.json").read_text())
    assert first["sweeps"] == second["sweeps"]


# --------------------------------------------------------------------------- integrity


@pytest.mark.parametrize("column,value", [("planned_tokens", 1_000_000),
                                          ("preset", "gpt2-tiny"),
                                          ("test_set_id", "other-test-set")])
def test_integrity_refusal_and_allow_mismatch(run, tmp_path, column, value):
    runs, curves = make_runs({"baseline": 0, "qkv_bias": -0.01})
    runs.loc[runs["arm"] == "qkv_bias", column] = value
    store = write_store(tmp_path / "res", runs, curves)
    with pytest.raises(UserError) as err:
        run(store)
    msg = str(err.value)
    assert column in msg and "--allow-mismatch" in msg and "\n" not in msg
    run(store, allow_mismatch=True)
    text = (tmp_path / "reports" / "demo.md").read_text()
    assert "--allow-mismatch was given" in text and column.replace("_", "\\_") in text
    assert "--allow-mismatch" in run.terminal


def test_integrity_config_hash_must_be_one_per_arm(run, tmp_path):
    runs, curves = make_runs({"baseline": 0, "qkv_bias": -0.01})
    runs.loc[(runs["arm"] == "qkv_bias") & (runs["seed"] == 0), "config_hash"] = "deadbeef"
    store = write_store(tmp_path / "res", runs, curves)
    with pytest.raises(UserError, match="different configs"):
        run(store)


def test_integrity_ignores_failed_runs_values(run, tmp_path):
    runs, curves = make_runs({"baseline": 0, "a": -0.01})
    failed = attempt(runs, "a", 0, status="failed", test_loss=np.nan, test_set_id="", attempt=1,
                     finished_at="2024-01-01T00:00:00+00:00", reason="OOM")
    runs.loc[(runs["arm"] == "a") & (runs["seed"] == 0), "attempt"] = 2  # the retry that completed
    write_store(tmp_path / "res", pd.concat([runs, failed]), curves)
    run(tmp_path / "res", fmt="json")  # no refusal: the failed attempt never produced a test loss
    sweep = json.loads(run.stdout.getvalue())["sweeps"][0]
    assert sweep["integrity"]["mismatches"] == []
    arms = {r["arm"]: r for r in sweep["arms"]}
    assert arms["a"]["n"] == 5 and arms["a"]["n_pairs"] == 5  # seed 0 counts by its completed retry
    accounting = {r["arm"]: r for r in sweep["runs"]}
    assert accounting["a"]["completed"] == 5 and accounting["a"]["failed"] == 0 and accounting["a"]["attempts"] == 6


# --------------------------------------------------------------------------- accounting


def test_failed_and_diverged_runs_are_counted_and_listed(run, tmp_path):
    runs, curves = make_runs({"baseline": 0, "qkv_bias": -0.01}, seeds=5)
    retry_failed = attempt(runs, "qkv_bias", 1, status="failed", test_loss=np.nan,
                           reason="CUDA OOM", attempt=1, finished_at="2024-01-01T00:00:00+00:00")
    runs.loc[(runs["arm"] == "qkv_bias") & (runs["seed"] == 1), "attempt"] = 2  # completed on the retry
    runs = runs[~((runs["arm"] == "qkv_bias") & runs["seed"].isin([3, 4]))]
    diverged = attempt(make_runs({"qkv_bias": 0}, seeds=5)[0], "qkv_bias", 3,
                       status="diverged", test_loss=np.nan, reason="loss is NaN at step 812",
                       run_id="div-3")
    failed = attempt(make_runs({"qkv_bias": 0}, seeds=5)[0], "qkv_bias", 4, status="failed",
                     test_loss=np.nan, reason="node | lost", run_id="fail-4")
    store = write_store(tmp_path / "res", pd.concat([runs, retry_failed, diverged, failed]),
                        curves)
    run(store, fmt="json")
    sw = json.loads(run.stdout.getvalue())["sweeps"][0]
    acc = {r["arm"]: r for r in sw["runs"]}
    assert acc["qkv_bias"] == {"arm": "qkv_bias", "seeds": 5, "completed": 3, "diverged": 1,
                               "failed": 1, "invalid": 0, "attempts": 6}
    rows = {r["arm"]: r for r in sw["arms"]}
    assert rows["qkv_bias"]["n"] == 3 and rows["qkv_bias"]["n_pairs"] == 3
    assert {(r["seed"], r["outcome"]) for r in sw["not_completed"]} == {(3, "diverged"),
                                                                        (4, "failed")}
    run(store)
    text = (run.tmp / "reports" / "demo.md").read_text()
    assert "loss is NaN at step 812" in text and "node \\| lost" in text
    assert "not completed: 1 diverged, 1 failed" in run.terminal


def test_completed_attempt_wins_whatever_the_order(tmp_path):
    runs, _ = make_runs({"baseline": 0}, seeds=2)
    later_fail = attempt(runs, "baseline", 0, status="failed", test_loss=np.nan, attempt=2,
                         finished_at="2030-01-01T00:00:00+00:00")
    out = resolve_outcomes(_normalise_runs(pd.concat([later_fail, runs]), print))
    row = out[(out["arm"] == "baseline") & (out["seed"] == 0)].iloc[0]
    assert row["outcome"] == "completed" and row["attempts"] == 2


def test_nan_losses_are_invalid_not_dropped(run, tmp_path):
    runs, curves = make_runs({"baseline": 0, "a": -0.01}, seeds=5)
    runs.loc[(runs["arm"] == "a") & (runs["seed"] == 2), "test_loss"] = np.nan
    store = write_store(tmp_path / "res", runs, curves)
    run(store, fmt="json")
    sw = json.loads(run.stdout.getvalue())["sweeps"][0]
    acc = {r["arm"]: r for r in sw["runs"]}
    assert acc["a"]["invalid"] == 1 and acc["a"]["completed"] == 4
    assert {r["arm"]: r["n"] for r in sw["arms"]}["a"] == 4
    assert any("NaN" in w for w in json.loads(run.stdout.getvalue())["warnings"])


def test_all_losses_nan_is_a_user_error(run, tmp_path):
    runs, curves = make_runs({"baseline": 0, "a": -0.01}, seeds=3)
    runs["test_loss"] = np.nan
    store = write_store(tmp_path / "res", runs, curves)
    with pytest.raises(UserError, match="no completed run with a finite test loss"):
        run(store)


# --------------------------------------------------------------------------- bad input


def test_baseline_with_fewer_than_two_runs_keeps_means(run, tmp_path):
    runs, curves = make_runs({"baseline": 0, "a": -0.01}, seeds=4)
    runs.loc[(runs["arm"] == "baseline") & (runs["seed"] > 0), "status"] = "failed"
    runs.loc[(runs["arm"] == "baseline") & (runs["seed"] > 0), "test_loss"] = np.nan
    store = write_store(tmp_path / "res", runs, curves)
    run(store)
    text = (run.tmp / "reports" / "demo.md").read_text()
    base_mean = runs.loc[(runs["arm"] == "baseline") & (runs["seed"] == 0), "test_loss"].iloc[0]
    assert f"{base_mean:.6f}" in text
    assert f"{runs.loc[runs['arm'] == 'a', 'test_loss'].mean():.6f}" in text
    assert "baseline has 1 completed run(s)" in text and "need at least 2" in text
    assert "insufficient data" in text
    assert "Not computable" in text  # noise floor


def test_unknown_sweep_and_baseline(run, store):
    with pytest.raises(UserError, match=r"unknown sweep 'nope'.*'demo'"):
        run(store, sweep="nope")
    with pytest.raises(UserError, match=r"unknown baseline 'base'.*'qkv_bias'"):
        run(store, sweep="demo", baseline="base")
    with pytest.raises(UserError, match=r"unknown baseline 'base'"):
        run(store, baseline="base")


def test_sweep_without_the_baseline_gets_descriptive_section(run, tmp_path):
    r1, c1 = make_runs({"baseline": 0, "a": -0.01}, sweep="one")
    r2, c2 = make_runs({"x": 0, "y": 0.01}, sweep="other", rng_seed=3)
    store = write_store(tmp_path / "res", pd.concat([r1, r2]), pd.concat([c1, c2]))
    run(store)
    text = (run.tmp / "reports" / "other.md").read_text()
    assert "no arm named 'baseline' in this sweep" in text
    assert "| x |" in text and "| y |" in text


def test_no_results(run, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        run(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no readable runs.parquet"):
        run(tmp_path / "empty")
    runs, _ = make_runs()
    write_store(tmp_path / "zero", runs.iloc[0:0], None)
    with pytest.raises(UserError, match="holds no runs"):
        run(tmp_path / "zero")


def test_corrupt_curves_skipped_with_warning(run, store):
    (store / "curves.parquet").write_bytes(b"PAR1 this is not really parquet")
    run(store)
    assert "skipping" in run.terminal and "curves.parquet" in run.terminal
    text = (run.tmp / "reports" / "demo.md").read_text()
    assert "> Warning: skipping" in text
    assert not (run.tmp / "reports" / "demo_curves.png").exists()
    assert (run.tmp / "reports" / "demo_forest.png").exists()


def test_partial_runs_parquet_is_skipped_then_no_results(run, store):
    data = (store / "runs.parquet").read_bytes()
    (store / "runs.parquet").write_bytes(data[: len(data) // 2])  # truncated write
    with pytest.raises(UserError, match="no readable runs.parquet"):
        run(store)
    assert "runs.parquet" in run.terminal and "skipping" in run.terminal


def test_attempts_share_run_id_and_curves_follow_the_counted_attempt(run, tmp_path):
    """The real store keys rows by (run_id, attempt): a failed attempt 1, then a completed
    retry 2 under the same run_id, each with its own curve."""
    runs, curves = make_runs({"baseline": 0, "a": -0.01}, seeds=3, curve_points=5)
    first = attempt(runs, "a", 0, status="failed", test_loss=np.nan, reason="preempted",
                    finished_at="2025-01-01T00:00:00+00:00")
    runs.loc[(runs["arm"] == "a") & (runs["seed"] == 0), "attempt"] = 2
    run_id = first["run_id"].iloc[0]
    bad_curve = curves[curves["run_id"] == run_id].assign(train_loss=1000.0)
    curves.loc[curves["run_id"] == run_id, "attempt"] = 2
    runs, curves = pd.concat([runs, first]), pd.concat([curves, bad_curve])
    store = write_store(tmp_path / "res", runs, curves)
    loaded = load_store(store)
    outcomes = resolve_outcomes(loaded.runs)
    row = outcomes[(outcomes["arm"] == "a") & (outcomes["seed"] == 0)].iloc[0]
    assert row["outcome"] == "completed" and row["attempt"] == 2 and row["attempts"] == 2
    agg = aggregate_curves(outcomes, loaded.curves)
    assert agg["mean"].max() < 20  # the failed attempt's curve is not mixed in
    run(store, fmt="json")
    acc = {r["arm"]: r for r in json.loads(run.stdout.getvalue())["sweeps"][0]["runs"]}
    assert acc["a"]["completed"] == 3 and acc["a"]["attempts"] == 4


def test_runs_file_missing_columns_is_skipped(run, tmp_path):
    runs, _ = make_runs()
    write_store(tmp_path / "res", runs.drop(columns=["test_loss"]), None)
    with pytest.raises(UserError, match="no readable"):
        run(tmp_path / "res")
    assert "lacks column(s) test_loss" in run.terminal


def test_missing_curves_file_is_fine(run, tmp_path):
    runs, _ = make_runs({"baseline": 0, "a": -0.01})
    write_store(tmp_path / "res", runs, None)
    written = run(tmp_path / "res")
    assert not any("curves" in p.name for p in written)
    assert any("forest" in p.name for p in written)


@pytest.mark.parametrize("kw,match", [({"alpha": 1.5}, "--alpha"), ({"alpha": 0}, "--alpha"),
                                      ({"margin": -0.1}, "--margin"),
                                      ({"fmt": "html"}, "--format")])
def test_bad_options(run, store, kw, match):
    with pytest.raises(UserError, match=match):
        run(store, **kw)


# --------------------------------------------------------------------------- escaping, design


def test_markdown_escaping_keeps_tables_intact(run, tmp_path):
    weird = "a|b*c_[x](y)<z>`#"
    runs, curves = make_runs({"baseline": 0, weird: -0.01}, sweep="s|weird")
    run(write_store(tmp_path / "res", runs, curves))
    md = next((run.tmp / "reports").glob("*.md"))
    text = md.read_text()
    assert weird not in text
    assert md_escape(weird) in text
    assert md_escape(weird) == "a\\|b\\*c\\_\\[x\\](y)\\<z\\>\\`\\#"
    header = [ln for ln in text.splitlines() if ln.startswith("| arm | n | mean")][0]
    row = [ln for ln in text.splitlines() if ln.startswith("| " + md_escape(weird) + " | 5")][0]
    assert len(md_cells(row)) == len(md_cells(header))
    assert md.name == "s_weird.md"


def test_welch_fallback_is_stated(run, tmp_path):
    runs, curves = make_runs({"baseline": 0, "a": -0.02}, seeds=5)
    runs.loc[runs["arm"] == "a", "seed"] += 100
    run(write_store(tmp_path / "res", runs, curves), fmt="json")
    rows = {r["arm"]: r for r in json.loads(run.stdout.getvalue())["sweeps"][0]["arms"]}
    assert rows["a"]["test"] == "Welch t" and rows["a"]["effect_size_name"] == "Hedges' g"
    assert any("Welch fallback" in n for n in rows["a"]["notes"])


def test_bench_report_runs(capsys):
    dt = bench_report(n_runs=200, n_arms=4, curve_points=5)
    assert dt > 0
    assert "report over 200 runs" in capsys.readouterr().out


def test_out_folder_and_slug_collisions(run, tmp_path):
    r1, c1 = make_runs({"baseline": 0, "a": -0.01}, sweep="x/y")
    r2, c2 = make_runs({"baseline": 0, "a": -0.01}, sweep="x_y", rng_seed=2)
    store = write_store(tmp_path / "res", pd.concat([r1, r2]), pd.concat([c1, c2]))
    folder = tmp_path / "outdir"
    folder.mkdir()
    written = run(store, out=folder)
    mds = sorted(p.name for p in written if p.suffix == ".md")
    assert len(mds) == 2 and "x_y.md" in mds  # the second sweep got a distinct name
    assert all(p.parent == folder for p in written)
    run(store, fmt="json", out=folder)
    assert json.loads((folder / "report.json").read_text())["sweeps"]


def test_unwritable_output_is_a_user_error(run, store, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match="choose another --out"):
        run(store, out=blocker / "r.md")


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as hs  # noqa: E402


@settings(max_examples=300, deadline=None)
@given(hs.text(max_size=40))
def test_md_escape_never_breaks_a_table_cell(text):
    out = md_escape(text)
    assert "\n" not in out and "\r" not in out
    assert not re.search(r"(?<!\\)\|", out.replace("\\\\", ""))
    assert len(md_cells(f"| {out} | x |")) == 2
