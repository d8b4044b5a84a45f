"""Careless and hostile users, round 2: one test (or property) per class of what broke, each of
which failed before its fix. Classes: outputs over inputs, strict definition files, integrity
without a manifest, one arm per configuration (and A/A arms named), numbers beyond what the
system holds, sizes that cannot run, configuration errors at plan time and not retried, names
that are paths, an interrupted worker under a parent that does not handle Ctrl-C, and the
smaller ones (markup in hints, odd files among interventions, NaN options, empty paths)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import invoke
from harness.core import config as cfgmod
from harness.core.definitions import builtin_folder
from harness.core.errors import UserError
from relkit import MICRO, REPO, corpus, env, rows, run, sweep_args

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def one_line(code: int, out: str, err: str, *needles: str) -> str:
    """Exit 2, one error line, no traceback; returns the line."""
    assert "Traceback" not in out + err, out + err
    assert code == 2, out + err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data) -> Path:
    """A results store with one completed sweep (baseline and qkv_bias, seed 0), never modified."""
    results = tmp_path_factory.mktemp("trained") / "results"
    proc = run(sweep_args(results, data, extra=["--name", "s"]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return results


def copy_of(store: Path, tmp_path: Path) -> Path:
    out = tmp_path / "results"
    shutil.copytree(store, out)
    return out


# ----------------------------------------------------------------------------- 1. outputs over inputs


def test_no_output_overwrites_an_input(trained, tmp_path, data):
    results = copy_of(trained, tmp_path)
    run_dir = next(p for p in (results / "runs").iterdir() if p.name.startswith("baseline"))
    weights = (run_dir / "checkpoint" / "model.safetensors").read_bytes()
    table = (results / "runs.parquet").read_bytes()
    cases = [
        ("export", run_dir.name, "--results", str(results), "--out", str(run_dir / "checkpoint"), "--overwrite"),
        ("export", run_dir.name, "--results", str(results), "--out", str(results / "runs" / "new")),
        ("report", "--results", str(results), "--out", str(results / "runs.parquet")),
        ("report", "--results", str(results), "--out", str(results)),
        ("data", "prepare", str(data), "--out", str(data)),
        ("data", "prepare", str(data), "--out", str(data.parent), "--overwrite"),
        ("sweep", "qkv_bias", "--seeds", "1", *MICRO, "--results", str(run_dir / "nested"), "--dry-run"),
        ("sweep", "qkv_bias", "--seeds", "1", *MICRO, "--results", str(builtin_folder() / "interventions"), "--dry-run"),
    ]
    for args in cases:
        code, out, err = invoke(*args)
        one_line(code, out, err, "--")
    assert (run_dir / "checkpoint" / "model.safetensors").read_bytes() == weights
    assert (results / "runs.parquet").read_bytes() == table
    assert data.read_text().startswith("The ") or data.stat().st_size > 40_000
    code, out, err = invoke("export", run_dir.name, "--results", str(results), "--out", str(tmp_path / "hf"),
                            "--no-check")
    assert code == 0, err  # a destination outside the store is fine


# ----------------------------------------------------------------------------- 2. strict definition files


@pytest.mark.parametrize("kind, text, needle", [
    ("intervention", '[model]\nqkv_bias = true\n', "unknown section [model]"),
    ("intervention", 'description = 5\n[set]\nqkv_bias = true\n', "description must be a string"),
    ("intervention", 'name = "x"\n[set]\nqkv_bias = true\n', "unknown key 'name'"),
    ("intervention", '[set]\nqkv_bias = "yes"\n', "qkv_bias must be true or false"),
    ("preset", '[set]\nlr = 1.0\n', "unknown section [set]"),
    ("preset", '[model]\nemb_dim = "big"\n', "emb_dim must be int"),
    ("preset", 'model = 3\n', "model must be a table"),
])
def test_definition_files_are_validated_strictly(tmp_path, monkeypatch, kind, text, needle):
    folder = tmp_path / ("interventions" if kind == "intervention" else "presets")
    folder.mkdir()
    monkeypatch.setenv("HARNESS_SWEEPS", str(tmp_path))
    (folder / "odd.toml").write_text(text)
    with pytest.raises(UserError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        cfgmod.load_intervention("odd") if kind == "intervention" else cfgmod.load_preset("odd")


# ----------------------------------------------------------------------------- 3. integrity without a manifest


def _drop_first_row(path: Path) -> None:
    table = pq.read_table(path)
    pq.write_table(table.slice(1), path)


def _edit_loss(path: Path) -> None:
    table = pq.read_table(path)
    i = table.schema.get_field_index("test_loss")
    pq.write_table(table.set_column(i, "test_loss", pa.array([1.0] * table.num_rows)), path)


@pytest.mark.parametrize("damage", ["truncated curves", "deleted row", "no tables", "edited loss", "torn runs"])
def test_without_a_manifest_the_journals_are_the_truth(trained, tmp_path, damage):
    results = copy_of(trained, tmp_path)
    want = {(r["run_id"], r["attempt"]): r["test_loss"] for r in rows(results)}
    (results / "manifest.json").unlink()
    if damage == "truncated curves":
        os.truncate(results / "curves.parquet", 300)
    elif damage == "deleted row":
        _drop_first_row(results / "runs.parquet")
    elif damage == "no tables":
        (results / "runs.parquet").unlink()
        (results / "curves.parquet").unlink()
    elif damage == "edited loss":
        _edit_loss(results / "runs.parquet")
    else:
        os.truncate(results / "runs.parquet", 500)
    for args in (["status", "--results", str(results)], ["report", "--results", str(results), "--no-plots",
                                                          "--out", str(tmp_path / "r.md")]):
        code, out, err = invoke(*args)
        assert code == 0 and "Traceback" not in out + err, out + err
    assert {(r["run_id"], r["attempt"]): r["test_loss"] for r in rows(results)} == want
    assert len(pq.read_table(results / "curves.parquet")) > 0 and (results / "manifest.json").exists()
    if damage in ("truncated curves", "edited loss", "torn runs"):
        assert list((results / "quarantine").iterdir()), "what disagreed was not kept aside"


# ----------------------------------------------------------------------------- 4. one arm per configuration


def test_equal_configurations_are_one_arm_and_aa_arms_are_named(tmp_path):
    code, out, err = invoke("sweep", "qkv_bias+qkv_bias", "baseline+qkv_bias", "no_dropout+qkv_bias",
                            "qkv_bias+no_dropout", "no_amp", "--seeds", "2", *MICRO, "--name", "canon",
                            "--results", str(tmp_path), "--dry-run")
    assert code == 0, err
    from harness.planning.plan import build_plan
    from harness.planning.request import SweepRequest

    arms = ("qkv_bias+qkv_bias", "baseline+qkv_bias", "no_dropout+qkv_bias", "qkv_bias+no_dropout", "no_amp")
    plan = build_plan(SweepRequest(arms, seeds=(0, 1), preset="micro", tokens=3000, name="canon").check(), 1, False,
                      tmp_path)
    assert plan.arms == ["baseline", "qkv_bias", "no_dropout+qkv_bias", "no_amp"]
    assert len(plan.specs) == 8 and len({s.run_id for s in plan.specs}) == 8
    assert "arm 'qkv_bias+no_dropout' trains exactly the configuration of 'no_dropout+qkv_bias'" in out
    assert "no_amp is an A/A comparison here" in out and set(plan.inert) == {"no_amp"}
    gpu_plan = build_plan(SweepRequest(("no_amp",), seeds=(0, 1), preset="micro", tokens=3000, name="g").check(), 1,
                          True, tmp_path)
    assert gpu_plan.inert == {}  # on GPUs fp32 is a real change (auto is bf16 there)
    from harness.store.planfile import save_plan
    from synthetic import synthetic_results, write_results

    runs, curves = synthetic_results(sweep="canon", arms={"baseline": 0.0, "no_amp": 0.0}, seeds=4)
    write_results(tmp_path, runs, curves)
    save_plan(plan)
    code, out, err = invoke("report", "--results", str(tmp_path), "--no-plots", "--out", str(tmp_path / "r.md"))
    assert code == 0, err
    assert "no\\_amp is an A/A comparison, not an intervention" in (tmp_path / "r.md").read_text()


# ----------------------------------------------------------------------------- 5. numbers beyond the system


BIG = st.one_of(st.integers(min_value=2**31, max_value=2**80), st.integers(max_value=-(2**31) - 1, min_value=-(2**80)))


@FAST
@given(flag=st.sampled_from(["--seed", "--init-seed", "--data-seed", "--dropout-seed", "--tokens", "--nproc"]),
       value=BIG)
def test_huge_numbers_are_refused_where_they_enter(tmp_path, flag, value):
    code, out, err = invoke("run", *MICRO, flag, str(value), "--results", str(tmp_path / "r"))
    if flag == "--tokens" and 0 < value <= 2**50:
        return
    line = one_line(code, out, err)
    assert "out of range" in line or "must be" in line, line
    assert not (tmp_path / "r" / "runs.parquet").exists()


@FAST
@given(value=BIG)
def test_huge_numbers_in_sets_sweep_lists_and_generate_are_refused(tmp_path, value):
    for args, where in ((["sweep", "qkv_bias", "--seed-list", f"1,{value}", *MICRO, "--dry-run"], "seed"),
                        (["sweep", "qkv_bias", "--seeds", "1", "--set", f"emb_dim={value}", *MICRO, "--dry-run"],
                         "emb_dim"),
                        (["generate", "x", "--seed", str(value)], "--seed")):  # refused before "no run x"
        code, out, err = invoke(*args, "--results", str(tmp_path))
        line = one_line(code, out, err, where, str(value))
        assert "out of range" in line or "must be >= 0" in line, line


def test_a_journal_entry_the_tables_cannot_hold_does_not_poison_the_store(trained, tmp_path):
    results = copy_of(trained, tmp_path)
    run_dir = next((results / "runs").iterdir())
    entry = json.loads((run_dir / "attempts" / "1.json").read_text())
    row = dict(entry["row"], attempt=2, seed=2**63)
    body = json.dumps({"row": row, "curve": entry["curve"]}, sort_keys=True, default=str)
    from harness.core.files import sha256_bytes

    (run_dir / "attempts" / "2.json").write_text(json.dumps({"row": row, "curve": entry["curve"],
                                                             "sha256": sha256_bytes(body.encode())}))
    for _ in range(2):  # every later report works
        code, out, err = invoke("report", "--results", str(results), "--no-plots", "--out", str(tmp_path / "r.md"))
        assert code == 0 and "Traceback" not in out + err, out + err
    assert not (run_dir / "attempts" / "2.json").exists() and list((results / "quarantine").iterdir())


# ----------------------------------------------------------------------------- 6. sizes that cannot run


def test_sizes_that_cannot_run_are_refused_before_planning(tmp_path):
    for args, needle in ((["--seeds", "1000000000"], "at most 10,000"), (["--seeds", "100000"], "at most 10,000"),
                         (["--seed-list", ",".join(map(str, range(10_001)))], "at most 10,000"),
                         (["--until-decided", "--max-seeds", "99999999"], "at most 10,000")):
        t0 = time.monotonic()
        code, out, err = invoke("sweep", "qkv_bias", *args, *MICRO, "--results", str(tmp_path), "--dry-run")
        one_line(code, out, err, needle)
        assert time.monotonic() - t0 < 20  # refused at once, not after planning


# ----------------------------------------------------------------------------- 8. config errors at plan time


def test_data_too_short_for_one_window_is_refused_at_plan_time(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("abcdefghij" * 4)  # 40 bytes: a few windows at most, fewer after the test split
    for extra in ([], ["--set", "allow_repeat=true"]):
        code, out, err = invoke("sweep", "qkv_bias", "--seeds", "1", *MICRO, "--set", f"data={short}",
                                "--set", "context_length=64", *extra, "--results", str(tmp_path / "r"))
        one_line(code, out, err)
        assert not (tmp_path / "r" / "runs").exists()


def test_a_configuration_that_cannot_run_is_recorded_once_and_not_retried(tmp_path, data):
    """Data that shrank between plan and launch: the worker's UserError is the config's, not noise."""
    from harness.core import config as cfg
    from harness.planning.budget import fixed_budget
    from harness.launch.torchrun import Processes, execute
    from harness.planning.plan import run_spec
    from harness.store.record import RetryPolicy, UNRUNNABLE
    from harness.store.results import ResultsStore

    short = tmp_path / "short.txt"
    short.write_text(data.read_text())
    arm = cfg.resolve("micro", "baseline", {"data": str(short)})
    spec = run_spec(arm, 0, fixed_budget(arm, 1, 3000), "x", 1)
    short.write_text("tiny")  # now too short for any window
    store = ResultsStore(tmp_path / "r")
    outcome = execute(spec, store, Processes())
    assert outcome.row.status == UNRUNNABLE and "split" in outcome.row.reason
    assert RetryPolicy(5).settled(store.history("x", spec.run_id).statuses) == UNRUNNABLE  # never retried


# ----------------------------------------------------------------------------- 9. names are names


@pytest.mark.parametrize("name", ["../elsewhere/x", "/etc/passwd", "a/b", "x" * 300, "qkv_bias+" + "y" * 5000])
def test_arm_names_are_names(tmp_path, name):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "x.toml").write_text("[set]\nqkv_bias = true\n")
    named = ("bad intervention name", "use letters, digits and _ . -")
    one_line(*invoke("chinchilla", name), *named)
    # a sweep's one argument may be a sweep file's path (an existing file): then it is read as one,
    # and a file that is not a sweep file is refused as such
    code, out, err = invoke("sweep", name, "--seeds", "1", *MICRO, "--dry-run", "--results", str(tmp_path))
    one_line(code, out, err, *((name, "malformed TOML") if os.path.isfile(name) else named))


def test_odd_files_among_interventions_are_named_as_such(tmp_path, monkeypatch):
    folder = tmp_path / "interventions"
    folder.mkdir()
    monkeypatch.setenv("HARNESS_SWEEPS", str(tmp_path))
    os.mkfifo(folder / "pipe.toml")
    (folder / "loop.toml").symlink_to(folder / "loop.toml")
    assert not {"pipe", "loop"} & set(cfgmod.intervention_names())
    with pytest.raises(UserError, match="not a regular file"):
        cfgmod.load_intervention("pipe")
    with pytest.raises(UserError, match="cannot read intervention 'loop'.*symbolic links"):
        cfgmod.load_intervention("loop")


# ----------------------------------------------------------------------------- 10. Ctrl-C under a parent that ignores it


PARENT_WITHOUT_CTRL_C = ("import runpy, signal, sys; signal.signal(signal.SIGINT, lambda *a: None); "
                         "sys.argv = ['harness'] + sys.argv[1:]; runpy.run_module('harness', run_name='__main__')")


@pytest.mark.slow  # CI time: the class stays covered by a shorter test in the fast tier
def test_a_worker_interrupted_by_ctrl_c_is_not_a_failed_attempt_and_stops_the_sweep(tmp_path, data):
    results = tmp_path / "r"
    args = ["sweep", "qkv_bias", "--seeds", "1", "--preset", "micro", "--tokens", "51200", "--set",
            "checkpoint_every=10", "--set", f"data={data}", "--set", "allow_repeat=true", "--jobs", "1",
            "--results", str(results)]
    proc = subprocess.Popen([sys.executable, "-c", PARENT_WITHOUT_CTRL_C, *args], cwd=REPO, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(results.glob("runs/*/checkpoint/meta.json")):
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGINT)  # the terminal's Ctrl-C: the whole process group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "interrupted by SIGINT" in out and "Traceback" not in out
    assert [r for r in rows(results) if r["status"] == "failed"] == []
    again = run(args)
    assert again.returncode == 0, again.stdout + again.stderr
    assert sorted((r["arm"], r["attempt"], r["status"]) for r in rows(results)) == [
        ("baseline", 1, "completed"), ("qkv_bias", 1, "completed")]
    code, out, err = invoke("status", "--results", str(results), "--json")
    (sweep,) = json.loads(out).values()
    assert code == 0 and sweep["totals"]["done"] == 2, out + err


def test_status_shows_a_killed_run_as_interrupted(trained, tmp_path):
    results = copy_of(trained, tmp_path)
    from harness.store.planfile import read_plan

    plan = read_plan(results, "s")
    run_id = plan["runs"][0]["run_id"]
    table = pq.read_table(results / "runs.parquet")
    keep = [i for i, r in enumerate(table.column("run_id").to_pylist()) if r != run_id]
    pq.write_table(table.take(keep), results / "runs.parquet")
    (results / "manifest.json").unlink()
    shutil.rmtree(results / "runs" / run_id / "attempts")  # as if killed before recording
    (results / "runs" / run_id / "result.json").unlink(missing_ok=True)
    code, out, err = invoke("status", "--results", str(results), "--json")
    state = {r["run_id"]: r for r in json.loads(out)["s"]["runs"]}[run_id]
    assert state["state"] == "interrupted" and "resumes from step" in state["detail"]


# ----------------------------------------------------------------------------- 11. smaller ones


def test_smaller_ones(tmp_path, trained):
    code, out, err = invoke("sweep", "--help")
    assert "harness[tensorboard]" in out.replace("\n", "").replace(" ", "").replace("│", "")
    for args in (["generate", "x", "--temperature", "nan"], ["sweep", "qkv_bias", "--until-decided", "--margin", "inf"],
                 ["sweep", "qkv_bias", "--until-decided", "--alpha", "nan"]):
        code, out, err = invoke(*args, "--results", str(trained))
        one_line(code, out, err, "finite")
    code, out, err = invoke("status", "--results", "")
    assert code == 2 and "empty path" in out + err
    afile = tmp_path / "afile"
    afile.write_text("")
    lines = {one_line(*invoke(cmd, "--results", str(afile))) for cmd in ("status", "report")}
    assert len(lines) == 1 and "is not a folder" in lines.pop()  # status and report say the same


def test_a_test_set_mixed_within_an_arm_is_named_as_mixed_across_seeds():
    from harness.report.outcomes import _normalise_runs, resolve_outcomes
    from harness.report.sameness import differences

    def check_integrity(rows, arms):
        return [d.text for d in differences(rows, arms, "baseline")]
    from synthetic import synthetic_results

    runs, _ = synthetic_results(sweep="m", arms={"baseline": 0.0, "qkv_bias": -0.01}, seeds=4)
    runs.loc[runs["seed"] >= 2, "test_set_id"] = "other-test-set"
    problems = check_integrity(resolve_outcomes(_normalise_runs(runs, print)), ["baseline", "qkv_bias"])
    assert problems == ["test set (test_set_id) differs across seeds (baseline: fineweb-test-v1 (seeds 0, 1), "
                        "other-test-set (seeds 2, 3); qkv_bias: fineweb-test-v1 (seeds 0, 1), other-test-set "
                        "(seeds 2, 3))"]
    runs.loc[runs["arm"] == "qkv_bias", "test_set_id"] = "other-test-set"
    runs.loc[runs["arm"] == "baseline", "test_set_id"] = "fineweb-test-v1"
    problems = check_integrity(resolve_outcomes(_normalise_runs(runs, print)), ["baseline", "qkv_bias"])
    assert problems == ["test set (test_set_id) differs between arms (baseline: fineweb-test-v1, "
                        "qkv_bias: other-test-set)"]
