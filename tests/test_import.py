"""Results made elsewhere (harness import, harness.store.imported): a CSV, JSON or Parquet table of
arm, seed and test loss becomes an imported sweep that `harness report` compares as its own, says
what it cannot vouch for, and that importing again leaves alone; every refusal is one line and
writes nothing."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from conftest import invoke
import harness.api as hx


def trained_elsewhere(seeds: int = 6, effect: float = -0.03) -> pd.DataFrame:
    """Paired seeds: a seed effect shared by the arms, a small noise of each run's own."""
    rng = np.random.default_rng(0)
    shared = rng.normal(0, 0.02, seeds)
    rows = [{"arm": arm, "seed": s, "test_loss": 3.2 + shared[s] + shift + rng.normal(0, 0.002), "tokens": 1_000_000}
            for arm, shift in (("baseline", 0.0), ("qk_norm", effect), ("relu2", 0.0)) for s in range(seeds)]
    return pd.DataFrame(rows)


def test_an_imported_csv_is_reported_as_a_sweep_of_its_own(tmp_path):
    table = tmp_path / "mine.csv"
    trained_elsewhere().to_csv(table, index=False)
    results = tmp_path / "r"
    code, out, err = invoke("import", str(table), "--results", str(results))
    assert code == 0 and "sweep 'mine': 18 run(s) imported" in out, out + err
    code, out, err = invoke("import", str(table), "--results", str(results))
    assert code == 0 and "imported before, nothing added" in out and len(pd.read_parquet(results / "runs.parquet")) == 18
    code, out, err = invoke("report", "--results", str(results), "--out", f"{tmp_path / 'rep'}/")
    assert code == 0, out + err
    md = (tmp_path / "rep" / "mine.md").read_text()
    assert "**qk\\_norm**: better" in md and "imported from mine.csv" in md and "not verified" in md
    code, out, err = invoke("report", "--results", str(results), "--format", "json")
    sweep = json.loads(out)["sweeps"][0]
    verdicts = {a["arm"]: a["verdict"] for a in sweep["arms"]}
    assert verdicts["qk_norm"] == "better" and verdicts["relu2"] != "better"
    assert min(p["correlation"] for p in sweep["pairing"]) > 0.9  # the pairing measured, as declared


def test_json_parquet_and_the_api_import_alike(tmp_path):
    frame = trained_elsewhere(seeds=4)
    (tmp_path / "a.json").write_text(json.dumps({"runs": frame.to_dict("records")}))
    frame.to_parquet(tmp_path / "b.parquet")
    assert hx.import_results(tmp_path / "a.json", tmp_path / "r") == {"a": 12}
    assert hx.import_results(tmp_path / "b.parquet", tmp_path / "r", sweep="b") == {"b": 12}
    report = hx.report(tmp_path / "r")
    assert report.arms("a")["mean"].round(9).tolist() == report.arms("b")["mean"].round(9).tolist()


def changed(frame: pd.DataFrame, row: int, column: str, value) -> pd.DataFrame:
    out = frame.astype({column: object})
    out.at[row, column] = value
    return out


def refusals():
    good = trained_elsewhere(seeds=3)
    nan = changed(good, 4, "test_loss", float("nan"))
    return [
        ("no_loss.csv", good.drop(columns="test_loss"), "no column test_loss"),
        ("twice.csv", pd.concat([good, good.iloc[[0]]]), "seed 0 twice"),
        ("no_base.csv", good[good["arm"] != "baseline"], "no 'baseline' arm"),
        ("nan.csv", nan, "row 6: test_loss is 'nan'"),
        ("bad_arm.csv", good.assign(arm=good["arm"].replace("relu2", "../x")), "bad intervention name"),
        ("half_seed.csv", good.assign(seed=good["seed"] + 0.5), "whole number"),
        ("text_seed.csv", changed(good, 5, "seed", "x"), "row 7: seed is 'x'"),
        ("no_arm.csv", changed(good, 2, "arm", None), "row 4: no arm"),
        ("huge_tokens.csv", changed(good, 8, "tokens", 1e30), "row 10: tokens"),
    ]


@pytest.mark.parametrize("name, frame, message", refusals(), ids=[r[0] for r in refusals()])
def test_what_a_recorded_sweep_refuses_an_import_refuses(tmp_path, name, frame, message):
    frame.to_csv(tmp_path / name, index=False)
    code, out, err = invoke("import", str(tmp_path / name), "--results", str(tmp_path / "r"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not (tmp_path / "r" / "runs.parquet").exists()


def test_a_sweep_column_of_numbers_names_sweeps_and_wins_over_nothing(tmp_path):
    """Numeric sweep names stay two sweeps (they were folded into one named after the file), and
    --sweep beside a sweep column is refused rather than merging the table's sweeps."""
    frame = pd.concat([trained_elsewhere(seeds=3).assign(sweep=1), trained_elsewhere(seeds=3).assign(sweep=2)])
    frame.to_csv(tmp_path / "two.csv", index=False)
    assert hx.import_results(tmp_path / "two.csv", tmp_path / "r") == {"1": 9, "2": 9}
    code, _, err = invoke("import", str(tmp_path / "two.csv"), "--sweep", "x", "--results", str(tmp_path / "q"))
    assert code == 2 and "drop --sweep" in err


def test_another_file_under_an_imported_name_and_an_odd_file_are_refused(tmp_path):
    trained_elsewhere(seeds=3).to_csv(tmp_path / "x.csv", index=False)
    trained_elsewhere(seeds=3, effect=-0.01).to_csv(tmp_path / "y.csv", index=False)
    assert invoke("import", str(tmp_path / "x.csv"), "--results", str(tmp_path / "r"))[0] == 0
    code, _, err = invoke("import", str(tmp_path / "y.csv"), "--sweep", "x", "--results", str(tmp_path / "r"))
    assert code == 2 and "already holds 9 run(s)" in err and "--sweep" in err
    (tmp_path / "z.txt").write_text("arm,seed,test_loss\n")
    code, _, err = invoke("import", str(tmp_path / "z.txt"), "--results", str(tmp_path / "r"))
    assert code == 2 and ".csv, .parquet, .json" in err
    code, _, err = invoke("import", str(tmp_path / "none.csv"), "--results", str(tmp_path / "r"))
    assert code == 2 and "no such file" in err
