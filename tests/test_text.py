"""The test set is a sample too (harness.stats.text, harness.report.text): the final evaluation's
per-unit sums (documents or blocks), recorded compactly and adding up to the test loss exactly;
the two-way split of a paired difference's uncertainty into seeds and test text, against
statsmodels' ANOVA and by simulation (each part unbiased, the interval covering); the report's
section end to end, and an old store that lacks the sums."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from statsmodels.formula.api import ols

from conftest import invoke
from harness.data.batches import BLOCKS, MAX_UNITS, eval_batches, evaluation_units
from harness.stats.text import FLOOR_FACTOR, MIN_SEEDS, run_text_se, signal_to_noise, split_uncertainty
from harness.store.record import pack_units, unpack_units

MICRO = ["--preset", "micro"]
FIXTURE = Path(__file__).parent / "fixtures" / "store-v0"


# ----------------------------------------------------------------------------- units


def test_units_are_documents_grouped_documents_or_blocks():
    eot = 9
    docs = [np.full(n, 1 + i % 5) for i, n in enumerate(np.arange(40) % 7 + 3)]
    tokens = np.concatenate([np.append(d, eot) for d in docs])[:-1]  # eot between documents, as corpora join
    units, n, kind = evaluation_units(tokens, eot)
    assert n == 40 and kind == "40 documents" and units.max() == 39
    first_eot = int(np.flatnonzero(tokens == eot)[0])
    assert units[first_eot] == 0 and units[first_eot + 1] == 1  # an eot belongs to the document it ends
    assert (np.diff(units) >= 0).all()
    many = np.concatenate([np.append(np.full(3, 1), eot) for _ in range(3000)])
    units, n, kind = evaluation_units(many, eot)
    assert n == MAX_UNITS and units.max() == MAX_UNITS - 1 and "of 3,000" in kind and (np.diff(units) >= 0).all()
    few = np.concatenate([np.full(5000, 2), [eot], np.full(5000, 3)])
    units, n, kind = evaluation_units(few, eot)
    assert n == BLOCKS and "blocks" in kind and "2 documents" in kind
    assert np.bincount(units).min() >= len(few) // BLOCKS  # equal blocks


def test_unit_sums_pack_compactly_and_damage_reads_as_missing():
    sums, tokens = [1.5, 2.25, math.pi], [3, 4, 5]
    packed = pack_units(sums, tokens)
    assert unpack_units(*packed) == (sums, tokens)
    assert unpack_units("", "") is None and unpack_units(packed[0], packed[1][:-4]) is None
    assert unpack_units("not base64!", packed[1]) is None
    assert len(pack_units([0.0] * 1024, [0] * 1024)[0]) < 11_000


def test_eval_batches_positions_cover_every_target_once():
    tokens = np.arange(1000) % 50
    seen = np.concatenate([b[2].flatten().numpy() for b in eval_batches(tokens, 16, 4, positions=True)])
    assert sorted(seen) == list(range(1, 1000))


# ----------------------------------------------------------------------------- the split


def simulate(rng, S, U, sa, sb, se):
    return (sa * rng.standard_normal(S)[:, None] + sb * rng.standard_normal(U)[None, :]
            + se * rng.standard_normal((S, U)))


def test_the_split_is_the_crossed_anova_of_statsmodels_for_equal_units():
    rng = np.random.default_rng(3)
    S, U = 4, 12
    D = simulate(rng, S, U, 0.02, 0.01, 0.015) + 0.01
    x = split_uncertainty(D, np.ones(U))
    frame = pd.DataFrame([(s, u, D[s, u]) for s in range(S) for u in range(U)], columns=["seed", "unit", "d"])
    table = sm.stats.anova_lm(ols("d ~ C(seed) + C(unit)", frame).fit())
    ms = table["mean_sq"]
    assert x.diff == pytest.approx(D.mean())
    assert x.se_seed ** 2 == pytest.approx(ms["C(seed)"] / (S * U))
    assert x.se ** 2 == pytest.approx((ms["C(seed)"] + ms["C(unit)"] - ms["Residual"]) / (S * U))
    assert x.inter_var / S == pytest.approx(ms["Residual"] / (S * U))
    dfs = table["df"]
    parts = [ms["C(seed)"] / dfs["C(seed)"] * ms["C(seed)"], ms["C(unit)"] ** 2 / dfs["C(unit)"],
             ms["Residual"] ** 2 / dfs["Residual"]]
    assert x.df == pytest.approx((ms["C(seed)"] + ms["C(unit)"] - ms["Residual"]) ** 2 / sum(parts))
    assert x.floor == pytest.approx(FLOOR_FACTOR * x.se_text) and FLOOR_FACTOR == pytest.approx(2.8016, abs=1e-4)
    with pytest.raises(ValueError, match=f"at least {MIN_SEEDS} seeds"):
        split_uncertainty(D[:2], np.ones(U))


def coverage_and_bias(rng, reps, S, U, sa, sb, se, equal):
    w = np.ones(U) if equal else rng.uniform(0.3, 3.0, U)
    w = w / w.sum()
    W = float((w ** 2).sum())
    covered, parts = 0, []
    for _ in range(reps):
        x = split_uncertainty(simulate(rng, S, U, sa, sb, se), w)
        covered += x.low <= 0 <= x.high
        parts.append((x.seed_var, x.text_var, x.inter_var))
    truth = np.array([sa ** 2 + W * se ** 2, W * sb ** 2, W * se ** 2])
    mean, sem = np.mean(parts, axis=0), np.std(parts, axis=0, ddof=1) / math.sqrt(reps)
    return covered / reps, mean, sem, truth


# (seeds, units, seed sd, unit sd, interaction sd, equal units): seeds dominating, text dominating, balanced
DESIGNS_FAST = [(5, 64, 0.01, 0.004, 0.02, True), (3, 32, 0.002, 0.01, 0.01, False)]
DESIGNS_SLOW = [(5, 64, 0.01, 0.01, 0.03, True), (3, 32, 0.02, 0.005, 0.02, False), (8, 200, 0.005, 0.02, 0.05, False),
                (10, 1024, 0.003, 0.003, 0.05, False), (4, 64, 0.003, 0.01, 0.02, True), (6, 48, 0.01, 0.0, 0.02, True)]


def check_design(design, reps, rng_seed):
    cover, mean, sem, truth = coverage_and_bias(np.random.default_rng(rng_seed), reps, *design)
    assert 0.93 <= cover <= 0.97, (design, cover)
    assert np.all(np.abs(mean - truth) <= 4 * sem + 1e-12), (design, mean, truth, sem)


@pytest.mark.parametrize("design", DESIGNS_FAST)
def test_the_two_way_interval_covers_and_each_part_is_unbiased(design):
    check_design(design, 2000, 7)


@pytest.mark.slow
@pytest.mark.parametrize("design", DESIGNS_FAST + DESIGNS_SLOW)
def test_the_two_way_interval_covers_and_each_part_is_unbiased_slow(design):
    check_design(design, 20000, 11)


def test_one_runs_text_se_and_the_signal_to_noise_ratio():
    rng = np.random.default_rng(0)
    x = rng.normal(3.0, 0.2, 400)
    assert run_text_se(x, np.ones(400)) == pytest.approx(x.std(ddof=1) / 20)
    assert math.isnan(run_text_se([1.0], [1.0]))
    assert signal_to_noise([3.0, 3.1, 2.95], 0.05) == pytest.approx(3.0)
    assert math.isnan(signal_to_noise([3.0], 0.05)) and math.isnan(signal_to_noise([3.0, 3.1], 0.0))


# ----------------------------------------------------------------------------- end to end


def test_a_sweep_reports_the_test_text_beside_the_seeds(tmp_path, small_corpus):
    results = tmp_path / "r"
    code, out, err = invoke("sweep", "qkv_bias", "no_dropout", "--seeds", "3", *MICRO, "--tokens", "4096", "--data",
                            str(small_corpus), "--results", str(results))
    assert code == 0, out + err
    rows = pd.read_parquet(results / "runs.parquet")
    for r in rows.itertuples():
        sums, tokens = unpack_units(r.unit_loss_sums, r.unit_tokens)
        assert len(sums) == BLOCKS and sum(tokens) == r.test_tokens  # the small corpus's test split: one text
        assert sum(sums) / sum(tokens) == pytest.approx(r.test_loss, rel=1e-12)
        assert "blocks" in r.test_units
    code, out, err = invoke("report", "--results", str(results), "--out", f"{tmp_path / 'rep'}/", "--no-plots")
    assert code == 0 and "test text: qkv_bias: diff " in out and "CI over both" in out, out + err
    md = next((tmp_path / "rep").glob("*.md")).read_text()
    assert "## The test set is a sample too" in md and "SE test text" in md and "Signal-to-noise" in md
    assert "Where no\\_dropout helps" in md and "dominate" in md and "- test text:" in md
    code, out, _ = invoke("report", "--results", str(results), "--format", "json")
    text = json.loads(out)["sweeps"][0]["test_text"]
    assert text["n_units"] == BLOCKS and "blocks" in text["units"] and text["dominance"]
    arm = next(a for a in text["arms"] if a["arm"] == "qkv_bias")
    assert arm["seeds"] == 3 and arm["low"] <= arm["diff"] <= arm["high"] and arm["se"] >= arm["se_seed"]
    assert len(text["units_where_it_helps"]["qkv_bias"]) == 3
    # where it runs changes nothing: two processes give the same unit sums to float tolerance
    code, out, err = invoke("run", "baseline", "--seed", "0", *MICRO, "--tokens", "4096", "--data", str(small_corpus),
                            "--nproc", "2", "--results", str(tmp_path / "two"))
    assert code == 0, out + err
    two = pd.read_parquet(tmp_path / "two" / "runs.parquet").iloc[0]
    one = rows[(rows["arm"] == "baseline") & (rows["seed"] == 0)].iloc[0]
    a, b = unpack_units(one.unit_loss_sums, one.unit_tokens), unpack_units(two.unit_loss_sums, two.unit_tokens)
    assert a[1] == b[1] and np.allclose(a[0], b[0], rtol=1e-5)


def test_an_old_store_without_unit_sums_still_reports_and_says_so(tmp_path):
    shutil.copytree(FIXTURE, tmp_path / "old")
    code, out, err = invoke("report", "--results", str(tmp_path / "old"), "--format", "json")
    assert code == 0, out + err
    text = json.loads(out)["sweeps"][0]["test_text"]
    assert "no run has per-unit test sums" in text["note"] and text["arms"] == []


def test_a_test_text_part_estimated_at_zero_reads_not_detected_not_a_zero_floor():
    """The unbiased test-text variance falls below zero by chance where the units differ no more
    than the seeds' noise explains; it is truncated at zero, and the report says 'not detected'
    instead of an SE of 0.000000 and a floor of 0 nats ('at most 0 nats')."""
    from harness.report.text import text_line
    from harness.report.text import COLUMNS, NOT_DETECTED, TextReport

    rng = np.random.default_rng(3)
    D = next(d for d in (simulate(rng, 5, 40, 0.01, 0.0, 0.002) for _ in range(50))
             if split_uncertainty(d, np.full(40, 1 / 40)).text_var < 0)
    split = split_uncertainty(D, np.full(40, 1 / 40))
    assert split.se_text == 0 and split.floor == 0
    row = {"arm": "qkv_bias", "seeds": 5, "diff": split.diff, "se_seed": split.se_seed, "se_text": split.se_text,
           "se": split.se, "df": split.df, "low": split.low, "high": split.high, "floor": split.floor,
           "text_share": split.text_share, "dominant": split.dominant, "seeds_for_text_to_dominate": math.inf,
           "note": ""}
    report = TextReport(units="blocks", n_units=40, table=pd.DataFrame([row], columns=COLUMNS))
    line = text_line(next(report.table.itertuples()), "95%")
    assert f"SE test text {NOT_DETECTED}" in line and f"floor {NOT_DETECTED}" in line and "0.000000" not in line
    sentence = report.dominance()
    assert "not detected" in sentence and "at most 0 nats" not in sentence


def test_edge_inputs_are_refused_or_read_as_no_variance():
    """One NaN cell once made every figure NaN with df = inf, a negative weight was dropped silently
    and rounding picked the dominant source of a constant D."""
    D = np.random.default_rng(0).normal(0, 0.01, (4, 6))
    w = np.full(6, 1 / 6)
    bad = D.copy()
    bad[1, 2] = math.nan
    for diffs, weights, why in [(bad, w, "NaN"), (D, np.r_[-0.1, w[1:] + 0.02], "zero or more"),
                                (D, w[:5], "one weight per unit")]:
        with pytest.raises(ValueError, match=why):
            split_uncertainty(diffs, weights)
    bad[:, 2] = math.nan  # a unit without tokens may hold NaN: it is dropped
    assert math.isfinite(split_uncertainty(bad, np.r_[w[:2], 0.0, w[3:]]).se)
    flat = split_uncertainty(np.full((4, 6), 0.0123), w)
    assert flat.se_seed == flat.se_text == flat.se == 0 and flat.dominant == "neither"
    assert math.isnan(flat.low) and math.isnan(flat.high)  # as the t test: no interval without variance
