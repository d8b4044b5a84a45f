"""`harness run` end to end: exact budgets, 1 vs 2 processes, resume after SIGKILL, divergence."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from conftest import cli, kill_mid_run

NO_DROPOUT = ["--set", "drop_rate=0"]


def runs(results: Path) -> pd.DataFrame:
    return pd.read_parquet(results / "runs.parquet")


def test_chinchilla_json_reproduces_reference_numbers():
    out = cli("chinchilla", "--preset", "gpt2-small", "--nproc", "8", "qkv_bias", "weight_tying", "--json", check=True)
    rows = {r["arm"]: r for r in json.loads(out.stdout)}
    assert rows["qkv_bias"]["params"] == 163_037_184 and rows["qkv_bias"]["raw_tokens"] == 3_260_743_680
    assert rows["weight_tying"]["params"] == 124_412_160
    base = json.loads(cli("chinchilla", "--preset", "gpt2-small", "--nproc", "8", "--json", check=True).stdout)[0]
    assert {k: base[k] for k in ("params", "raw_tokens", "tokens", "steps", "tokens_per_step")} == {
        "params": 163_009_536, "raw_tokens": 3_260_190_720, "tokens": 3_260_252_160, "steps": 33_165,
        "tokens_per_step": 98_304}
    assert set(base) >= {"arm", "params", "non_embedding_params", "raw_tokens", "tokens", "steps", "tokens_per_step"}


def test_list_shows_presets_and_interventions():
    out = cli("list", check=True).stdout
    for name in ("gpt2-small", "tiny", "qkv_bias", "sliding_window", "stacked"):
        assert name in out


def test_run_records_one_exact_row(tmp_path):
    out = cli("run", "qkv_bias", "--preset", "micro", "--seed", "3", "--tokens", "5000", "--results", str(tmp_path), check=True)
    df = runs(tmp_path)
    assert len(df) == 1
    row = df.iloc[0]
    assert row["status"] == "completed" and row["arm"] == "qkv_bias" and row["seed"] == 3
    assert row["tokens_seen"] == row["planned_tokens"] == 20 * 256  # rounded up to whole steps of 8 x 32
    assert row["steps"] == 20 and row["world_size"] == 1 and row["test_tokens"] > 400_000
    assert f"{row['test_loss']:.6f}" in out.stdout
    assert json.loads(row["config"])["model"]["qkv_bias"] is True
    curves = pd.read_parquet(tmp_path / "curves.parquet")
    assert (curves["run_id"] == row["run_id"]).sum() == 20 and curves["step"].max() == 20
    ckpt = Path(row["run_dir"]) / "checkpoint"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "meta.json").exists()
    # running it again does nothing: the run is in the store already
    again = cli("run", "qkv_bias", "--preset", "micro", "--seed", "3", "--tokens", "5000", "--results", str(tmp_path), check=True)
    assert len(runs(tmp_path)) == 1 and "test loss" in again.stdout


def test_one_and_two_processes_train_the_same_experiment(tmp_path):
    """The preset fixes the global batch (8 sequences); 2 processes take 4 each, 1 process takes them
    in 2 micro-steps of 4. Same budget, steps, batches and dropout masks: the same test loss to
    float tolerance (only the order of the gradient sums differs)."""
    common = ["--preset", "micro", "--seed", "1", "--tokens", "6000", "--set", "micro_batch=4"]
    cli("run", *common, "--nproc", "2", "--results", str(tmp_path / "two"), check=True)
    cli("run", *common, "--nproc", "1", "--results", str(tmp_path / "one"), check=True)
    two, one = runs(tmp_path / "two").iloc[0], runs(tmp_path / "one").iloc[0]
    assert two["world_size"] == 2 and one["world_size"] == 1 and two["run_id"] == one["run_id"]
    assert (two["tokens_seen"], two["steps"]) == (one["tokens_seen"], one["steps"]) == (6144, 24)
    assert one["test_loss"] == pytest.approx(two["test_loss"], abs=1e-5)


def test_killed_run_resumes_to_a_bit_identical_test_loss(tmp_path):
    args = ["run", "--preset", "micro", "--seed", "2", "--tokens", "150000", "--set", "checkpoint_every=40"]
    cli(*args, "--results", str(tmp_path / "straight"), check=True)
    expected = runs(tmp_path / "straight").iloc[0]["test_loss"]

    results = tmp_path / "killed"
    assert 0 < kill_mid_run(args, results) < 586, "the kill should land mid-run"
    assert not (results / "runs.parquet").exists()
    cli(*args, "--results", str(results), check=True)
    df = runs(results)
    assert len(df) == 1 and df.iloc[0]["test_loss"] == expected  # bit-identical on CPU
    assert "attempt 1" in (Path(df.iloc[0]["run_dir"]) / "log.txt").read_text()


def test_divergence_is_recorded_with_its_step(tmp_path):
    proc = cli("run", "--preset", "micro", "--tokens", "20000", "--set", "lr=1e30", "--set", "log_every=1",
               "--results", str(tmp_path))
    assert proc.returncode == 1
    row = runs(tmp_path).iloc[0]
    assert row["status"] == "diverged" and row["diverged_step"] >= 1 and "non-finite" in row["reason"]
    assert pd.isna(row["test_loss"])


@pytest.mark.parametrize("args, message", [
    (["run", "--preset", "tinny"], "unknown preset 'tinny' (did you mean 'tiny'?)"),
    (["run", "qkv_bais"], "unknown intervention 'qkv_bais' (did you mean 'qkv_bias'?)"),
    (["run", "rope+nope"], "conflict"),
    (["run", "--seed", "-1"], "seeds must be >= 0, got -1"),
    (["run", "--nproc", "0"], "--nproc must be >= 1"),
    (["run", "--preset", "micro", "--tokens", "10"], "below one step"),
    (["run", "--preset", "micro", "--set", "data=/nonexistent/corpus"], "/nonexistent/corpus"),
    (["run", "--preset", "gpt2-small", "--tokens", "100000000"], "epochs"),
    (["chinchilla", "--set", "lr"], "KEY=VALUE"),
])
def test_bad_input_is_one_clear_line_and_exit_2(tmp_path, args, message):
    proc = cli(*args, "--results", str(tmp_path / "r")) if args[0] == "run" else cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr + proc.stdout
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "r" / "runs.parquet").exists()


def test_empty_data_folder_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = cli("run", "--preset", "micro", "--set", f"data={tmp_path / 'empty'}", "--results", str(tmp_path / "r"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert str(tmp_path / "empty") in proc.stderr


def test_unwritable_results_folder_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    proc = cli("run", "--preset", "micro", "--tokens", "5000", "--results", str(blocker / "results"))
    assert proc.returncode == 2 and "not writable" in proc.stderr and "Traceback" not in proc.stderr
