"""What an arm is worth (harness.stats.worth, harness.report.worth): held-out points along training,
recorded and resumable; under a constant learning rate a point at fewer tokens is exactly a shorter
run and an extended baseline continues the ordinary run (nothing trained twice); a decaying schedule
never lends its mid-run points; the compute multiplier's interval covers a known k; the report end
to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from conftest import cli, invoke, kill_mid_run
from harness.stats.worth import ABOVE, BELOW, IN_RANGE, crossing, multiplier, paired_curve

MICRO = ["--preset", "micro"]
WHOLE = ["--set", "heldout_tokens=0"]  # the points on the whole test split, as the test loss


def table(results, name="runs"):
    return pd.read_parquet(results / f"{name}.parquet")


def points(results, run_id=None) -> dict[int, float]:
    c = table(results, "curves")
    c = c[c["heldout_loss"].notna() & (c["run_id"] == run_id if run_id else True)]
    return dict(zip(c["step"], c["heldout_loss"]))


def test_heldout_points_are_recorded_resumable_and_change_no_training(tmp_path, small_corpus):
    args = ["run", *MICRO, "--tokens", "30000", "--data", str(small_corpus), "--set", "checkpoint_every=20"]
    cli(*args, "--results", str(tmp_path / "straight"), check=True)
    straight = points(tmp_path / "straight")
    assert len(straight) == 11 and max(straight) == 118  # the budget's step and 10 before it, log-spaced
    assert sorted(straight)[:3] == [4, 5, 7]
    assert kill_mid_run(args, tmp_path / "killed") < 118
    cli(*args, "--results", str(tmp_path / "killed"), check=True)
    assert points(tmp_path / "killed") == straight  # bit for bit after a kill and resume
    cli(*args, "--set", "heldout_points=0", "--results", str(tmp_path / "none"), check=True)
    assert points(tmp_path / "none") == {}
    assert table(tmp_path / "none").iloc[0]["test_loss"] == table(tmp_path / "straight").iloc[0]["test_loss"]
    row = table(tmp_path / "straight").iloc[0]
    assert row["heldout_tokens"] == 1024 and row["heldout_time_s"] > 0


def test_a_shorter_run_is_a_point_of_the_longer_one_and_an_extension_trains_nothing_twice(tmp_path, small_corpus):
    common = [*MICRO, "--data", str(small_corpus), *WHOLE]
    cli("run", *common, "--tokens", "4096", "--results", str(tmp_path / "short"), check=True)
    cli("run", *common, "--tokens", "8192", "--results", str(tmp_path / "long"), check=True)
    short = table(tmp_path / "short").iloc[0]
    assert points(tmp_path / "long")[16] == short["test_loss"]  # constant lr: step 16 of 32 is the 16-step run
    code, out, err = invoke("sweep", "qkv_bias", "--seeds", "1", *common, "--tokens", "4096", "--extend-baseline",
                            "2", "--results", str(tmp_path / "ext"))
    assert code == 0, out + err
    rows = table(tmp_path / "ext")
    ordinary = rows[(rows["arm"] == "baseline") & (rows["budget_factor"] == 1)].iloc[0]
    extended = rows[rows["budget_factor"] == 2].iloc[0]
    assert ordinary["test_loss"] == short["test_loss"]
    assert extended["test_loss"] == table(tmp_path / "long").iloc[0]["test_loss"]  # the 32-step run, exactly
    log = (tmp_path / "ext" / "runs" / extended["run_id"] / "log.txt").read_text()
    assert '"step": 17,' in log and '"step": 16,' not in log  # it continued the ordinary run: steps 17..32 only
    assert points(tmp_path / "ext", extended["run_id"])[16] == points(tmp_path / "ext", ordinary["run_id"])[16]


def test_a_decaying_schedule_never_lends_its_mid_run_points(tmp_path, small_corpus):
    common = ["sweep", "no_dropout", "--seeds", "2", *MICRO, "--tokens", "4096", "--data", str(small_corpus),
              "--set", "lr_schedule=cosine"]
    assert invoke(*common, "--results", str(tmp_path / "plain"))[0] == 0
    code, out, _ = invoke("report", "--results", str(tmp_path / "plain"), "--format", "json")
    worth = json.loads(out)["sweeps"][0]["worth"]
    assert code == 0 and "decays with the run's length" in worth["note"] and "--extend-baseline" in worth["note"]
    assert all(a["k"] is None for a in worth["arms"])
    code, out, err = invoke(*common, "--extend-baseline", "2", "--results", str(tmp_path / "ladder"))
    assert code == 0 and "runs at 0.5x, 0.707x, 1.41x, 2x the budget" in out, out + err
    factors = sorted(set(table(tmp_path / "ladder")["budget_factor"]))
    assert factors == [0.5, 0.707107, 1.0, 1.414214, 2.0]
    code, out, _ = invoke("report", "--results", str(tmp_path / "ladder"), "--format", "json")
    worth = json.loads(out)["sweeps"][0]["worth"]
    assert "final held-out points of baseline runs at 5 budgets" in worth["source"]
    assert worth["arms"][0]["k"] is not None


def test_crossing_and_its_range():
    t = np.array([1.0, 2.0, 4.0])
    y = np.array([3.0, 2.5, 2.0])
    at, state = crossing(t, y, 2.25)
    assert state == IN_RANGE and at == pytest.approx(math.sqrt(8))  # halfway in log tokens between 2 and 4
    assert crossing(t, y, 1.9) == (pytest.approx(math.nan, nan_ok=True), ABOVE)
    assert crossing(t, y, 3.5)[1] == BELOW
    k = multiplier({0: (t, y), 1: (t, y)}, {0: 2.25, 1: 2.3}, 2.0)
    ks = [crossing(t, y, v)[0] / 2.0 for v in (2.25, 2.3)]
    assert k.state == IN_RANGE and k.estimate == pytest.approx(math.sqrt(ks[0] * ks[1])) and k.low < k.estimate < k.high
    assert multiplier({0: (t, y), 1: (t, y)}, {0: 1.0, 1: 2.25}, 2.0).state == ABOVE
    curve = paired_curve({0: (t, y - 0.1), 1: (t, y - 0.2)}, {0: (t, y), 1: (t, y)})
    assert list(curve["mean"]) == pytest.approx([-0.15] * 3) and (curve["low"] < curve["mean"]).all()


def simulate_coverage(k: float, seeds: int, sims: int, seed: int) -> float:
    """Synthetic paired curves with a known k: the baseline's expected curve f(t) = 1.5 + 0.5 t^-0.3
    (a power law, the budget at t = 1, points as harness takes them and its 2x extension), a seed
    effect shared by arm and baseline (sd 0.01), each run's own offset (sd 0.003) and point noise
    (sd 0.0005); the arm's expected final loss f(k). Returns the interval's coverage of k."""
    rng = np.random.default_rng(seed)
    t = np.array(sorted({2 ** (-j / 2) for j in range(11)} | {2 ** 0.5, 2.0}))
    f = lambda x: 1.5 + 0.5 * x ** -0.3  # noqa: E731
    hits = 0
    for _ in range(sims):
        curves, targets = {}, {}
        for s in range(seeds):
            shared = rng.normal(0, 0.01)
            curves[s] = (t, f(t) + shared + rng.normal(0, 0.003) + rng.normal(0, 0.0005, len(t)))
            targets[s] = f(k) + shared + rng.normal(0, 0.003)
        m = multiplier(curves, targets, 1.0)
        hits += m.low <= k <= m.high
    return hits / sims


@pytest.mark.parametrize("sims", [1000, pytest.param(10000, marks=pytest.mark.slow)])
@pytest.mark.parametrize("seeds", [5, 10])
@pytest.mark.parametrize("k", [0.75, 1.3])
def test_the_multipliers_interval_covers_a_known_k(sims, seeds, k):
    assert 0.93 <= simulate_coverage(k, seeds, sims, seed=seeds * 100 + int(k * 10)) <= 0.97


def test_the_report_says_what_each_arm_is_worth(tmp_path, small_corpus):
    results = tmp_path / "r"
    code, out, err = invoke("sweep", "qkv_bias", "no_dropout", "--seeds", "3", *MICRO, "--tokens", "4096", "--data",
                            str(small_corpus), "--extend-baseline", "2", "--results", str(results))
    assert code == 0, out + err
    code, out, err = invoke("report", "--results", str(results), "--out", f"{tmp_path / 'rep'}/")
    assert code == 0 and "worth: qkv_bias: k = " in out, out + err
    md = next((tmp_path / "rep").glob("*.md")).read_text()
    assert "## What it is worth" in md and "compute multiplier k" in md and "Held-out loss along training" in md
    for plot in ("curves", "effect"):
        assert next((tmp_path / "rep").glob(f"*_{plot}.png")).stat().st_size > 10_000
    code, out, _ = invoke("report", "--results", str(results), "--format", "json")
    worth = json.loads(out)["sweeps"][0]["worth"]
    arm = next(a for a in worth["arms"] if a["arm"] == "no_dropout")
    assert arm["seeds"] == 3 and (arm["k"] is not None or "beyond" in arm["note"])
    assert worth["paired_curves"]["no_dropout"] and worth["paired_interval"].startswith("pointwise")
    assert {p["arm"] for p in worth["heldout_curves"]} == {"baseline", "qkv_bias", "no_dropout"}
    # without an extension an arm better than the baseline is "beyond the measured range", with the hint
    code, out, _ = invoke("sweep", "no_dropout", "--seeds", "2", *MICRO, "--tokens", "4096", "--data",
                          str(small_corpus), "--results", str(tmp_path / "plain"))
    code, out, _ = invoke("report", "--results", str(tmp_path / "plain"), "--format", "json")
    arm = json.loads(out)["sweeps"][0]["worth"]["arms"][0]
    assert arm["k"] is not None or "--extend-baseline 2" in arm["note"]


def test_points_on_different_subsets_of_the_test_split_give_no_multiplier(tmp_path, small_corpus):
    """heldout_tokens is a placement knob (the run is the same), but curves on two subsets are not one curve."""
    common = ["qkv_bias", *MICRO, "--tokens", "4096", "--data", str(small_corpus), "--results", str(tmp_path)]
    code, out, err = invoke("sweep", *common, "--seeds", "2")
    assert code == 0, out + err
    code, out, err = invoke("sweep", *common, "--seeds", "3", "--set", "heldout_tokens=512")
    assert code == 0, out + err
    code, out, err = invoke("report", "--results", str(tmp_path), "--format", "json")
    assert code == 0, out + err
    worth = json.loads(out)["sweeps"][0]["worth"]
    assert "different subsets of the test split" in worth["note"] and worth["arms"] == []


def test_the_terminal_shows_k_for_a_worse_arm_and_never_k_of_some_seeds():
    """A worse arm carries the tokens-to-match note, which hid its k in the terminal; a k read from
    only the seeds that happen to be in range is not printed beside a seed count of all of them."""
    from types import SimpleNamespace

    from harness.report.render import worth_line
    from harness.stats.worth import ABOVE, IN_RANGE

    worse = SimpleNamespace(arm="worse", k=0.696, k_low=0.663, k_high=0.731, seeds=5, state=IN_RANGE,
                            note="tokens to match: some seeds never reach the baseline's final loss within the budget")
    line = worth_line(worse, "95%")
    assert "k = 0.696 (95% CI 0.663 to 0.731, 5 seeds)" in line and "tokens to match" in line
    partial = SimpleNamespace(arm="part", k=0.862, k_low=float("nan"), k_high=float("nan"), seeds=5, state=ABOVE,
                              note="k > 1, beyond the measured range (the baseline's curve ends there)")
    assert "0.862" not in worth_line(partial, "95%")
