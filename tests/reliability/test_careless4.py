"""Careless users, round 4: interventions that set more than the network. One test per class, each
walking the issue's instance and two others of the class:

- arms told apart by what runs compute, not by config (harness.planning.plan.identical_arms):
  a placement knob, a held-out knob, a budget rule under --tokens;
- designs whose facts derive from the arm's own keys are its treatment, and what no report can
  compare is refused before training (harness.report.sameness.DERIVED, own_budget;
  plan.check_test_sets): a batch-size study, a context study, --budget own; another test set;
- data every consumer can use, checked before training (plan.check_test_split): a test split
  shorter than a held-out window, and both remedies the message names.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import invoke


def definitions(root: Path, **interventions: str) -> Path:
    """A definitions folder with interventions NAME.toml = its [set] body."""
    folder = root / "defs"
    (folder / "interventions").mkdir(parents=True, exist_ok=True)
    for name, body in interventions.items():
        (folder / "interventions" / f"{name}.toml").write_text(f"[set]\n{body}\n")
    return folder


def report_arms(results: Path, out: Path) -> dict[str, dict]:
    code, text, err = invoke("report", "--results", str(results), "--format", "json", "--out", str(out) + "/")
    assert code == 0, err
    return {a["arm"]: a for a in json.loads(text)["sweeps"][0]["arms"]}


def one_line(code: int, err: str) -> str:
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


@pytest.mark.parametrize("body, extra, key", [
    ("micro_batch = 4", (), "micro_batch"),  # the instance: a placement knob alone
    ("heldout_points = 3", (), "heldout_points"),
    ("tokens_per_param = 5.0", ("--tokens", "2048"), "tokens_per_param"),  # a budget rule, under a fixed budget
])
def test_an_arm_that_computes_what_the_baseline_computes_is_planned_once_and_never_compared(
        tmp_path, small_corpus, body, extra, key):
    folder = definitions(tmp_path, same=body)
    args = ["sweep", "same", "qkv_bias", "--seeds", "2", "--preset", "micro", "--data", str(small_corpus),
            "--results", str(tmp_path / "r"), "--sweeps", str(folder), *(extra or ("--tokens", "2048"))]
    code, out, err = invoke(*args)
    assert code == 0, err
    said = " ".join(out.split())
    assert f"arm 'same' trains exactly the configuration of 'baseline' (it differs only in {key}" in said
    rows = pd.read_parquet(tmp_path / "r" / "runs.parquet")
    assert sorted(rows["arm"].unique()) == ["baseline", "qkv_bias"] and len(rows) == 4
    assert set(report_arms(tmp_path / "r", tmp_path / "o")) == {"baseline", "qkv_bias"}
    code, out, err = invoke("status", "--results", str(tmp_path / "r"), "--json")
    assert code == 0 and "same" not in json.loads(out)[next(iter(json.loads(out)))]["arms"]


@pytest.mark.parametrize("body", ["global_batch = 16", "context_length = 16"])
def test_a_batch_size_or_context_study_is_reported_with_its_own_tokens_per_step(tmp_path, small_corpus, body):
    """The issue's instance (global_batch) and a context study: the facts derived from what the arm
    sets (tokens per step, its budget in whole global batches) are its treatment."""
    folder = definitions(tmp_path, study=body)
    code, out, err = invoke("sweep", "study", "--seeds", "2", "--preset", "micro", "--tokens", "3000", "--data",
                            str(small_corpus), "--results", str(tmp_path / "r"), "--sweeps", str(folder))
    assert code == 0, err
    rows = pd.read_parquet(tmp_path / "r" / "runs.parquet")
    assert rows.groupby("arm")["tokens_per_step"].first().nunique() == 2
    arms = report_arms(tmp_path / "r", tmp_path / "o")
    assert arms["study"]["verdict"] not in ("", None) and arms["study"]["n"] == 2
    assert "differs" not in json.dumps(arms["study"])


def test_budget_own_is_reported_and_a_real_budget_mismatch_still_is_not(tmp_path, small_corpus):
    results = tmp_path / "r"
    code, _, err = invoke("sweep", "qkv_bias", "weight_tying", "--budget", "own", "--seeds", "2", "--preset", "micro",
                          "--set", "tokens_per_param=0.1", "--data", str(small_corpus), "--results", str(results))
    assert code == 0, err
    rows = pd.read_parquet(results / "runs.parquet")
    assert rows.groupby("arm")["planned_tokens"].first().nunique() == 2  # weight_tying: its own, smaller count
    arms = report_arms(results, tmp_path / "o")
    assert set(arms) == {"baseline", "qkv_bias", "weight_tying"}
    # the same rows under matched budgets but one arm trained on another count: refused, as before
    from harness.report.outcomes import _normalise_runs, resolve_outcomes
    from harness.report.sameness import differences

    mixed = rows.copy()
    mixed.loc[mixed["arm"].eq("qkv_bias"), "planned_tokens"] = 2304
    texts = [d.text for d in differences(resolve_outcomes(_normalise_runs(mixed, print)),
                                         ["baseline", "qkv_bias"], "baseline")]
    assert any("token budget" in t and "between arms" in t for t in texts), texts


def test_an_arm_on_another_test_set_is_refused_before_training(tmp_path, small_corpus):
    """Another tokenizer, or another corpus named by the intervention itself (--data would set it for
    every arm, which is fine)."""
    for name, body in (("bpe", 'tokenizer = "gpt2"\nvocab_size = 50257'), ("other", f'data = "{small_corpus}"')):
        folder = definitions(tmp_path, **{name: body})
        code, _, err = invoke("sweep", name, "--seeds", "1", "--preset", "micro", "--tokens", "2048",
                              "--results", str(tmp_path / "r"), "--sweeps", str(folder))
        assert "another test set" in one_line(code, err)
        assert not (tmp_path / "r" / "runs.parquet").exists()


def short_corpus(tmp_path: Path, test_line: str) -> Path:
    """A text whose test split (its last line: harness.data.corpus splits at the line nearest 90%)
    is `test_line`."""
    path = tmp_path / "short.txt"
    path.write_text("\n".join(f"the king shall speak of love and war {i}" for i in range(9)) + f"\n{test_line}\n")
    return path


def test_data_that_a_consumer_cannot_use_is_one_line_before_training_and_the_remedy_works(tmp_path):
    data = short_corpus(tmp_path, "my lord thou art")  # 17 test tokens: shorter than a 33-token window
    args = ["sweep", "qkv_bias", "--seeds", "1", "--preset", "micro", "--tokens", "256", "--data", str(data),
            "--results", str(tmp_path / "r")]
    line = one_line(*invoke(*args)[::2])
    assert "context_length + 1 = 33 tokens" in line and "has 17" in line and "heldout_tokens=0" in line
    assert not (tmp_path / "r" / "runs.parquet").exists()
    code, out, err = invoke(*args, "--set", "heldout_tokens=0")  # the remedy the line names
    assert code == 0, err
    assert pd.read_parquet(tmp_path / "r" / "runs.parquet")["status"].eq("completed").all()
    code, out, err = invoke(*args, "--set", "heldout_points=0", "--name", "no-points")  # the other remedy
    assert code == 0, err


def test_tokens_to_match_is_read_only_off_arms_whose_mid_run_points_are_shorter_runs(tmp_path, small_corpus):
    """The issue's instance (an arm with a cosine schedule against the constant baseline), an arm
    whose code schedules by step (Muon's momentum seam: harness cannot tell it does not depend on the
    run's length), and an arm on the baseline's constant schedule, for which it is computed."""
    folder = definitions(tmp_path, cos='lr_schedule = "cosine"')
    results = tmp_path / "r"
    code, _, err = invoke("sweep", "cos", "muon", "qkv_bias", "--seeds", "3", "--preset", "micro", "--tokens", "4096",
                          "--data", str(small_corpus), "--results", str(results), "--sweeps", str(folder))
    assert code == 0, err
    code, text, err = invoke("report", "--results", str(results), "--format", "json", "--out", str(tmp_path / "o") + "/")
    assert code == 0, err
    worth = {a["arm"]: a for a in json.loads(text)["sweeps"][0]["worth"]["arms"]}
    assert "cosine schedule depends on the run's length" in worth["cos"]["note"]
    assert "muon code's schedule" in worth["muon"]["note"]
    for arm in ("cos", "muon"):
        assert worth[arm]["match"] is None or worth[arm]["match"] != worth[arm]["match"]  # no number (NaN)
    assert worth["qkv_bias"]["match_state"] != "" and "schedule" not in worth["qkv_bias"]["note"]


def test_a_ladders_text_says_what_its_rungs_use_not_a_default():
    """The issue's instance (the plan said 20 tokens per parameter under --set tokens_per_param=0.5),
    the same in the saved record the report reads, and a --smallest below what the family can build
    (raised silently before: now said, with by how much)."""
    from harness.core.definitions import Library
    from harness.planning.ladder import LadderRequest, build_ladder
    from harness.store.planfile import ladder_record

    request = LadderRequest(arms=("qkv_bias",), preset="micro", rungs=3, smallest=0.001, largest=1.0, seeds=(0,),
                            sets={"tokens_per_param": 0.5})
    ladder = build_ladder(request, 1, False, Path("/nonexistent-results"), Library.from_environment())
    said = " ".join(ladder.notes)
    assert "each rung 0.5 tokens per parameter" in said and "20 tokens per parameter" not in said
    assert "each rung 0.5 tokens per parameter" in ladder_record(ladder)["scheme"]
    assert "398x the --smallest 0.001 asked for" in said


def test_the_remedy_for_mixed_held_out_subsets_works(tmp_path, small_corpus):
    """Seeds recorded with two heldout_tokens: the report gives neither k nor averaged held-out curves
    and names the remedy; following it (a new --results folder, one heldout_tokens) gives k. Rerunning
    in the same folder with one heldout_tokens would train nothing (a placement key) and fix nothing."""
    base = ["sweep", "qkv_bias", "--preset", "micro", "--tokens", "4096", "--data", str(small_corpus)]
    mixed = tmp_path / "mixed"
    assert invoke(*base, "--seed-list", "0,1", "--set", "heldout_tokens=512", "--results", str(mixed))[0] == 0
    assert invoke(*base, "--seed-list", "2", "--set", "heldout_tokens=1024", "--results", str(mixed))[0] == 0

    def worth(results: Path) -> dict:
        code, text, err = invoke("report", "--results", str(results), "--format", "json", "--out",
                                 str(tmp_path / "o") + "/")
        assert code == 0, err
        return json.loads(text)["sweeps"][0]["worth"]

    before = worth(mixed)
    assert "new --results folder with one heldout_tokens" in before["note"]
    assert not before["heldout_curves"] and all(a["k"] != a["k"] or a["k"] is None for a in before["arms"])
    fresh = tmp_path / "fresh"
    assert invoke(*base, "--seed-list", "0,1,2", "--set", "heldout_tokens=512", "--results", str(fresh))[0] == 0
    after = worth(fresh)
    assert not after["note"] and after["heldout_curves"]
    assert after["arms"] and all(a["state"] for a in after["arms"])  # k computed (in or beyond the range)


def test_a_shard_folder_whose_test_split_is_shorter_than_a_window_is_one_line(tmp_path):
    """The same consumer reached through a shard folder (train.bin, test.bin as they are): 20 test
    tokens against the held-out subset's 33-token windows."""
    import numpy as np

    shards = tmp_path / "shards"
    shards.mkdir()
    np.random.default_rng(0).integers(0, 256, 5000).astype(np.uint16).tofile(shards / "train.bin")
    np.random.default_rng(1).integers(0, 256, 20).astype(np.uint16).tofile(shards / "test.bin")
    args = ["sweep", "qkv_bias", "--seeds", "1", "--preset", "micro", "--tokens", "256", "--data", str(shards),
            "--results", str(tmp_path / "r")]
    assert "but the test split" in one_line(*invoke(*args)[::2])
    assert invoke(*args, "--set", "heldout_tokens=0")[0] == 0


def test_the_options_help_states_the_defaults_the_code_uses(monkeypatch):
    """Help text derives its defaults from their one home (it wrote 5, 20, 3, 0.05, 3, 0.125 by hand)."""
    from harness.planning.adaptive import DEFAULT_ALPHA
    from harness.planning.ladder import LadderRequest
    from harness.planning.request import DEFAULT_SEEDS
    from harness.stats.sequential import DEFAULT_MAX_SEEDS, DEFAULT_MIN_SEEDS

    monkeypatch.setenv("COLUMNS", "400")  # one line per option: nothing wrapped inside the help's table
    ladder = " ".join(invoke("ladder", "--help")[1].split())
    sweep = " ".join(invoke("sweep", "--help")[1].split())
    request = LadderRequest(arms=("qkv_bias",))
    for text, default in ((ladder, f"(default {request.rungs})"), (ladder, f"(default {request.smallest:g})"),
                          (sweep, f"(default {DEFAULT_SEEDS})"), (sweep, f"(default {DEFAULT_MAX_SEEDS})"),
                          (sweep, f"(default {DEFAULT_MIN_SEEDS})"), (sweep, f"(default {DEFAULT_ALPHA:g})")):
        assert default in text, default


def test_an_arm_listed_before_the_baseline_that_computes_the_same_keeps_the_baseline(tmp_path, small_corpus):
    folder = definitions(tmp_path, same="micro_batch = 4")
    code, out, err = invoke("sweep", "same", "baseline", "qkv_bias", "--seeds", "1", "--preset", "micro", "--tokens",
                            "2048", "--data", str(small_corpus), "--results", str(tmp_path / "r"), "--sweeps",
                            str(folder), "--dry-run")
    assert code == 0, err
    assert "arm 'same' trains exactly the configuration of 'baseline'" in " ".join(out.split())


def test_a_batch_size_arm_on_another_budget_is_still_a_mismatch(tmp_path, small_corpus):
    """The batch-size study's budget may differ from the baseline's by rounding to its own whole steps,
    not by more (another --tokens recorded under the same arm is a mismatch)."""
    from harness.report.outcomes import _normalise_runs, resolve_outcomes
    from harness.report.sameness import differences

    folder = definitions(tmp_path, study="global_batch = 16")
    code, _, err = invoke("sweep", "study", "--seeds", "2", "--preset", "micro", "--tokens", "3000", "--data",
                          str(small_corpus), "--results", str(tmp_path / "r"), "--sweeps", str(folder))
    assert code == 0, err
    rows = pd.read_parquet(tmp_path / "r" / "runs.parquet")
    check = lambda r: [d.text for d in differences(resolve_outcomes(_normalise_runs(r, print)),  # noqa: E731
                                                   ["baseline", "study"], "baseline")]
    assert check(rows) == []
    rows.loc[rows["arm"].eq("study"), "planned_tokens"] += 10 * 16 * 32
    assert any("token budget" in t for t in check(rows))
