"""Careless and hostile users, round 3: no silent wrong verdict, no traceback from states that
ordinary commands make. One test per class, several instances each; every instance asserts no
traceback, and where a store is involved that no recorded row is lost or altered.

 1 sameness: arms compared only when trained alike (harness.report.sameness, harness.store.planfile)
 2 a sequential design is fixed when it starts          7 failure names itself, leaves nothing
 3 streams held fixed and missing runs are said         8 contradictions refused
 4 one bad sweep never kills the report of a folder     9 status and report agree
 5 a list is a set                                      10 leftovers: spellings, folder destinations
 6 user text decoded and checked                        11 an outlier seed is flagged

Most states are made by the commands themselves on tiny micro runs; where training would only
cost time, a state is recorded through the store as the commands record it (record()).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import corpus, invoke
from harness.planning.plan import build_plan
from harness.planning.request import SweepRequest
from harness.store.planfile import save_plan
from harness.store.record import RunResult, RunRow
from harness.store.results import ResultsStore

MICRO = ["--preset", "micro", "--tokens", "1000"]


def clean(code: int, out: str, err: str) -> str:
    assert "Traceback" not in out + err, out + err
    return out + err


def refused(result, *needles: str) -> str:
    """Exit 2, one error line naming every needle, no traceback."""
    code, out, err = result
    clean(code, out, err)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, (code, out, err)
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def table(results: Path) -> pd.DataFrame:
    return pd.read_parquet(results / "runs.parquet")


def unchanged(before: pd.DataFrame, results: Path) -> None:
    """No recorded row lost or altered (rows may have been added)."""
    after = table(results).set_index(["run_id", "attempt"])
    old = before.set_index(["run_id", "attempt"])
    assert old.index.isin(after.index).all(), "rows were lost"
    assert after.loc[old.index, ["test_loss", "status", "sweep"]].equals(old[["test_loss", "status", "sweep"]])


def report_json(results: Path, *args: str) -> tuple[int, dict | None, str]:
    code, out, err = invoke("report", "--results", str(results), "--format", "json", *args)
    clean(code, out, err)
    return code, (json.loads(out) if code == 0 else None), err


def record(results: Path, name: str, arms: tuple[str, ...], seeds: tuple[int, ...], losses, data: Path,
           save: bool = True, **request):
    """Record completed runs of a planned sweep through the store, as a sweep records them (without
    training: the state is what matters); losses(arm, seed) -> test loss. save False: past the plan
    check (as a store merged by hand, or written by an older harness, is). Returns the plan."""
    plan = build_plan(SweepRequest(arms, seeds=seeds, preset="micro", tokens=request.pop("tokens", 1000), name=name,
                                   sets={"data": str(data)} | request.pop("sets", {}), **request).check(), 1, False,
                      results)
    if save:
        save_plan(plan)
    store = ResultsStore(results)
    for spec in plan.specs:
        result = RunResult(status="completed", test_loss=losses(spec.arm, spec.seed), test_tokens=100,
                           test_set_id=plan.data[spec.arm].test_set_id, tokens_seen=spec.tokens, steps=spec.steps)
        store.append(RunRow.of(spec, store.attempts(spec.run_id) + 1, result, run_dir=str(store.run_dir(spec.run_id))))
    return plan


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> Path:
    """One real micro sweep (baseline and qkv_bias, seeds 0 and 1) under the name s, never modified."""
    results = tmp_path_factory.mktemp("trained") / "results"
    code, out, err = invoke("sweep", "qkv_bias", "--seeds", "2", *MICRO, "--data", str(data), "--name", "s",
                            "--results", str(results))
    assert code == 0, out + err
    return results


@pytest.fixture
def store(trained, tmp_path) -> Path:
    shutil.copytree(trained, tmp_path / "results")
    return tmp_path / "results"


# ----------------------------------------------------------------------------- 1. sameness


def test_1_a_comparison_is_only_as_good_as_its_arms_sameness(store, data, tmp_path):
    before = table(store)
    common = [*MICRO, "--data", str(data), "--sweep", "s", "--results", str(store)]
    # a seed added by hand with a setting the rest did not have: refused before anything trains
    refused(invoke("run", "qkv_bias", "--seed", "2", "--set", "lr=0.01", *common), "lr 0.002 -> 0.01",
            "another experiment")
    # the corpus replaced between two invocations of one sweep: another experiment, not a cache warning
    changed = tmp_path / "changed.txt"
    changed.write_text(data.read_text().replace("king", "queen"))
    refused(invoke("sweep", "qkv_bias", "--seeds", "4", *MICRO, "--data", str(changed), "--name", "s",
                   "--results", str(store), "--dry-run"), "data_id")
    # another budget, an intervention redefined in the user's own folder: the same
    refused(invoke("sweep", "qkv_bias", "--seeds", "4", "--preset", "micro", "--tokens", "2000", "--data", str(data),
                   "--name", "s", "--results", str(store), "--dry-run"), "tokens 1024 -> 2048")
    mine = tmp_path / "defs" / "interventions"
    mine.mkdir(parents=True)
    (mine / "qkv_bias.toml").write_text("[set]\nqkv_bias = true\ndrop_rate = 0.0\n")
    refused(invoke("sweep", "qkv_bias", "--seeds", "4", *MICRO, "--data", str(data), "--name", "s", "--sweeps",
                   str(tmp_path / "defs"), "--results", str(store), "--dry-run"), "drop_rate 0.1 -> 0.0")
    # where only placement differs, nothing is refused and nothing trains again
    code, out, err = invoke("sweep", "qkv_bias", "--seeds", "2", *MICRO, "--data", str(data), "--name", "s",
                            "--set", "micro_batch=2", "--results", str(store))
    assert code == 0 and out.count("already in the store") == 4, clean(code, out, err)
    unchanged(before, store)
    # a state no plan check saw (the plan file deleted, then runs added): the report names the key and
    # its values, and --allow-mismatch shows the arms side by side with the verdict withheld
    (store / "sweeps" / "s.json").unlink()
    assert invoke("run", "qkv_bias", "--seed", "2", "--set", "lr=0.01", *common)[0] == 0
    assert invoke("run", "baseline", "--seed", "2", *common)[0] == 0
    code, doc, err = report_json(store)
    assert code == 2 and "lr differs across seeds" in err and "0.01 (seeds 2)" in err
    code, doc, err = report_json(store, "--allow-mismatch")
    arm = next(a for a in doc["sweeps"][0]["arms"] if a["arm"] == "qkv_bias")
    assert code == 0 and arm["verdict"].startswith("withheld") and doc["sweeps"][0]["integrity"]["withheld"] == ["qkv_bias"]
    for part in ("worth", "test_text"):  # the sections that compare the arm with the baseline withhold it too
        rows = [a for a in doc["sweeps"][0][part]["arms"] if a["arm"] == "qkv_bias"]
        assert rows and all(a["note"].startswith("withheld") for a in rows), (part, rows)
    unchanged(before, store)


def test_1_the_report_checks_every_key_of_the_recorded_runs(tmp_path, data):
    """States recorded straight into the store (an older harness, a folder merged by hand):
    within an arm across seeds, between an arm and the baseline, and the pairing of sub-seeds."""
    results = tmp_path / "r"
    record(results, "m", ("qkv_bias",), (0, 1, 2), lambda a, s: 5.0 + s * 0.01 - (a != "baseline") * 0.02, data)
    record(results, "m", ("qkv_bias",), (3, 4), lambda a, s: 4.0, data, save=False, sets={"weight_decay": 0.0})
    code, _, err = report_json(results)
    assert code == 2 and "weight_decay differs across seeds" in err and "0.0 (seeds 3, 4)" in err
    results2 = tmp_path / "r2"
    record(results2, "b", ("baseline",), (0, 1, 2), lambda a, s: 5.0, data)
    record(results2, "b", ("no_dropout",), (0, 1, 2), lambda a, s: 4.9, data, save=False, include_baseline=False,
           sets={"lr": 0.004})
    code, _, err = report_json(results2)
    assert code == 2 and "lr differs between arms (baseline: 0.002, no_dropout: 0.004)" in err
    assert "drop_rate" not in err  # what no_dropout itself sets is the intervention, not a difference
    results3 = tmp_path / "r3"
    record(results3, "p", ("baseline",), (0, 1, 2), lambda a, s: 5.0, data)
    record(results3, "p", ("qkv_bias",), (0, 1, 2), lambda a, s: 4.9, data, save=False, include_baseline=False,
           streams=__import__("harness.planning.request", fromlist=["Streams"]).Streams(fixed={"data": 7}))
    code, _, err = report_json(results3)
    assert code == 2 and "random streams held fixed differs between arms" in err and "sub-seeds" in err


# ----------------------------------------------------------------------------- 2. a sequential design is fixed


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory, data) -> Path:
    results = tmp_path_factory.mktemp("adaptive") / "results"
    code, out, err = invoke("sweep", "qkv_bias", "--until-decided", "--min-seeds", "2", "--max-seeds", "3", *MICRO,
                            "--data", str(data), "--name", "a", "--results", str(results))
    assert code == 0, out + err
    return results


def test_2_a_sequential_design_is_fixed_when_it_starts(adaptive, data, tmp_path):
    store = tmp_path / "results"
    shutil.copytree(adaptive, store)
    before, plan = table(store), (store / "sweeps" / "a.json").read_bytes()
    base = ["sweep", "qkv_bias", *MICRO, "--data", str(data), "--name", "a", "--results", str(store)]
    adaptive_args = ["--until-decided", "--min-seeds", "2", "--max-seeds", "3"]
    for change, needle in ((["--margin", "0.5"], "margin None -> 0.5"), (["--alpha", "0.1"], "alpha 0.05 -> 0.1"),
                           (["--max-seeds", "2"], "max_seeds 3 -> 2"), (["--min-seeds", "3"], "min_seeds 2 -> 3")):
        settings = {"--min-seeds": "2", "--max-seeds": "3"} | dict(zip(change[::2], change[1::2]))
        refused(invoke(*base, "--until-decided", *[x for kv in settings.items() for x in kv], "--dry-run"), needle,
                "fixed when it starts")
    refused(invoke("sweep", "qkv_bias", "no_dropout", *MICRO, "--data", str(data), "--name", "a", *adaptive_args,
                   "--results", str(store), "--dry-run"), "arms")
    refused(invoke(*base, "--seeds", "3"), "adaptive sweep", "sweep")  # a fixed sweep under its name
    refused(invoke("run", "baseline", "--seed", "5", *MICRO, "--data", str(data), "--sweep", "a",
                   "--results", str(store)), "adaptive sweep")
    assert (store / "sweeps" / "a.json").read_bytes() == plan
    unchanged(before, store)
    code, doc, err = report_json(store)
    assert code == 0 and doc["sweeps"][0]["adaptive"]["max_seeds"] == 3


# ----------------------------------------------------------------------------- 3. what was held fixed, what is missing


def test_3_streams_held_fixed_and_missing_runs_are_said(tmp_path, data):
    results = tmp_path / "r"
    refused(invoke("sweep", "qkv_bias", "--seeds", "3", *MICRO, "--data", str(data), "--init-seed", "1",
                   "--data-seed", "2", "--dropout-seed", "3", "--results", str(results), "--dry-run"),
            "every random stream is fixed")
    from harness.planning.request import Streams

    record(results, "held", ("qkv_bias",), (0, 1, 2, 3), lambda a, s: 5.0 + 0.01 * s - 0.02 * (a != "baseline")
           + 0.001 * np.sin(s * 3 + (a != "baseline")), data, streams=Streams(fixed={"data": 7}))
    code, doc, _ = report_json(results)
    sweep = doc["sweeps"][0]
    assert code == 0 and any("held fixed" in n and "data at 7" in n for n in sweep["notes"])
    # a sweep reported before it is complete says so, and marks its verdicts interim
    plan = build_plan(SweepRequest(("qkv_bias",), seeds=tuple(range(6)), preset="micro", tokens=1000, name="part",
                                   sets={"data": str(data)}).check(), 1, False, results)
    save_plan(plan)
    record(results, "part", ("qkv_bias",), (0, 1, 2), lambda a, s: 5.0 + 0.01 * s - 0.02 * (a != "baseline"), data)
    code, doc, _ = report_json(results, "--sweep", "part")
    sweep = doc["sweeps"][0]
    assert code == 0 and sweep["complete"] is False and sweep["notes"][0].startswith("INCOMPLETE: 6 of 12")
    assert next(a for a in sweep["arms"] if a["arm"] == "qkv_bias")["verdict"].startswith("interim: ")
    assert "baseline seeds 3, 4, 5" in sweep["notes"][0]


# ----------------------------------------------------------------------------- 4. one bad sweep


def test_4_one_bad_sweep_never_kills_the_report_of_a_folder(store, data, tmp_path):
    before = table(store)
    plan = (store / "sweeps" / "s.json").read_bytes()
    refused(invoke("noise", "--seeds", "2", *MICRO, "--data", str(data), "--name", "s", "--results", str(store),
                   "--dry-run"), "noise study")  # a study reusing a sweep's name
    assert (store / "sweeps" / "s.json").read_bytes() == plan
    record(store, "bad", ("qkv_bias",), (0, 1), lambda a, s: 5.0, data)
    (store / "sweeps" / "bad.json").unlink()
    record(store, "bad", ("qkv_bias",), (2, 3), lambda a, s: 4.0, data, sets={"lr": 0.01})
    code, out, err = invoke("report", "--results", str(store), "--out", f"{tmp_path / 'reports'}/", "--no-plots")
    clean(code, out, err)
    assert code == 2 and "1 of 2 sweeps could not be reported" in err and "sweep 'bad'" in err
    assert (tmp_path / "reports" / "s.md").exists() and not (tmp_path / "reports" / "bad.md").exists()
    # rows of seeds past an adaptive sweep's cap (recorded by hand): reported, no IndexError
    from harness.planning.adaptive import Adaptive, arm_states

    rows = table(store)
    rows = rows[rows["sweep"] == "s"].assign(seed=lambda r: r["seed"] + 7)
    states = arm_states(rows, ["qkv_bias"], "baseline", Adaptive(max_seeds=3, min_seeds=2))
    assert states["qkv_bias"].state
    unchanged(before, store)


# ----------------------------------------------------------------------------- 5. a list is a set


def test_5_a_list_is_a_set(tmp_path, data):
    results = str(tmp_path / "r")
    refused(invoke("sweep", "qkv_bias", "--seed-list", "1,1,2", *MICRO, "--results", results, "--dry-run"),
            "seed 1 listed twice")
    refused(invoke("sweep", "qkv_bias", "--seed-list", "1,,2", *MICRO, "--results", results, "--dry-run"),
            "empty item")
    refused(invoke("sweep", "qkv_bias", "--seed-list", "3,", *MICRO, "--results", results, "--dry-run"),
            "empty item")
    f = tmp_path / "s.toml"
    f.write_text('arms = ["qkv_bias"]\nseed_list = [0, 2, 2, 0]\npreset = "micro"\ntokens = 1000\n')
    refused(invoke("sweep", str(f), "--results", results, "--dry-run"), "seeds 0,2 listed twice")


# ----------------------------------------------------------------------------- 6. user text


def test_6_every_user_text_is_decoded_and_checked(store, tmp_path):
    run_id = table(store).iloc[0]["run_id"]
    refused(invoke("generate", run_id, "", "--results", str(store)), "the prompt is empty")
    refused(invoke("generate", "", "--results", str(store)), "the run id is empty")
    refused(invoke("generate", run_id, "caf\udce9", "--results", str(store)), "not valid text")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    refused(invoke("data", "prepare", str(empty), "--out", str(tmp_path / "o1"), "--tokenizer", "bytes"), "is empty")
    no_text = tmp_path / "records.jsonl"
    no_text.write_text('{"body": "a long enough document"}\n{"text": "another"}\n')
    refused(invoke("data", "prepare", str(no_text), "--out", str(tmp_path / "o2"), "--tokenizer", "bytes",
                   "--test-tokens", "5"), "has no field 'text' in document 1")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"\xff\xfe not text")
    refused(invoke("data", "prepare", str(bad), "--out", str(tmp_path / "o3"), "--tokenizer", "bytes"), "utf-8")
    assert not any((tmp_path / f"o{i}").exists() for i in (1, 2, 3))  # nothing half-written


# ----------------------------------------------------------------------------- 7. failure names itself


def test_7_failure_names_itself_and_leaves_nothing(tmp_path, data):
    results = tmp_path / "r"
    code, out, err = invoke("run", *MICRO[:2], "--tokens", "3000", "--data", str(data), "--set", "lr=1e30",
                            "--set", "log_every=1", "--set", "checkpoint_every=1", "--results", str(results))
    assert code == 1, clean(code, out, err)
    run_id = table(results).iloc[0]["run_id"]
    line = refused(invoke("generate", run_id, "Every", "--results", str(results)), "diverged at step", "non-finite")
    assert "\x1b" not in line
    refused(invoke("export", run_id, "--out", str(tmp_path / "hf"), "--results", str(results)), "diverged")
    assert not (tmp_path / "hf").exists()


# ----------------------------------------------------------------------------- 8. contradictions


def test_8_contradictions_are_refused(tmp_path):
    results = str(tmp_path / "r")
    refused(invoke("sweep", "baseline", "--until-decided", *MICRO, "--results", results, "--dry-run"),
            "has no other arm")
    refused(invoke("sweep", "qkv_bias", "--budget", "own", "--tokens", "2000", "--preset", "micro",
                   "--results", results, "--dry-run"), "give one of them")
    refused(invoke("sweep", "qkv_bias", "--name", "", *MICRO, "--results", results, "--dry-run"), "sweep name")
    for margin in ("5", "1.0"):
        refused(invoke("sweep", "qkv_bias", "--until-decided", "--margin", margin, *MICRO, "--results", results,
                       "--dry-run"), "--margin")
    refused(invoke("report", "--results", results, "--alpha", "0.9"), "--alpha")
    for text, needle in (('arms = ["qkv_bias"]\nseeds = 3\nseed_list = [1, 2]\n', "not both"),
                         ('arms = ["qkv_bias"]\nname = ""\n', "name")):
        f = tmp_path / "f.toml"
        f.write_text(text)
        refused(invoke("sweep", str(f), "--results", results, "--dry-run"), needle)
    assert not Path(results).exists()


# ----------------------------------------------------------------------------- 9. status and report agree


def test_9_status_and_report_agree(store, data):
    before = table(store)
    from harness.report.status import status_payload

    (store / "sweeps" / "s.json").unlink()  # a second budget under one sweep, as an older harness allowed
    record(store, "s", ("qkv_bias",), (2, 3), lambda a, s: 4.0, data, tokens=2000)
    status = status_payload(store)["s"]["arms"]
    assert status["baseline"]["mean_test_loss"] is None and status["baseline"]["budgets"] == [1024, 2048]
    code, _, err = report_json(store)
    assert code == 2 and "token budget" in err  # the report refuses the same mix
    # a run whose workers finished but whose recording was cut off is not "interrupted"
    row = table(store).iloc[0]
    run_dir = store / "runs" / row["run_id"]
    (run_dir / "result.json").write_text(json.dumps({"status": "completed", "test_loss": 5.0}))
    plan = build_plan(SweepRequest(("qkv_bias",), seeds=(9,), preset="micro", tokens=1000, name="late",
                                   sets={"data": str(data)}).check(), 1, False, store)
    save_plan(plan)
    folder = store / "runs" / plan.specs[0].run_id
    folder.mkdir(parents=True)
    (folder / "log.txt").write_text("=== attempt 1\n")
    (folder / "result.json").write_text(json.dumps({"status": "completed", "test_loss": 5.0}))
    late = status_payload(store)["late"]["runs"][0]
    assert late["state"] == "unrecorded" and "without training" in late["detail"]
    unchanged(before, store)


# ----------------------------------------------------------------------------- 10. leftovers of round 2


def test_10_one_run_per_spelling_and_folders_written_as_folders(tmp_path, data, store):
    results = tmp_path / "r"
    common = [*MICRO, "--data", str(data), "--results", str(results)]
    assert invoke("run", "qkv_bias+no_dropout", *common)[0] == 0
    code, out, err = invoke("run", "no_dropout+qkv_bias", *common)
    assert code == 0 and "already in the store" in clean(code, out, err)
    assert len(table(results)) == 1
    code, out, err = invoke("report", "--results", str(store), "--out", f"{tmp_path / 'new' / 'dir'}/", "--no-plots")
    assert code == 0, clean(code, out, err)
    assert (tmp_path / "new" / "dir").is_dir() and (tmp_path / "new" / "dir" / "s.md").exists()


# ----------------------------------------------------------------------------- 11. an outlier seed


def test_11_an_outlier_seed_is_flagged(tmp_path, data):
    results = tmp_path / "r"
    spike = {"baseline": {s: 5.0 + 0.01 * s for s in range(6)}}
    spike["qkv_bias"] = {s: v - 0.001 + 0.0002 * ((-1) ** s) for s, v in spike["baseline"].items()}
    spike["qkv_bias"][4] += 0.05  # one run's loss spike
    record(results, "o", ("qkv_bias",), tuple(range(6)), lambda a, s: spike[a][s], data)
    code, doc, _ = report_json(results)
    arm = next(a for a in doc["sweeps"][0]["arms"] if a["arm"] == "qkv_bias")
    assert code == 0 and arm["outlier_seeds"] == [4] and any("outlying seed 4" in n for n in arm["notes"])
    code, out, err = invoke("report", "--results", str(results), "--out", str(tmp_path / "o.md"), "--no-plots")
    text = (tmp_path / "o.md").read_text()
    assert "outlying seed 4" in text and "assumptions" in text and "skewness 1.25" in text
