"""`harness ladder` (harness.planning.ladder, harness.stats.ladder, harness.report.ladder): the family
of sizes and its per-rung learning rate and batch, the trend's error rates by simulation, the labels,
a micro ladder end to end with its report, an unfinished rung, and a dry run for gpt2-small."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import invoke
from harness.core import config as cfgmod
from harness.core.errors import UserError
from harness.planning.ladder import LadderRequest, Size, family_size, parse_sizes, rung_scale
from harness.report.ladder import across_rungs
from harness.stats.ladder import LABELS, Trend, label, trend


def simulate(design, sims: int, slope: float, seed: int):
    """(false-positive or rejection rate of the slope test, coverage of the prediction at 1,000x
    the largest rung) for `sims` ladders of `design` = (rungs, pairs, sds) with a known line."""
    rungs, pairs, sds = design
    rng = np.random.default_rng(seed)
    params = np.geomspace(2e4, 1.6e5, rungs)
    x = np.log2(params)
    target = x[-1] + math.log2(1000)
    rejected = covered = 0
    for i in range(sims):
        truth = -0.01 + slope * (x - x[0])
        d = [rng.normal(mu, sd, pairs) for mu, sd in zip(truth, sds)]
        t = trend([a.mean() for a in d], [a.var(ddof=1) for a in d], [pairs] * rungs, x, target,
                  resamples=999, seed=i)
        rejected += t.p_slope < 0.05
        covered += t.prediction_low <= -0.01 + slope * (target - x[0]) <= t.prediction_high
    return rejected / sims, covered / sims


FAST_DESIGNS = [(4, 5, np.geomspace(0.02, 0.008, 4)), (3, 3, [0.01, 0.01, 0.01])]
SLOW_DESIGNS = FAST_DESIGNS + [(4, 3, np.geomspace(0.03, 0.005, 4)), (3, 10, [0.02, 0.01, 0.005]),
                               (6, 4, np.geomspace(0.02, 0.01, 6)), (2, 5, [0.01, 0.02])]


@pytest.mark.parametrize("design", FAST_DESIGNS, ids=lambda d: f"{d[0]}rungs-{d[1]}pairs")
def test_slope_test_holds_its_error_rate_and_the_prediction_covers(design):
    """Under an effect constant in size the slope test rejects at 0.03-0.07 (alpha 0.05), and under
    a known line in log parameters the prediction's interval covers it at 0.93-0.97, although the
    weights are estimated from a few seeds (a plain weighted t test rejects about 10%)."""
    false_positive, _ = simulate(design, 1500, 0.0, 1)
    _, coverage = simulate(design, 1500, 0.004, 2)
    assert 0.03 <= false_positive <= 0.07
    assert 0.93 <= coverage <= 0.97


@pytest.mark.slow
@pytest.mark.parametrize("design", SLOW_DESIGNS, ids=lambda d: f"{d[0]}rungs-{d[1]}pairs")
def test_slope_test_and_prediction_error_rates_many_designs(design):
    false_positive, _ = simulate(design, 6000, 0.0, 3)
    _, coverage = simulate(design, 6000, -0.003, 4)
    assert 0.03 <= false_positive <= 0.07
    assert 0.93 <= coverage <= 0.97


def test_slope_test_finds_a_real_trend():
    rejected, _ = simulate((4, 5, [0.005] * 4), 300, 0.004, 5)
    assert rejected > 0.8


def make(slope, p_slope, pooled, p_pooled, smallest, largest) -> Trend:
    return Trend(3, slope, math.nan, math.nan, p_slope, pooled, math.nan, math.nan, p_pooled, math.nan,
                 smallest, largest, math.nan, math.nan, math.nan)


def test_labels_follow_their_rules():
    holds = make(0.0, 0.6, -0.01, 0.001, (-0.01, -0.02, -0.005), (-0.01, -0.02, -0.005))
    assert label(holds, [(-0.02, -0.001)], 0.05) == "holds"
    assert label(make(0.0, 0.6, -0.001, 0.4, (0, -1, 1), (0, -1, 1)), [], 0.05) == "undetermined"
    grows = make(-0.004, 0.001, -0.02, 0.001, (-0.005, -0.01, 0.001), (-0.03, -0.04, -0.02))
    assert label(grows, [], 0.05) == "grows"
    assert label(grows, [], 0.05, p_slope=0.2) == "holds"  # the slope as tested (Holm) decides
    shrinks = make(0.004, 0.001, -0.02, 0.001, (-0.03, -0.04, -0.02), (-0.005, -0.01, 0.001))
    assert label(shrinks, [], 0.05) == "shrinks"
    flips = make(0.01, 0.001, 0.0, 0.9, (-0.03, -0.04, -0.02), (0.03, 0.02, 0.04))
    assert label(flips, [], 0.05) == "reverses"
    assert label(None, [(-0.03, -0.01), (0.01, 0.02)], 0.05) == "reverses"  # two rungs, opposite and clear
    assert label(None, [(-0.03, 0.01)], 0.05) == "undetermined"
    assert set(LABELS) == {"holds", "grows", "shrinks", "reverses", "undetermined"}


def test_the_family_holds_head_size_and_width_per_layer():
    tiny = cfgmod.resolve("tiny").model  # 2 layers x 48, 4 heads of 12
    assert [family_size(tiny, h) for h in (2, 4, 5, 6)] == [Size(1, 24, 2), Size(2, 48, 4), Size(3, 60, 5),
                                                           Size(3, 72, 6)]
    small = cfgmod.resolve("gpt2-small").model
    assert family_size(small, 12) == Size(12, 768, 12)  # the preset is a member of its own family
    assert parse_sizes("2x48, 1x24", tiny) == [Size(1, 24, 2), Size(2, 48, 4)]
    for bad, says in (("2x50", "multiple of the preset's head size 12"), ("2by48", "LAYERSxWIDTH"),
                      ("1x24,1x24", "twice")):
        with pytest.raises(UserError, match=says):
            parse_sizes(bad, tiny)


def test_learning_rate_and_batch_scale_with_parameters():
    scale = rung_scale(Size(1, 24, 2), 84096 // 8, 84096, 32)
    assert dict(scale.sizes)["global_batch"] == 8  # 32 x (1/8)^(2/3) = 8
    assert scale.lr_factor == pytest.approx(2.0)  # (1/8)^(-1/3)
    cfg = cfgmod.resolve("tiny", "lr_schedule", {}, None, scale)  # an arm's own lr is scaled too
    assert cfg.train.lr == pytest.approx(0.0014 * 2.0) and cfg.model.emb_dim == 24 and cfg.train.global_batch == 8
    with pytest.raises(UserError, match="--set sets emb_dim"):
        cfgmod.resolve("tiny", "baseline", {"emb_dim": 64}, None, scale)


def test_ladder_requests_are_checked():
    for kwargs, says in (({"arms": ("baseline",)}, "at least one intervention"), ({"rungs": 1}, "2 to 12"),
                         ({"smallest": 2.0, "largest": 1.0}, "must be below"), ({"smallest": 0.0}, "--smallest")):
        with pytest.raises(UserError, match=says):
            LadderRequest(**({"arms": ("qkv_bias",)} | kwargs)).check()


def test_differences_across_rungs_beyond_size_are_named():
    same = {"baseline": {"vocab_size": "257", "drop_rate": "0.1"}, "qkv_bias": {"qkv_bias": "true"}}
    other = {"baseline": {"vocab_size": "257", "drop_rate": "0.0"}, "qkv_bias": {"qkv_bias": "true"}}
    assert across_rungs({"a": same, "b": same}) == {}
    found = across_rungs({"a": same, "b": other})
    assert list(found) == ["baseline"] and "drop_rate differs across rungs" in found["baseline"][0]


def test_dry_run_for_gpt2_small_names_every_rung(tmp_path):
    code, out, err = invoke("ladder", "qkv_bias", "--preset", "gpt2-small", "--rungs", "4", "--smallest", "0.125",
                            "--set", "allow_repeat=true", "--dry-run", "--results", str(tmp_path))
    assert code == 0, err
    assert "163,009,536" in out and "3,260,252,160" in out  # the preset is the top rung, on its own budget
    assert out.count("ladder-gpt2-small-qkv_bias-") >= 4
    assert "Porian et al. 2024" in out and "estimated time" in out
    assert not (tmp_path / "ladders").exists()  # a dry run writes nothing


def test_size_options_contradicting_each_other_are_refused(tmp_path):
    code, _, err = invoke("ladder", "qkv_bias", "--preset", "micro", "--sizes", "1x16,1x32", "--rungs", "3",
                          "--dry-run", "--results", str(tmp_path))
    assert code == 2 and "give one or the other" in err
    code, _, err = invoke("ladder", "qkv_bias", "--preset", "micro", "--set", "n_layers=3", "--dry-run",
                          "--results", str(tmp_path))
    assert code == 2 and "n_layers" in err


@pytest.fixture(scope="module")
def micro_ladder(tmp_path_factory, small_corpus):
    """A micro ladder run end to end: 3 rungs, 2 seeds, qkv_bias."""
    results = tmp_path_factory.mktemp("ladder")
    code, out, err = invoke("ladder", "qkv_bias", "--preset", "micro", "--sizes", "1x16,1x32,1x48", "--seeds", "2",
                            "--set", "tokens_per_param=0.5", "--data", str(small_corpus), "--jobs", "1",
                            "--name", "lad", "--results", str(results))
    assert code == 0, err + out
    return results


def test_micro_ladder_end_to_end(micro_ladder, tmp_path):
    record = json.loads((micro_ladder / "ladders" / "lad.json").read_text())
    assert [r["size"] for r in record["rungs"]] == ["1x16", "1x32", "1x48"]
    code, out, err = invoke("report", "--results", str(micro_ladder), "--sweep", "lad", "--format", "json")
    assert code == 0, err
    (lad,) = json.loads(out)["ladders"]
    assert [r["size"] for r in lad["rungs"]] == ["1x16", "1x32", "1x48"]
    assert all(r["pairs"] == 2 and r["status"] == "complete" for r in lad["rungs"])
    (arm,) = lad["trends"]
    assert arm["label"] in LABELS and arm["rungs"] == 3 and arm["slope_low"] <= arm["slope"] <= arm["slope_high"]
    assert lad["target"] == {"name": "micro", "params": 30144, "extrapolation": False}
    code, out, err = invoke("report", "--results", str(micro_ladder), "--out", str(tmp_path) + "/")
    assert code == 0, err
    md = (tmp_path / "lad.md").read_text()
    assert "## Trend per arm" in md and "per doubling of parameters" in md and (tmp_path / "lad_ladder.png").exists()
    assert (tmp_path / "lad-1x32.md").exists()  # every rung is an ordinary sweep with its own report
    import harness.api as hx  # the API's report holds the same trend and rungs, as DataFrames

    report = hx.report(micro_ladder, sweep="lad")
    trend, rungs = report.ladder_trend(), report.ladder_rungs("lad")
    assert list(trend["arm"]) == ["qkv_bias"] and trend["slope"].iloc[0] == pytest.approx(arm["slope"])
    assert list(rungs["size"]) == ["1x16", "1x32", "1x48"]
    with pytest.raises(UserError, match="no ladder 'other' in this report: it holds lad"):
        report.ladder_trend("other")


def test_an_unfinished_rung_is_shown_and_never_dropped(micro_ladder, tmp_path):
    record = json.loads((micro_ladder / "ladders" / "lad.json").read_text())
    record["rungs"].append(dict(record["rungs"][-1], sweep="lad-2x64", size="2x64", params=120000))
    (micro_ladder / "ladders" / "more.json").write_text(json.dumps(record | {"ladder": "more"}))
    try:
        code, out, err = invoke("report", "--results", str(micro_ladder), "--sweep", "more", "--format", "json")
    finally:
        (micro_ladder / "ladders" / "more.json").unlink()
    assert code == 0, err
    (lad,) = json.loads(out)["ladders"]
    assert lad["rungs"][-1]["status"] == "not started" and lad["rungs"][-1]["pairs"] == 0
    (arm,) = lad["trends"]
    assert arm["label"].startswith("interim: ") and "rung 2x64 not started" in arm["note"]


def test_a_ladder_of_another_design_under_the_same_name_is_refused(micro_ladder, small_corpus):
    code, _, err = invoke("ladder", "qkv_bias", "--preset", "micro", "--sizes", "1x16,1x48", "--seeds", "2",
                          "--set", "tokens_per_param=0.5", "--data", str(small_corpus), "--name", "lad",
                          "--dry-run", "--results", str(micro_ladder))
    assert code == 2 and "would change its design" in err


def test_the_trend_and_the_rungs_follow_report_baseline(micro_ladder, tmp_path):
    """report --baseline qkv_bias: every rung's difference and the trend are baseline - qkv_bias (the
    trend kept qkv_bias - baseline before), and no note suggests extending an arm that --extend-baseline
    does not extend."""
    def ladder(*extra: str) -> dict:
        code, out, err = invoke("report", "--results", str(micro_ladder), "--sweep", "lad", "--format", "json",
                                "--out", str(tmp_path) + "/", *extra)
        assert code == 0, err
        return json.loads(out)["ladders"][0]

    usual, swapped = ladder(), ladder("--baseline", "qkv_bias")
    diffs = {r["size"]: r["diff"] for r in usual["rungs"] if r["arm"] == "qkv_bias"}
    assert {r["size"]: r["diff"] for r in swapped["rungs"] if r["arm"] == "baseline"} == \
        pytest.approx({size: -d for size, d in diffs.items()})
    assert [t["arm"] for t in swapped["trends"]] == ["baseline"]
    (usual_trend,), (swapped_trend,) = usual["trends"], swapped["trends"]
    if usual_trend.get("slope") is not None and usual_trend["slope"] == usual_trend["slope"]:
        assert swapped_trend["slope"] == pytest.approx(-usual_trend["slope"])
    for s in json.loads(invoke("report", "--results", str(micro_ladder), "--format", "json", "--out",
                               str(tmp_path) + "/", "--baseline", "qkv_bias")[1])["sweeps"]:
        assert all("--extend-baseline" not in (a.get("note") or "") for a in (s.get("worth") or {}).get("arms", []))


def test_a_trend_refuses_a_nan_rung_rather_than_call_it_a_trend():
    """A NaN mean once gave p = 1/4001 for every test, which the label turns into "shrinks"."""
    from harness.stats.ladder import trend

    good = dict(variances=[1e-4, 1e-4, 1e-4], pairs=[5, 5, 5], log2_params=[20, 21, 22], log2_target=27)
    assert math.isfinite(trend([-0.01, -0.008, -0.006], **good, resamples=200).p_slope)
    for means, extra, why in [([-0.01, math.nan, -0.006], {}, "finite"), ([-0.01, -0.008], {}, "one mean"),
                              ([-0.01, -0.008, -0.006], {"log2_target": math.nan}, "finite")]:
        with pytest.raises(ValueError, match=why):
            trend(means, **(good | extra), resamples=200)
