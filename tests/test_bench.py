"""`harness bench`: end to end on the micro preset (seconds), its results row, and its pieces."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from conftest import cli
from harness.training import bench
from harness.training.bench import BENCH_FILE, BENCH_SCHEMA, append_row, peak_flops
from harness.store.results import ResultsStore

FAST = ["--preset", "micro", "--warmup", "1", "--steps", "2"]


def rows(results) -> pd.DataFrame:
    return pd.read_parquet(results / BENCH_FILE)


def test_bench_prints_every_figure_and_appends_a_row(tmp_path):
    out = cli("bench", *FAST, "--set", "lr=1e-3", "--results", str(tmp_path), check=True).stdout
    for field in ("bench: preset micro, arm baseline", "cpu, 1 CPU thread", "tokens/step", "ms/step",
                  "tokens/s", "MFU: n/a (no bf16 peak known for CPU)", "peak memory:", "process peak RSS",
                  "eval:", "inference mode", "training's per-token speed", "recorded:"):
        assert field in out, field
    df = rows(tmp_path)
    assert len(df) == 1 and list(df.columns) == BENCH_SCHEMA.names
    row = df.iloc[0]
    assert row["preset"] == "micro" and row["arm"] == "baseline" and row["device_type"] == "cpu"
    assert row["steps"] == 2 and row["warmup"] == 1 and row["tokens_per_step"] == 8 * 32
    assert row["train_tokens_per_s"] > 0 and row["eval_tokens_per_s"] > 0 and row["train_step_s"] > 0
    assert row["eval_vs_train_per_token"] == pytest.approx(row["eval_tokens_per_s"] / row["train_tokens_per_s"])
    assert pd.isna(row["mfu"]) and row["peak_flops_source"] == "no bf16 peak known for CPU"
    assert row["train_peak_memory_bytes"] > 0 and row["eval_batch"] == 2048 // 32
    assert json.loads(row["config"])["train"]["lr"] == 1e-3 and json.loads(row["overrides"]) == {"lr": 1e-3}
    assert row["torch"] == torch.__version__ and "torch" in json.loads(row["versions"])
    assert pd.isna(row["book_ratio_median"])


def test_compare_book_times_both_interleaved_and_appends(tmp_path):
    cli("bench", *FAST, "--results", str(tmp_path), check=True)
    out = cli("bench", *FAST, "--arm", "qkv_bias+no_dropout", "--compare-book", "--no-compile",
              "--results", str(tmp_path), check=True).stdout
    assert "book:  2 interleaved pairs" in out and "ours/book speed:" in out and "x median over pairs" in out
    df = rows(tmp_path)
    assert len(df) == 2
    row = df.iloc[1]
    assert row["arm"] == "qkv_bias+no_dropout" and json.loads(row["config"])["model"]["qkv_bias"] is True
    assert row["book_pairs"] == 2 and row["book_tokens_per_s"] > 0 and row["ours_tokens_per_s"] > 0
    assert row["book_ratio_min"] <= row["book_ratio_median"] <= row["book_ratio_max"]
    assert not row["compile"]


@pytest.mark.parametrize("args, message", [
    (["--steps", "0"], "--steps must be >= 1"),
    (["--warmup", "-1"], "--warmup must be >= 0"),
    (["--set", "lr"], "KEY=VALUE"),
    (["--arm", "qkv_bais"], "did you mean 'qkv_bias'"),
    (["--preset", "tinny"], "did you mean 'tiny'"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, message):
    proc = cli("bench", *FAST, *args, "--results", str(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not (tmp_path / BENCH_FILE).exists()


@pytest.mark.parametrize("name, peak", [
    ("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA A100-SXM4-40GB", 312e12), ("NVIDIA A100 80GB PCIe", 312e12),
    ("NVIDIA H100 PCIe", 756e12), ("NVIDIA H200", 989e12), ("NVIDIA GeForce RTX 4090", None),
])
def test_mfu_peak_by_device_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    found, label = peak_flops(torch.device("cuda", 0))
    assert found == peak
    assert (str(round(peak / 1e12)) in label) if peak else ("no bf16 peak known for " + name) == label
    assert peak_flops(torch.device("cpu")) == (None, "no bf16 peak known for CPU")


def test_append_row_keeps_earlier_rows_and_fills_missing_fields(tmp_path):
    store = ResultsStore(tmp_path)
    append_row(store, {"preset": "a", "train_tokens_per_s": 1.0, "compile": False})
    append_row(store, {"preset": "b", "mfu": 0.5, "book_pairs": 3})
    df = rows(tmp_path)
    assert df["preset"].tolist() == ["a", "b"] and df["mfu"].isna().tolist() == [True, False]
    assert not list(tmp_path.glob(".bench.parquet.*"))  # no temporary file left behind


def test_spread_of_ratios():
    s = bench._spread([1.0, 2.0, 3.0, 4.0, 5.0])
    assert s == {"median": 3.0, "q1": 2.0, "q3": 4.0, "min": 1.0, "max": 5.0}
    assert bench._spread([2.5])["median"] == 2.5


def test_a_code_intervention_is_timed_as_it_trains(tmp_path):
    """bench builds the arm's network as its code changes it (it timed the baseline's before): the gate
    parameters it adds show in the count."""
    folder = tmp_path / "defs" / "interventions"
    folder.mkdir(parents=True)
    (folder / "gate.toml").write_text('code = "gate.py"\n')
    (folder / "gate.py").write_text("import torch\nfrom torch import nn\n\n\ndef convert(model, ctx):\n"
                                    "    for b in model.trf_blocks:\n        b.att.gate = nn.Parameter(torch.empty(3))\n\n\n"
                                    "def init(name, param, generator, ctx):\n    if name.endswith('.gate'):\n"
                                    "        return torch.ones(param.shape)\n")
    base = rows_after(tmp_path / "a", "baseline", tmp_path / "defs")
    gate = rows_after(tmp_path / "b", "gate", tmp_path / "defs")
    assert gate["params"] == base["params"] + 3  # micro: one block


def rows_after(results, arm: str, sweeps) -> pd.Series:
    cli("bench", *FAST, "--arm", arm, "--sweeps", str(sweeps), "--results", str(results), check=True)
    return rows(results).iloc[-1]
