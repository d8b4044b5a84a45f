"""Presets, interventions, composition, overrides and Chinchilla budgets (pure units)."""

from __future__ import annotations

import json

import pytest

from harness.core import config as cfgmod
from harness.planning.budget import chinchilla, fixed_budget
from harness.core.errors import UserError
from harness.planning.plan import run_spec

REQUIRED = {"baseline", "gradient_clipping", "no_dropout", "qkv_bias", "weight_tying", "weight_decay_gpt2",
            "lr_schedule", "no_amp", "no_bias", "parallel_block", "gpt2_init", "rmsnorm", "swiglu", "rope",
            "nope", "sliding_window", "vocab_pad_64", "stacked"}


def test_every_required_intervention_ships_with_a_description():
    assert REQUIRED <= set(cfgmod.intervention_names())
    for name in cfgmod.intervention_names():
        iv = cfgmod.load_intervention(name)
        assert iv.description and iv.source, name


def test_every_intervention_resolves_on_gpt2_small():
    for name in cfgmod.intervention_names():
        cfg = cfgmod.resolve("gpt2-small", name)
        assert cfg.arm == name


def test_gpt2_small_is_the_books_config():
    cfg = cfgmod.resolve("gpt2-small")
    m, t = cfg.model, cfg.train
    assert (m.vocab_size, m.context_length, m.emb_dim, m.n_heads, m.n_layers) == (50257, 1024, 768, 12, 12)
    assert (m.drop_rate, m.qkv_bias, m.tie_weights) == (0.1, False, False)
    assert (t.lr, t.weight_decay, t.micro_batch, t.tokenizer) == (4e-4, 0.1, 12, "gpt2")


@pytest.mark.parametrize("nproc", [8, 1, 2, 4, 3, 12, 96])  # the global batch (96 x 1024) is the preset's
@pytest.mark.parametrize("params, raw, tokens, steps, per_step", [
    (163_009_536, 3_260_190_720, 3_260_252_160, 33_165, 98_304),
])
def test_chinchilla_reproduces_the_seed_authors_budget_on_any_process_count(nproc, params, raw, tokens, steps,
                                                                             per_step):
    b = chinchilla(cfgmod.resolve("gpt2-small"), nproc)
    assert (b.params, b.raw_tokens, b.tokens, b.steps, b.tokens_per_step) == (params, raw, tokens, steps, per_step)


def test_a_process_count_that_cannot_share_the_global_batch_is_refused_with_the_valid_ones():
    with pytest.raises(UserError, match=r"96 sequences cannot be split evenly over 5 processes; valid process "
                                        r"counts \(--nproc x --nnodes\): 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 96$"):
        chinchilla(cfgmod.resolve("gpt2-small"), 5)


def test_chinchilla_cli_prints_the_same_budget_for_1_and_8_processes():
    from conftest import invoke

    one, eight = (json.loads(invoke("chinchilla", "--preset", "gpt2-small", "--nproc", n, "--json")[1])
                  for n in ("1", "8"))
    assert one == eight and one[0]["tokens"] == 3_260_252_160 and one[0]["steps"] == 33_165


def test_chinchilla_qkv_bias_and_tied_counts():
    b = chinchilla(cfgmod.resolve("gpt2-small", "qkv_bias"), 8)
    assert (b.params, b.raw_tokens) == (163_037_184, 3_260_743_680)
    assert chinchilla(cfgmod.resolve("gpt2-small", "weight_tying"), 8).params == 124_412_160


def test_fixed_budget_rounds_up_and_refuses_less_than_one_step():
    cfg = cfgmod.resolve("micro")
    per_step = 8 * 32
    b = fixed_budget(cfg, 1, per_step * 3 + 1)
    assert (b.tokens, b.steps) == (per_step * 4, 4)
    with pytest.raises(UserError, match="below one step"):
        fixed_budget(cfg, 1, per_step - 1)


def test_composition_merges_and_conflicts_name_both():
    cfg = cfgmod.resolve("tiny", "qkv_bias+no_dropout")
    assert cfg.model.qkv_bias and cfg.model.drop_rate == 0.0
    with pytest.raises(UserError) as err:
        cfgmod.arm_overrides("lr_schedule+stacked+weight_decay_gpt2+rope+nope")
    assert "'rope'" in str(err.value) and "'nope'" in str(err.value) and "positions" in str(err.value)
    # the same key set to the same value twice is not a conflict
    assert cfgmod.arm_overrides("stacked+weight_decay_gpt2")["weight_decay"] == 0.01


def test_unknown_names_suggest_the_closest():
    with pytest.raises(UserError, match="did you mean 'qkv_bias'"):
        cfgmod.resolve("tiny", "qkv_bais")
    with pytest.raises(UserError, match="did you mean 'tiny'"):
        cfgmod.resolve("tinny")
    with pytest.raises(UserError, match="bad arm name"):
        cfgmod.split_arm("qkv_bias++rope")


def test_set_parses_toml_literals_and_checks_types():
    assert cfgmod.parse_set("lr=1e-3") == ("lr", 1e-3)
    assert cfgmod.parse_set("drop_rate=0") == ("drop_rate", 0.0)
    assert cfgmod.parse_set("norm=rmsnorm") == ("norm", "rmsnorm")
    assert cfgmod.parse_set("qkv_bias=true") == ("qkv_bias", True)
    for bad, msg in [("lr", "KEY=VALUE"), ("lr=abc", "must be float"), ("n_layers=1.5", "must be int"),
                     ("qkv_bias=1", "true or false"), ("lr=nan", "finite"), ("tokens_per_param=inf", "finite"), ("norm=batchnorm", "not one of"), ("lrr=1", "did you mean 'lr'")]:
        with pytest.raises(UserError, match=msg):
            cfgmod.parse_set(bad)


def test_invalid_combinations_are_user_errors():
    with pytest.raises(UserError, match="n_heads"):
        cfgmod.resolve("tiny", sets={"n_heads": 5})
    with pytest.raises(UserError, match="attention_window"):
        cfgmod.resolve("tiny", "sliding_window")  # window 512 >= context 64: would be full attention
    with pytest.raises(UserError, match="micro_batch"):
        cfgmod.resolve("tiny", sets={"micro_batch": 0})


def test_run_identity_ignores_the_arm_name_but_not_the_config():
    base, qkv = cfgmod.resolve("micro"), cfgmod.resolve("micro", "qkv_bias")
    b = chinchilla(base, 1)
    s0, s1 = run_spec(base, 0, b, "sw", 1), run_spec(base, 1, b, "sw", 1)
    assert s0.config_hash == s1.config_hash and s0.run_id != s1.run_id
    assert run_spec(qkv, 0, b, "sw", 1).config_hash != s0.config_hash
    assert s0.init_seed != s0.data_seed != s0.dropout_seed
    assert run_spec(qkv, 0, b, "sw", 1).data_seed == s0.data_seed  # arms share random streams by seed
