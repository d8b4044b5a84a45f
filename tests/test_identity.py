"""A run is what it computes (harness.store.record.run_identity): where and how fast it runs and
what it is called are not part of it, its sub-seeds and data are; stores older than identities are
read without retraining (harness.store.identity); one rule for the attempt that counts."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import cli, invoke, kill_mid_run
from harness.core import config as cfgmod
from harness.planning.budget import chinchilla
from harness.planning.plan import build_plan, noise_plan, run_spec
from harness.planning.request import NoiseRequest, SweepRequest
from harness.store.record import RunResult, RunRow, counted
from harness.store.results import ResultsStore

FIXTURE = Path(__file__).parent / "fixtures" / "store-v0"  # a micro sweep recorded by harness before identities


def spec_of(arm: str = "baseline", seed: int = 0, **sets):
    cfg = cfgmod.resolve("micro", arm, sets)
    return run_spec(cfg, seed, chinchilla(cfg, 1), "sw", 1)


def test_placement_knobs_and_labels_are_not_part_of_a_run_but_what_it_computes_is():
    base = spec_of()
    for knob in ({"micro_batch": 2}, {"compile": "off"}, {"eval_batch": 3}, {"log_every": 1}, {"checkpoint_every": 5}):
        assert spec_of(**knob).run_id == base.run_id, knob
    assert run_spec(cfgmod.resolve("micro"), 0, chinchilla(cfgmod.resolve("micro"), 1), "sw", 4).run_id == base.run_id
    assert spec_of(lr=1e-3).run_id != base.run_id and spec_of(seed=1).run_id != base.run_id
    assert spec_of("qkv_bias+no_dropout").run_id == spec_of("no_dropout+qkv_bias").run_id
    cfg = cfgmod.resolve("micro")
    assert run_spec(cfg, 0, chinchilla(cfg, 1), "other sweep", 1, vary="init").run_id == base.run_id
    assert run_spec(cfg, 3, chinchilla(cfg, 1), "sw", 1, vary="init").identity != spec_of(seed=3).identity
    assert run_spec(cfg, 0, chinchilla(cfg, 1), "sw", 1, fixed={"data": 7}).identity != base.identity
    assert cfgmod.PLACEMENT_KEYS == {"micro_batch", "compile", "eval_batch", "log_every", "checkpoint_every",
                                     "heldout_points", "heldout_tokens"}


def test_a_noise_study_trains_the_ordinary_seed_zero_run_once(tmp_path, small_corpus):
    sets = {"data": str(small_corpus)}
    study = noise_plan(NoiseRequest(preset="micro", arm="qkv_bias", seeds=2, replicates=3, sets=sets, tokens=2000).check(),
                       1, False, tmp_path)
    ordinary = build_plan(SweepRequest(("qkv_bias",), seeds=(0, 1), preset="micro", sets=sets, tokens=2000).check(),
                          1, False, tmp_path)
    # per arm: seeds 0 and 1 ordinary, seed 1 of each source, replicas 1 and 2 (seed 0 is every source's and replica 0)
    assert len(study.specs) == 2 * 7 and len({s.identity for s in study.specs}) == 14
    assert {s.run_id for s in ordinary.specs} <= {s.run_id for s in study.specs}
    assert sorted(s.replica for s in study.specs if s.arm == "baseline") == [0, 0, 0, 0, 0, 1, 2]


def test_every_stream_fixed_with_several_seeds_is_refused(tmp_path):
    code, _, err = invoke("sweep", "qkv_bias", "--seeds", "3", "--preset", "micro", "--init-seed", "1",
                          "--data-seed", "2", "--dropout-seed", "3", "--results", str(tmp_path), "--dry-run")
    assert code == 2 and "every random stream is fixed" in err and len(err.strip().splitlines()) == 1


def test_a_sweep_rerun_with_other_memory_knobs_trains_nothing_new(tmp_path, small_corpus):
    args = ["sweep", "qkv_bias", "--seeds", "2", "--preset", "micro", "--tokens", "2000", "--data", str(small_corpus),
            "--results", str(tmp_path)]
    assert invoke(*args)[0] == 0
    before = pd.read_parquet(tmp_path / "runs.parquet")
    code, out, err = invoke(*args, "--set", "micro_batch=2", "--set", "eval_batch=5", "--set", "log_every=1",
                            "--set", "checkpoint_every=1", "--set", "compile=off", "--jobs", "1")
    assert code == 0, err
    assert out.count("already in the store") == 4
    assert pd.read_parquet(tmp_path / "runs.parquet").equals(before)


@pytest.mark.slow  # CI time: the class stays covered by a shorter test in the fast tier
def test_a_killed_run_resumes_with_another_micro_batch_and_process_count(tmp_path):
    args = ["run", "--preset", "micro", "--seed", "2", "--tokens", "150000", "--set", "checkpoint_every=40"]
    cli(*args, "--results", str(tmp_path / "straight"), check=True)
    expected = pd.read_parquet(tmp_path / "straight" / "runs.parquet").iloc[0]
    results = tmp_path / "killed"
    assert 0 < kill_mid_run(args, results) < 586, "the kill should land mid-run"
    cli(*args, "--set", "micro_batch=2", "--nproc", "2", "--results", str(results), check=True)
    row = pd.read_parquet(results / "runs.parquet")
    assert len(row) == 1 and row.iloc[0]["run_id"] == expected["run_id"] and row.iloc[0]["world_size"] == 2
    assert json.loads(row.iloc[0]["config"])["train"]["micro_batch"] == 2  # recorded for provenance
    assert row.iloc[0]["test_loss"] == pytest.approx(expected["test_loss"], abs=1e-5)
    log = (results / "runs" / expected["run_id"] / "log.txt").read_text()
    assert "=== attempt 1" in log and "torch.distributed.run" in log.split("=== attempt 1")[-1]


def test_an_old_store_is_read_without_retraining(tmp_path):
    store = tmp_path / "old"
    shutil.copytree(FIXTURE, store)
    before = pd.read_parquet(store / "runs.parquet")
    args = ["sweep", "qkv_bias", "--seeds", "2", "--preset", "micro", "--tokens", "2000", "--results", str(store)]
    code, out, err = invoke(*args, "--set", "micro_batch=4")
    assert code == 0, err
    assert out.count("already in the store") == 4 and "step 1/8" not in out
    assert pd.read_parquet(store / "runs.parquet").equals(before)
    # under another sweep name the old runs are recorded again from their results, not trained again
    code, out, err = invoke(*args, "--name", "again")
    assert code == 0, err
    rows = pd.read_parquet(store / "runs.parquet")
    again = rows[rows["sweep"] == "again"].set_index("run_id")["test_loss"]
    assert sorted(again.index) == sorted(before["run_id"])
    assert (again.sort_index() == before.set_index("run_id")["test_loss"].sort_index()).all()
    for log in store.glob("runs/*/log.txt"):
        assert log.read_text().count("=== attempt") == 1, log
    code, out, err = invoke("report", "--results", str(store), "--sweep", "micro-qkv_bias", "--format", "json")
    assert code == 0, err
    arms = {a["arm"]: a for a in json.loads(out)["sweeps"][0]["arms"]}
    assert arms["qkv_bias"]["n"] == 2 and arms["baseline"]["mean"] == pytest.approx(before[before["arm"] == "baseline"]
                                                                                    ["test_loss"].mean())


def test_a_changed_corpus_is_another_experiment(tmp_path, small_corpus):
    data = tmp_path / "corpus.txt"
    shutil.copy(small_corpus, data)
    request = SweepRequest(("qkv_bias",), seeds=(0,), preset="micro", sets={"data": str(data)}, tokens=2000).check()
    first = build_plan(request, 1, False, tmp_path / "r")
    data.write_text(data.read_text().replace("king", "queen"))
    second = build_plan(request, 1, False, tmp_path / "r")
    assert {s.run_id for s in first.specs}.isdisjoint(s.run_id for s in second.specs)
    assert first.specs[0].data_id != second.specs[0].data_id


def test_one_rule_for_the_attempt_that_counts(tmp_path):
    """Attempts completed (A), completed again (B: a re-recording that disagrees), completed with a
    NaN loss: the three rules of old (first final: status and sweep; latest completed: export;
    latest finite completed: report) picked A, the NaN and B. Every reader now takes A."""
    from harness.report.outcomes import load_store, resolve_outcomes
    from harness.report.status import status_payload
    from harness.store.planfile import save_plan
    from harness.training.export import locate_run

    plan = build_plan(SweepRequest(("baseline",), seeds=(0,), preset="micro", tokens=1000, name="s").check(), 1, False,
                      tmp_path)
    save_plan(plan)
    spec = plan.specs[0]
    store = ResultsStore(tmp_path)
    for attempt, loss in ((1, 3.0), (2, 3.5), (3, math.nan)):
        store.append(RunRow.of(spec, attempt, RunResult(status="completed", test_loss=loss), run_dir="x"))
    rows = store.history("s", spec.run_id).rows
    assert counted(rows)["test_loss"] == 3.0 and store.history("s", spec.run_id).counted["attempt"] == 1
    assert status_payload(tmp_path)["s"]["runs"][0]["test_loss"] == 3.0
    assert store.run_row(spec.run_id)["test_loss"] == 3.0
    (tmp_path / "runs" / spec.run_id).mkdir(parents=True, exist_ok=True)
    (tmp_path / "runs" / spec.run_id / "spec.json").write_text(spec.to_json())
    assert locate_run(spec.run_id, tmp_path).row["test_loss"] == 3.0
    outcome = resolve_outcomes(load_store(tmp_path).runs)
    assert len(outcome) == 1 and outcome.iloc[0]["test_loss"] == 3.0 and outcome.iloc[0]["attempts"] == 3
