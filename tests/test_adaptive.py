"""Adaptive sweeps (`harness sweep --until-decided`) and what pairing bought.

By simulation, through the sweep's own decision rule (harness.stats.sequential.decide): under null data
the family-wise false-positive rate stays at alpha although every seed is looked at; the interval at
the stopping time covers the true difference; on a realistic sweep the adaptive design makes at
most 60% of the fixed design's runs with no arm's power more than 5 points below the fixed design's
(Holm). The large versions are marked slow; tests/bench/adaptive.py prints the figures. Then the
variance-ratio interval's coverage, and an adaptive sweep end to end on the micro preset.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import cli
from harness.stats.pairing import pairing_gain
from harness.stats.sequential import AT_CAP, BETTER, EQUIVALENT, UNDECIDED, WORSE, boundaries, decide, simulate

ALPHA = 0.05
# The seed author's one-seed differences from the baseline (REFERENCE.md), paired noise 0.002-0.007,
# three arms near the detection limit and two null arms
REALISTIC = pd.DataFrame({
    "arm": ["no_amp", "gradient_clipping", "qkv_bias", "weight_decay_gpt2", "no_dropout", "lr_schedule", "weight_tying",
            "stacked", "near_0.002", "near_0.0035", "near_0.005", "null_a", "null_b"],
    "effect": [-0.012558, -0.013209, -0.022141, -0.048586, -0.050244, -0.089609, 0.182779, -0.113765, -0.002, -0.0035,
               -0.005, 0.0, 0.0],
    "noise_sd": [0.002, 0.007, 0.004, 0.005, 0.003, 0.006, 0.007, 0.004, 0.004, 0.004, 0.004, 0.004, 0.004],
})


def mc(p: float, n: int) -> float:
    """Three Monte Carlo standard errors of a rate p estimated from n simulations."""
    return 3 * math.sqrt(p * (1 - p) / n)


def false_decisions(states: np.ndarray) -> float:
    return float(np.isin(states, [BETTER, WORSE]).any(axis=1).mean())


@pytest.mark.parametrize("sweeps", [2000, pytest.param(20000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("margin", [None, 0.5])
def test_null_data_keeps_the_family_wise_error_at_alpha(sweeps, margin):
    sim = simulate(np.zeros(5), 1.0, ALPHA, 3, 20, sweeps, margin=margin, seed=11)
    assert false_decisions(sim["state"]) <= ALPHA + mc(ALPHA, sweeps)


@pytest.mark.parametrize("sweeps", [2000, pytest.param(20000, marks=pytest.mark.slow)])
def test_the_interval_at_the_stopping_time_covers_the_true_difference(sweeps):
    effects = np.array([-0.02, -0.005, 0.0, 0.003, 0.01])
    sim = simulate(effects, 0.004, ALPHA, 3, 20, sweeps, margin=0.004, seed=12)
    covered = (sim["low"] <= effects) & (effects <= sim["high"])
    assert covered.mean(axis=0).min() >= 1 - ALPHA - mc(ALPHA, sweeps)
    # an "equivalent" verdict is a claim too: never for the 0.01 arm, whose true difference is outside the margin
    assert (sim["state"][:, 4] == EQUIVALENT).mean() <= ALPHA / 5 + mc(ALPHA / 5, sweeps)


@pytest.mark.parametrize("sweeps", [1000, pytest.param(10000, marks=pytest.mark.slow)])
def test_a_realistic_sweep_saves_runs_without_losing_power(sweeps):
    effects, sds = REALISTIC["effect"].to_numpy(), REALISTIC["noise_sd"].to_numpy()
    sim = simulate(effects, sds, ALPHA, 3, 20, sweeps, seed=13)
    runs = sim["n"].sum(axis=1) + sim["n"].max(axis=1)  # the baseline runs as long as the longest arm
    fixed_runs = (1 + len(effects)) * 20
    assert runs.mean() <= 0.60 * fixed_runs
    right = np.where(effects < 0, sim["state"] == BETTER, np.where(effects > 0, sim["state"] == WORSE, False))
    fixed = sim["holm"] & (np.sign(sim["fixed_mean"]) == np.sign(effects)) & (effects != 0)
    assert (fixed.mean(axis=0) - right.mean(axis=0)).max() <= 0.05 + mc(0.5, sweeps)
    assert false_decisions(sim["state"][:, effects == 0]) <= ALPHA + mc(ALPHA, sweeps)


def test_boundaries_spend_little_early_and_approach_the_fixed_t_at_the_cap():
    c = boundaries(ALPHA, 3, 20)
    assert len(c) == 18 and np.all(np.diff(c) < 0) and c[0] > 30  # n = 3 pairs: only huge effects stop
    assert 2.09 < c[-1] < 2.09 * 1.12  # t_{0.975, 19} = 2.09: a little wider at the cap
    with pytest.raises(ValueError):
        boundaries(ALPHA, 5, 4)


def test_decisions_round_by_round_with_missing_pairs():
    """A failed run leaves a NaN: the arm is looked at when it has a new pair; the cap is the last round."""
    rng = np.random.default_rng(0)
    d = np.stack([-1.0 + 0.01 * rng.standard_normal(8), [0.3, -0.3, 0.25, -0.25, 0.2, -0.2, 0.1, -0.1]])[None]
    d[0, 0, 1] = np.nan
    got = decide(d, ALPHA, 3, 8)
    assert got["state"][0, 0] == BETTER and got["round"][0, 0] == 3 and got["n"][0, 0] == 3
    assert got["state"][0, 1] == AT_CAP and got["round"][0, 1] == -1
    partial = decide(d, ALPHA, 3, 8, rounds_done=3)
    assert partial["state"][0, 0] == UNDECIDED  # two pairs by round 3: no look yet


def test_short_constant_and_malformed_differences():
    """Fewer rounds than the cap read as not run; equal differences (zero variance) decide nothing
    and show no interval, as the t test gives none (they once decided 'worse' with a zero-width
    interval); a flat array is refused with its shape, not an unpacking error."""
    short = decide(np.array([[[-0.5, -0.52, -0.49, -0.51], [-0.5, 0.52, -0.49, 0.51]]]), ALPHA, 3, 8)
    assert list(short["state"][0]) == [BETTER, AT_CAP] and short["round"][0, 0] == 2
    for value in (0.1, 0.0):
        flat = decide(np.full((1, 1, 8), value), ALPHA, 3, 8, margin=0.01)
        assert flat["state"][0, 0] == AT_CAP and np.isnan(flat["low"][0, 0])
    with pytest.raises(ValueError, match="sweep, arm, round"):
        decide(np.zeros(8), ALPHA, 3, 8)


@pytest.mark.parametrize("sweeps", [2000, pytest.param(20000, marks=pytest.mark.slow)])
def test_the_variance_ratio_interval_covers_at_its_level(sweeps):
    rng = np.random.default_rng(5)
    n, rho = 6, 0.95
    seed_effect = rng.standard_normal((sweeps, n))
    a = math.sqrt(rho) * seed_effect + math.sqrt(1 - rho) * rng.standard_normal((sweeps, n))
    b = math.sqrt(rho) * seed_effect + math.sqrt(1 - rho) * rng.standard_normal((sweeps, n))
    true = 2 / (2 - 2 * rho)  # (var a + var b) / var(a - b)
    hits = [g.ratio_low <= true <= g.ratio_high for g in (pairing_gain(a[i], b[i]) for i in range(sweeps))]
    assert abs(np.mean(hits) - 0.95) <= mc(0.05, sweeps)


def test_pairing_gain_of_the_demo_figures():
    base = np.array([2.454911, 2.449202, 2.435022, 2.445530, 2.446322])
    arm = np.array([2.447399, 2.445290, 2.430571, 2.438479, 2.440121])
    g = pairing_gain(arm, base)
    assert g.n == 5 and 0.95 < g.correlation < 1 and g.variance_ratio > 10 and g.ratio_low < g.variance_ratio
    assert g.equivalent_seeds == pytest.approx(5 * g.variance_ratio) and "paired seeds are worth" in g.sentence()
    assert math.isnan(pairing_gain(arm[:2], base[:2]).variance_ratio)


ADAPTIVE_ARGS = ["sweep", "qkv_bias", "weight_tying", "--until-decided", "--min-seeds", "2", "--max-seeds", "4",
            "--preset", "micro", "--tokens", "3000"]


def test_an_adaptive_sweep_end_to_end(tmp_path, small_corpus):
    results = str(tmp_path / "r")
    ADAPTIVE = [*ADAPTIVE_ARGS, "--data", str(small_corpus)]
    plan = cli(*ADAPTIVE, "--dry-run", "--results", results, check=True).stdout
    assert "runs at most: 12" in plan and "runs expected: unknown" in plan
    out = cli(*ADAPTIVE, "--results", results, check=True).stdout
    assert "round 1:" in out and "round 2:" in out
    rows = pd.read_parquet(tmp_path / "r" / "runs.parquet")
    seeds = rows.groupby("arm")["seed"].nunique()
    assert seeds["baseline"] == max(seeds["qkv_bias"], seeds["weight_tying"]) <= 4
    again = cli(*ADAPTIVE, "--results", results, check=True).stdout  # stopped and started again: same decisions
    assert "already in the store" in again and len(pd.read_parquet(tmp_path / "r" / "runs.parquet")) == len(rows)
    last = lambda text: [ln for ln in text.splitlines() if ln.startswith("round ")][-1]  # noqa: E731
    assert last(again) == last(out)
    report = json.loads(cli("report", "--results", results, "--format", "json", check=True).stdout)
    adaptive = report["sweeps"][0]["adaptive"]
    assert adaptive["max_seeds"] == 4 and {a["arm"] for a in adaptive["arms"]} == {"qkv_bias", "weight_tying"}
    assert all(a["seeds"] + a["runs_saved"] == 4 for a in adaptive["arms"])
    text = report["sweeps"][0]["test_text"]  # the test text's uncertainty, adaptive sweeps alike
    assert text["n_units"] == 64 and all(a["note"] or a["se"] >= a["se_seed"] for a in text["arms"])
    status = json.loads(cli("status", "--results", results, "--json", check=True).stdout)
    assert set(next(iter(status.values()))["adaptive"]["arms"]) == {"qkv_bias", "weight_tying"}
    md = cli("report", "--results", results, "--out", str(tmp_path / "rep.md"), "--no-plots", check=True)
    text = (tmp_path / "rep.md").read_text()
    assert "Verdicts (adaptive sweep)" in text and "descriptive" in text and "Maurer" in text
    assert "What pairing bought" in text and md.returncode == 0


@pytest.mark.parametrize("args, message", [
    (["--until-decided", "--max-seeds", "2"], "--max-seeds 2 is below --min-seeds 3"),
    (["--until-decided", "--alpha", "1.5"], "--alpha 1.5"),
    (["--until-decided", "--alpha", "0"], "--alpha 0.0"),
    (["--margin", "0.01"], "--margin belongs to --until-decided"),
    (["--max-seeds", "5"], "--max-seeds belongs to --until-decided"),
    (["--until-decided", "--margin", "-1"], "--margin -1.0"),
    (["--until-decided", "--seeds", "5"], "drop --seeds"),
    (["--until-decided", "--min-seeds", "1"], "--min-seeds must be >= 2"),
])
def test_bad_adaptive_options(tmp_path, args, message):
    proc = cli("sweep", "qkv_bias", *args, "--results", str(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.slow  # tests/test_slurm_cluster.py runs an adaptive sweep round by round on a real Slurm in CI
def test_an_adaptive_sweep_through_the_job_launcher_goes_round_by_round(tmp_path):
    """--launcher local runs the Slurm path's code (submitit's local executor): one round of jobs at
    a time, each decided before the next is submitted."""
    out = cli("sweep", "weight_tying", "--until-decided", "--min-seeds", "2", "--max-seeds", "2", "--preset", "micro",
              "--tokens", "2000", "--launcher", "local", "--results", str(tmp_path), check=True).stdout
    assert out.index("round 1:") < out.index("started baseline seed 1") < out.index("round 2:")
    rows = pd.read_parquet(tmp_path / "runs.parquet")
    assert len(rows) == 4 and (rows["status"] == "completed").all()
