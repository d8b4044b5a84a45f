"""A new version of harness never orphans a results store (harness.core.scheme): a key added at its
neutral value changes no identity, plan or comparison; one that changes what runs compute makes
another experiment; a record from a newer harness is refused by name, not misread; and a change
of a key's meaning is the one, explicit way to change identities.

tests/fixtures/store-v1 was recorded by this version: SWEEP, ADAPTIVE and LADDER on the embedded
corpus (checkpoints removed)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from conftest import cli, invoke, newer_harness
from harness.core import scheme
from harness.core.config import MODEL_KEYS, TRAIN_KEYS

FIXTURES = Path(__file__).parent / "fixtures"
SWEEP = ["sweep", "qkv_bias", "--seeds", "2", "--preset", "micro", "--tokens", "2000"]
ADAPTIVE = ["sweep", "qkv_bias", "--until-decided", "--min-seeds", "2", "--max-seeds", "3", "--preset", "micro",
            "--tokens", "2000", "--name", "adaptive"]
LADDER = ["ladder", "qkv_bias", "--preset", "micro", "--sizes", "1x16,1x32", "--seeds", "2", "--set",
          "tokens_per_param=0.5", "--name", "lad", "--jobs", "1"]
# the same switch, on by default: the baseline of the new version computes something else
NON_NEUTRAL = ('    qk_norm: bool = documented(True, "RMS-normalise queries and keys", neutral=False)\n',
               '    z_loss: float = documented(0.0, "weight of the squared log-partition term in the loss")\n')


@pytest.fixture
def store(tmp_path) -> Path:
    shutil.copytree(FIXTURES / "store-v1", tmp_path / "store")
    return tmp_path / "store"


def numbers(report_json: str) -> dict:
    """What a report says about each sweep and ladder (its plots' paths and provenance aside)."""
    data = json.loads(report_json)
    sweeps = {s["sweep"]: {k: v for k, v in s.items() if k not in ("plots", "provenance")} for s in data["sweeps"]}
    return {"sweeps": sweeps, "ladders": data["ladders"], "warnings": data["warnings"]}


def test_every_recorded_identity_is_what_this_version_computes():
    """The scheme's hash of each fixture row's config is the experiment hash the row recorded.
    (store-v0 predates identities: its runs are found by their legacy key, tests/test_identity.py.)"""
    rows = pd.read_parquet(FIXTURES / "store-v1" / "runs.parquet")
    assert rows["identity_scheme"].eq(1).all()
    for row in rows.to_dict("records"):
        config = json.loads(row["config"])
        assert scheme.experiment_hash(config, row["planned_tokens"], row["tokens_per_step"],
                                      row["data_id"]) == row["config_hash"], row["run_id"]


def test_a_key_of_scheme_1_is_known_or_retired_with_its_neutral_value():
    """Scheme 1's keys are hashed whatever their value: retiring one without its neutral value
    (core.config.Retired) would change every identity. A config at every default records exactly
    them: no later key enters at its neutral value."""
    assert scheme.SCHEME_1_KEYS <= set(scheme.NEUTRAL)
    config = scheme.recorded({"model": {}, "train": {}})
    assert set(config["model"]) | set(config["train"]) == scheme.SCHEME_1_KEYS & (MODEL_KEYS | TRAIN_KEYS)


def test_a_version_that_adds_neutral_keys_continues_every_sweep_without_training(store, tmp_path):
    """The issue's case: a store recorded by this version, then a version with one more model key
    and one more training key, both off by default. Every sweep, the adaptive one and the ladder
    continue under their names, train nothing, and report and status say what they said."""
    reported = invoke("report", "--results", str(store), "--format", "json", "--out", str(tmp_path / "reports"))
    status = invoke("status", "--results", str(store), "--json")
    assert reported[0] == 0 and status[0] == 0, reported[2] + status[2]
    runs = pd.read_parquet(store / "runs.parquet")
    env = newer_harness(tmp_path / "newer")
    keys = cli("list", "--keys", cwd=tmp_path, env=env, check=True).stdout
    assert "qk_norm" in keys and "z_loss" in keys  # the newer version is the one that runs
    for args in (SWEEP, ADAPTIVE, LADDER):
        done = cli(*args, "--results", str(store), cwd=tmp_path, env=env)
        assert done.returncode == 0, done.stderr
        assert "already in the store" in done.stdout and "step 1/" not in done.stdout, done.stdout
    assert pd.read_parquet(store / "runs.parquet").equals(runs)
    again = cli("report", "--results", str(store), "--format", "json", "--out", str(tmp_path / "reports"), cwd=tmp_path,
                env=env, check=True).stdout
    assert numbers(again) == numbers(reported[1])
    now = cli("status", "--results", str(store), "--json", cwd=tmp_path, env=env, check=True).stdout
    assert json.loads(now) == json.loads(status[1])


def test_a_key_added_away_from_neutral_is_another_experiment(store, tmp_path):
    env = newer_harness(tmp_path / "newer", NON_NEUTRAL)
    for args, name in ((SWEEP, "sweep 'micro-qkv_bias'"), (ADAPTIVE, "sweep 'adaptive'")):
        refused = cli(*args, "--results", str(store), cwd=tmp_path, env=env)
        assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert name in refused.stderr and "qk_norm false -> true" in refused.stderr
        assert "give a new --name" in refused.stderr
    ladder = cli(*LADDER, "--results", str(store), cwd=tmp_path, env=env)
    assert ladder.returncode == 2 and "qk_norm false -> true" in ladder.stderr, ladder.stderr
    # under a new name it plans its own runs: none of the store's is taken for one of them
    plan = cli(*SWEEP, "--name", "qk", "--results", str(store), "--dry-run", cwd=tmp_path, env=env, check=True).stdout
    assert "4 runs" in plan and "already" not in plan


def test_a_record_from_a_newer_harness_is_refused_by_name_not_misread(tmp_path, small_corpus):
    """A newer version records a run with its new key set; this version refuses to read it (one
    line naming the key) in the report and in a sweep that would continue it. A newer version's
    run with its new key at neutral is one this version reads."""
    results = tmp_path / "r"
    env = newer_harness(tmp_path / "newer")
    args = ["sweep", "baseline", "--seeds", "1", "--preset", "micro", "--tokens", "512", "--data", str(small_corpus),
            "--results", str(results)]
    cli(*args, "--name", "neutral", cwd=tmp_path, env=env, check=True)
    assert invoke("report", "--results", str(results), "--sweep", "neutral", "--out", str(tmp_path / "out") + "/")[0] == 0
    cli(*args, "--name", "on", "--set", "qk_norm=true", cwd=tmp_path, env=env, check=True)
    out = str(tmp_path / "out") + "/"
    for command in (["report", "--results", str(results), "--sweep", "on", "--out", out], [*args, "--name", "on"]):
        code, _, err = invoke(*command)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "'qk_norm'" in err and "newer harness" in err, err
    assert invoke(*args, "--name", "neutral")[0] == 0


def test_a_meaning_change_is_the_one_way_to_change_identities(store, monkeypatch):
    """Identity scheme 2 says qkv_bias = true computes something else from now on: the baseline's
    runs stay the baseline's, the arm's are another experiment (refused under the sweep's name,
    trained again under a new one, with a note on the runs not reused), and the report keeps the
    two apart."""
    change = scheme.MeaningChange(2, "qkv_bias", "the biases start at 0.01", (True,))
    monkeypatch.setattr(scheme, "MEANING_CHANGES", (change,))
    code, _, err = invoke(*SWEEP, "--results", str(store), "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "qkv_bias meaning" in err, err
    code, out, err = invoke(*SWEEP, "--name", "scheme2", "--results", str(store))
    assert code == 0, err
    assert "baseline seed 0 step" not in out and "qkv_bias seed 0 step 8/8" in out  # the baseline's runs reused
    assert "2 run(s) of this store" in " ".join(out.split())
    assert "recorded before qkv_bias meaning (identity scheme 2: the biases start at 0.01)" in " ".join(out.split())
    rows = pd.read_parquet(store / "runs.parquet")
    new = rows[rows["sweep"].eq("scheme2")]
    assert sorted(new["identity_scheme"]) == [2, 2, 2, 2]
    old = rows[rows["sweep"].eq("micro-qkv_bias")].set_index("run_id")
    assert set(new[new["arm"].eq("baseline")]["run_id"]) <= set(old.index)
    assert set(new[new["arm"].eq("qkv_bias")]["run_id"]).isdisjoint(old.index)
    # the old sweep still reports (its rows are of scheme 1 and agree with each other)
    out = str(store.parent / "out") + "/"
    assert invoke("report", "--results", str(store), "--sweep", "micro-qkv_bias", "--out", out)[0] == 0
    # a comparison of an old run with a new one names the change
    from harness.report.sameness import facts

    (old_arm,) = list(rows[rows["sweep"].eq("micro-qkv_bias") & rows["arm"].eq("qkv_bias")].head(1).itertuples())
    (new_arm,) = list(new[new["arm"].eq("qkv_bias")].head(1).itertuples())
    assert "qkv_bias meaning" not in facts(old_arm, True) and "qkv_bias meaning" in facts(new_arm, True)
