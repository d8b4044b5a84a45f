"""Noise anatomy (`harness noise`, harness.stats.noise): the decomposition recovers known variance
components with intervals that cover at their level (simulation), a noise study end to end on the
micro preset (identical seeds reproduce bit for bit on CPU), sub-seeds set by hand on `harness
run`, and bad input."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import cli, invoke
from harness.stats.noise import ALL, REPLICATE, components, paired_components, sd_interval


def mc(p: float, n: int) -> float:
    return 3 * math.sqrt(p * (1 - p) / n)


@pytest.mark.parametrize("sims", [2000, pytest.param(20000, marks=pytest.mark.slow)])
def test_the_decomposition_recovers_known_components_and_its_intervals_cover(sims):
    rng = np.random.default_rng(3)
    truth = {"init": 0.004, "data": 0.002, "dropout": 0.001}
    hits = {k: 0 for k in truth}
    estimates = {k: [] for k in truth}
    for _ in range(sims):
        for k, sd in truth.items():
            _, est, low, high = sd_interval(3.0 + sd * rng.standard_normal(8))
            hits[k] += low <= sd <= high
            estimates[k].append(est**2)
    for k, sd in truth.items():
        assert abs(hits[k] / sims - 0.95) <= mc(0.05, sims)
        assert np.mean(estimates[k]) == pytest.approx(sd**2, rel=0.05)  # the variance estimate is unbiased


def test_shares_and_the_paired_difference_per_source():
    seeds = range(6)
    base = {"init": pd.Series([3.0, 3.1, 2.9, 3.05, 2.95, 3.0], index=seeds),
            "data": pd.Series([3.0, 3.01, 2.99, 3.0, 3.02, 2.98], index=seeds)}
    arm = {"init": base["init"] - 0.02, "data": base["data"] - 0.02 + np.array([0, 0.01, -0.01, 0, 0.01, -0.01])}
    t = components({k: v.to_numpy() for k, v in base.items()})
    assert t["share"].sum() == pytest.approx(1.0) and t.set_index("source").loc["init", "share"] > 0.9
    p = paired_components(base, arm).set_index("source")
    assert p.loc["init", "sd_diff"] == pytest.approx(0, abs=1e-12) and p.loc["init", "left"] < 1e-12
    assert 0 < p.loc["data", "left"] < 1
    assert math.isnan(sd_interval([1.0])[1])


@pytest.mark.slow  # CI time: the class stays covered by a shorter test in the fast tier
def test_a_noise_study_end_to_end(tmp_path, small_corpus):
    args = ["noise", "--preset", "micro", "--seeds", "2", "--arm", "qkv_bias", "--tokens", "2000",
            "--data", str(small_corpus), "--results", str(tmp_path / "r")]
    dry = cli(*args, "--dry-run", check=True).stdout
    # per arm: seeds 0 and 1 ordinary, seed 1 of each source, replica 1; the seed-0 run is every source's
    # seed 0 and replica 0, so it is trained once
    assert "12 runs" in dry and "noise study" in dry
    out = cli(*args, check=True).stdout
    assert "harness report --sweep noise-micro-baseline-qkv_bias" in out
    rows = pd.read_parquet(tmp_path / "r" / "runs.parquet")
    assert len(rows) == 12 and (rows["status"] == "completed").all() and rows["identity"].nunique() == 12
    assert set(rows["vary"]) == {"", "init", "data", "dropout", "replicate"}
    init = rows[(rows["vary"] == "init") & (rows["arm"] == "baseline")]
    zero = rows[(rows["vary"] == "") & (rows["arm"] == "baseline") & (rows["seed"] == 0)].iloc[0]
    assert init.iloc[0]["init_seed"] != zero["init_seed"] and init.iloc[0]["data_seed"] == zero["data_seed"]
    replica = rows[rows["vary"] == "replicate"].set_index("arm")["test_loss"]
    ordinary0 = rows[(rows["vary"] == "") & (rows["seed"] == 0)].set_index("arm")["test_loss"]
    assert (replica == ordinary0.loc[replica.index]).all()  # identical seeds: bit-identical on CPU
    report = json.loads(cli("report", "--results", str(tmp_path / "r"), "--format", "json", check=True).stdout)
    study = report["sweeps"][0]
    assert study["kind"] == "noise study" and study["replicates_identical"] is True
    assert {c["source"] for c in study["components"]["baseline"]} == {"init", "data", "dropout", ALL, REPLICATE}
    assert [d["seeds"] for d in study["detectable"]] == [3, 5, 10] and study["detectable_paired"] is True
    # the same study with one planned run still missing: interim, said before its shares (round 3 left it silent)
    from harness.report.compare import build_noise_report
    from harness.report.section import ReportOptions
    from harness.report.outcomes import load_store, resolve_outcomes

    store = load_store(tmp_path / "r")
    planned = store.planned[study["sweep"]] + [{"run_id": "baseline-s7-missing", "arm": "baseline", "seed": 7}]
    rep = build_noise_report(resolve_outcomes(store.runs), study["sweep"], ReportOptions(), store.noise[study["sweep"]],
                             planned)
    assert rep.notes[0].startswith("INCOMPLETE: 1 of 13 planned runs have no result yet (baseline seed 7)")
    from rich.console import Console

    console = Console(record=True, width=200)
    from harness.report.render import render_noise_terminal

    render_noise_terminal(rep, console)
    assert console.export_text().startswith("note: INCOMPLETE: 1 of 13")
    cli("report", "--results", str(tmp_path / "r"), "--out", str(tmp_path / "noise.md"), check=True)
    text = (tmp_path / "noise.md").read_text()
    assert "Where baseline's seed noise comes from" in text and "What pairing cancels" in text
    assert (tmp_path / "noise_noise.png").exists()
    again = cli(*args, check=True).stdout  # resumable: nothing runs twice
    assert again.count("already in the store") == 12


def test_sub_seeds_by_hand_are_recorded(tmp_path, small_corpus):
    data = ["--set", f"data={small_corpus}"]
    common = ["run", "--preset", "micro", "--seed", "3", "--tokens", "2000", *data, "--results", str(tmp_path)]
    assert invoke(*common, "--vary", "data")[0] == 0
    assert invoke(*common, "--init-seed", "1234")[0] == 0
    rows = pd.read_parquet(tmp_path / "runs.parquet").set_index("vary")
    ordinary = invoke("run", "--preset", "micro", "--seed", "0", "--tokens", "2000", *data, "--results",
                      str(tmp_path / "o"))
    zero = pd.read_parquet(tmp_path / "o" / "runs.parquet").iloc[0]
    assert ordinary[0] == 0 and rows.loc["data", "init_seed"] == zero["init_seed"]  # held at seed 0's
    assert rows.loc["data", "data_seed"] != zero["data_seed"] and rows.loc["data", "dropout_seed"] == zero["dropout_seed"]
    fixed = rows.loc[""]
    assert fixed["init_seed"] == 1234 and "-s3-" in fixed["run_id"]


@pytest.mark.parametrize("args, message", [
    (["noise", "--seeds", "1"], "--seeds must be >= 2"),
    (["noise", "--replicates", "0"], "--replicates must be from 1 to 1000"),
    (["noise", "--arm", "baseline"], "--arm baseline"),
    (["noise", "--arm", "qkv_bais"], "did you mean 'qkv_bias'"),
    (["run", "--vary", "weights"], "--vary 'weights': allowed: init, data, dropout"),
    (["run", "--init-seed", "-1"], "--init-seed -1"),
    (["sweep", "qkv_bias", "--vary", "init", "--init-seed", "3"], "contradict"),
])
def test_bad_noise_input(tmp_path, args, message):
    proc = cli(*args, "--results", str(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
