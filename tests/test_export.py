"""`harness export --format hf`: transformers' GPT2LMHeadModel loads the folder and reproduces the
logits of harness's model (fp32, max abs difference < 1e-4) for trained micro runs, tied and untied,
with and without qkv bias, without biases, with a padded vocabulary; other arms are refused."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from conftest import cli, invoke
from harness.core.errors import UserError
from harness.training.export import export_run, load_run_model, locate_run, unsupported
from harness.training.generate import generate_ids
from harness.model.config import ModelConfig

transformers = pytest.importorskip("transformers")
COMBO = "qkv_bias+weight_tying+vocab_pad_64+no_bias"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A baseline run (untied head, no qkv bias) and a COMBO run, each trained a few steps."""
    results = tmp_path_factory.mktemp("export-results")
    cli("sweep", COMBO, "--seeds", "1", "--preset", "micro", "--tokens", "1500", "--name", "exp",
        "--results", str(results), check=True)
    rows = pd.read_parquet(results / "runs.parquet")
    assert set(rows["status"]) == {"completed"}
    return results, dict(zip(rows["arm"], rows["run_id"]))


def hf_model(folder):
    from transformers import GPT2LMHeadModel

    return GPT2LMHeadModel.from_pretrained(str(folder)).float().eval()


def max_logit_diff(hf, ours, seed=11) -> float:
    idx = torch.randint(0, ours.cfg.vocab_size, (3, ours.cfg.context_length), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return float((hf(idx).logits - ours(idx)).abs().max())


def test_untied_baseline_exports_through_the_cli(trained, tmp_path):
    results, ids = trained
    out = tmp_path / "baseline-hf"
    proc = cli("export", ids["baseline"], "--format", "hf", "--out", str(out), "--results", str(results), check=True)
    assert "GPT2LMHeadModel reproduces harness's logits" in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["vocab_size"] == 257 and config["n_positions"] == 32
    assert config["activation_function"] == "gelu_new" and config["layer_norm_epsilon"] == 1e-5
    assert config["resid_pdrop"] == config["embd_pdrop"] == config["attn_pdrop"] == 0.1
    record = json.loads((out / "harness_export.json").read_text())
    assert record["run_id"] == ids["baseline"] and record["max_abs_logit_diff"] < 1e-4
    hf = hf_model(out)
    ours, _ = load_run_model(locate_run(ids["baseline"], results))
    assert hf.lm_head.weight.data_ptr() != hf.transformer.wte.weight.data_ptr()
    assert torch.equal(hf.lm_head.weight, ours.out_head.weight)
    assert not torch.equal(hf.lm_head.weight, hf.transformer.wte.weight)
    assert torch.equal(hf.transformer.h[0].attn.c_attn.bias, torch.zeros(96))  # qkv_bias=false -> zero biases
    assert max_logit_diff(hf, ours) < 1e-4


def test_tied_qkv_bias_no_bias_padded_vocab(trained, tmp_path):
    results, ids = trained
    run = locate_run(ids[COMBO], results)
    cfg = run.model_config
    assert cfg.tie_weights and cfg.qkv_bias and not cfg.bias and cfg.padded_vocab_size == 320
    record = export_run(run, tmp_path / "combo", check=True)
    assert record["padded_rows_dropped"] == 63 and record["max_abs_logit_diff"] < 1e-4
    hf = hf_model(tmp_path / "combo")
    assert hf.config.tie_word_embeddings is True
    assert hf.lm_head.weight.data_ptr() == hf.transformer.wte.weight.data_ptr()
    assert hf.transformer.wte.weight.shape == (257, 32)
    attn = hf.transformer.h[0].attn
    assert attn.c_attn.bias.abs().sum() > 0 and torch.equal(attn.c_proj.bias, torch.zeros(32))
    ours, _ = load_run_model(run)
    assert max_logit_diff(hf, ours) < 1e-4
    # greedy decoding agrees token for token with harness generate
    prompt = list(b"Every effort moves you")
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=8, do_sample=False, pad_token_id=256,
                             eos_token_id=None)[0, len(prompt):].tolist()
    assert theirs == generate_ids(ours, prompt, 8)


def test_gpt2_tokenizer_files_load_in_transformers(tmp_path):
    from harness.training.export import _write_gpt2_tokenizer

    _write_gpt2_tokenizer(tmp_path, 1024)
    tok = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
    assert tok("Every effort moves you")["input_ids"] == [6109, 3626, 6100, 345]
    assert tok.eos_token_id == 50256


def test_unsupported_switches_are_named():
    assert unsupported(ModelConfig()) == []
    assert unsupported(ModelConfig(qkv_bias=True, tie_weights=True, bias=False, vocab_multiple=64)) == []
    reasons = unsupported(ModelConfig(positions="rope", norm="rmsnorm", mlp="swiglu", parallel_block=True,
                                      attention_window=128))
    assert [r.split("=")[0] for r in reasons] == ["positions", "norm", "mlp", "parallel_block", "attention_window"]



def test_bad_exports_are_one_line_and_exit_2(trained, tmp_path):
    from test_generate import fake_run

    results, ids = trained
    rope, _ = fake_run(tmp_path, arm="rope", with_checkpoint=False)
    code, _, err = invoke("export", rope.run_id, "--out", str(tmp_path / "x"), "--results", str(tmp_path))
    assert code == 2 and err.count("\n") == 1
    assert "cannot be a GPT-2: positions=rope (GPT-2 has learned absolute position embeddings)" in err
    plain, _ = fake_run(tmp_path, arm="baseline", seed=3, with_checkpoint=False)
    code, _, err = invoke("export", plain.run_id, "--out", str(tmp_path / "x"), "--results", str(tmp_path))
    assert code == 2 and "has no checkpoint" in err and err.count("\n") == 1
    code, _, err = invoke("export", "nope", "--out", str(tmp_path / "x"), "--results", str(results))
    assert code == 2 and "no run 'nope'" in err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    code, _, err = invoke("export", ids["baseline"], "--out", str(tmp_path / "full"), "--results", str(results))
    assert code == 2 and "not empty" in err
    code, _, err = invoke("export", ids["baseline"], "--format", "onnx", "--out", str(tmp_path / "y"),
                          "--results", str(results))
    assert code == 2 and "--format 'onnx'" in err
    with pytest.raises(UserError, match="mlp=swiglu"):
        swiglu, _ = fake_run(tmp_path, arm="swiglu")
        export_run(locate_run(swiglu.run_id, tmp_path), tmp_path / "z")
