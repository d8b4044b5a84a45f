"""The network: parameter counts as published facts, every switch and pair of switches, seeded
common-random-number init, padded vocabulary, attention masks, and equivalence with the book's code.

Everything runs on tiny configs on the CPU; the 163M-parameter counts come from meta-device builds.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from harness.model import GPTModel, ModelConfig, count_parameters, flops_per_token, init_weights, parameter_counts
from harness.model import book
from harness.model import cpu_kernels, gpt
from harness.model.book import BookGPTModel

TINY = ModelConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2,
                   drop_rate=0.1, mlp_multiple_of=16)

SWITCHES = {
    "qkv_bias": {"qkv_bias": True},
    "tie_weights": {"tie_weights": True},
    "no_bias": {"bias": False},
    "rmsnorm": {"norm": "rmsnorm", "norm_eps": 1e-6},
    "rope": {"positions": "rope"},
    "nope": {"positions": "nope"},
    "swiglu": {"mlp": "swiglu"},
    "parallel_block": {"parallel_block": True},
    "gpt2_init": {"init": "gpt2"},
    "window": {"attention_window": 4},
    "vocab_multiple": {"vocab_multiple": 64},
    "no_dropout": {"drop_rate": 0.0},
}
# Every single switch and every pair that does not set the same field twice (rope + nope).
COMBOS = dict(SWITCHES) | {
    f"{a}+{b}": SWITCHES[a] | SWITCHES[b]
    for a, b in itertools.combinations(SWITCHES, 2)
    if not SWITCHES[a].keys() & SWITCHES[b].keys()
}


def tiny(**kw) -> ModelConfig:
    return dataclasses.replace(TINY, **kw)


def built(cfg: ModelConfig, seed: int = 0) -> GPTModel:
    model = GPTModel(cfg)
    init_weights(model, seed)
    return model


def batch(cfg: ModelConfig, B: int = 3, T: int | None = None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    T = T or cfg.context_length
    idx = torch.randint(cfg.vocab_size, (B, T), generator=g)
    targets = torch.randint(cfg.vocab_size, (B, T), generator=g)
    return idx, targets


# --- parameter counts and FLOPs -------------------------------------------------------------


def test_book_parameter_counts_are_the_published_facts():
    assert parameter_counts(ModelConfig()) == {
        "total": 163_009_536, "embedding": 50257 * 768 + 1024 * 768, "non_embedding": 123_625_728}
    assert parameter_counts(ModelConfig(qkv_bias=True))["total"] == 163_037_184
    tied = parameter_counts(ModelConfig(tie_weights=True))
    assert tied["total"] == 124_412_160
    assert tied["non_embedding"] == 85_028_352  # GPT-2 small's well-known 85M non-embedding count


def test_padded_vocab_counts_the_padding_rows():
    counts = parameter_counts(ModelConfig(vocab_multiple=64))
    assert ModelConfig(vocab_multiple=64).padded_vocab_size == 50304
    assert counts["total"] == 163_009_536 + 2 * (50304 - 50257) * 768


@pytest.mark.parametrize("name", list(SWITCHES))
def test_meta_count_equals_count_of_built_model(name):
    cfg = tiny(**SWITCHES[name])
    assert parameter_counts(cfg)["total"] == count_parameters(GPTModel(cfg))


def test_flops_per_token_is_nanogpts_formula():
    n = 163_009_536 - 1024 * 768  # position embeddings excluded
    assert flops_per_token(ModelConfig()) == 6 * n + 12 * 12 * 12 * 64 * 1024
    assert flops_per_token(ModelConfig(positions="rope")) == 6 * n + 12 * 12 * 12 * 64 * 1024


# --- structure ----------------------------------------------------------------------------------


def test_state_dict_uses_the_books_names_and_no_buffers():
    keys = set(GPTModel(tiny(n_layers=1)).state_dict())
    assert keys == {
        "tok_emb.weight", "pos_emb.weight", "final_norm.scale", "final_norm.shift", "out_head.weight",
        *(f"trf_blocks.0.{k}" for k in (
            "att.W_query.weight", "att.W_key.weight", "att.W_value.weight",
            "att.out_proj.weight", "att.out_proj.bias",
            "ff.layers.0.weight", "ff.layers.0.bias", "ff.layers.2.weight", "ff.layers.2.bias",
            "norm1.scale", "norm1.shift", "norm2.scale", "norm2.shift")),
    }
    for kw in ({"positions": "rope"}, {"attention_window": 4}):
        assert set(GPTModel(tiny(**kw)).state_dict()) == set(BookGPTModel(tiny(**kw)).state_dict())


def test_no_bias_leaves_only_qkv_biases():
    names = [n for n, _ in GPTModel(tiny(bias=False, qkv_bias=True)).named_parameters()]
    assert {n.rsplit(".", 2)[-2] for n in names if n.endswith("bias")} == {"W_query", "W_key", "W_value"}
    assert not any(n.endswith("shift") for n in names)


def test_tied_head_is_the_embedding():
    model = GPTModel(tiny(tie_weights=True))
    assert model.out_head.weight is model.tok_emb.weight
    assert count_parameters(model) == count_parameters(GPTModel(TINY)) - 97 * 32


# --- every switch and every pair ----------------------------------------------------------------


@pytest.mark.parametrize("name", list(COMBOS))
def test_every_switch_and_pair_trains(name):
    cfg = tiny(**COMBOS[name])
    model = built(cfg).train()
    idx, targets = batch(cfg)
    assert model(idx).shape == (3, cfg.context_length, cfg.vocab_size)
    loss = model(idx, targets)
    loss.backward()
    assert torch.isfinite(loss)
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_shorter_sequences_work_and_longer_ones_are_refused():
    model = built(tiny(positions="rope", attention_window=4)).eval()
    idx, _ = batch(TINY, T=16)
    # Causality: a prefix's logits are the full sequence's first logits.
    torch.testing.assert_close(model(idx[:, :5]), model(idx)[:, :5])
    with pytest.raises(ValueError, match="context_length"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_dropout_acts_in_training_only():
    model = built(TINY)
    idx, _ = batch(TINY)
    model.train()
    assert not torch.equal(model(idx), model(idx))
    model.eval()
    assert torch.equal(model(idx), model(idx))


def test_autocast_bf16_forward_backward():
    for kw in ({}, {"positions": "rope"}, {"attention_window": 4}, {"norm": "rmsnorm"}):
        cfg = tiny(**kw)
        model = built(cfg).train()
        idx, targets = batch(cfg)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(idx, targets)
        loss.backward()
        assert torch.isfinite(loss)


@pytest.mark.parametrize("kw", [{}, {"positions": "rope", "attention_window": 4}])
def test_compiles_to_one_graph(kw):
    cfg = tiny(drop_rate=0.0, **kw)
    model = built(cfg)
    idx, _ = batch(cfg)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(idx), model(idx))


@pytest.mark.parametrize("rows, width, vocab", [(2048, 48, 257), (96, 32, 97), (300, 64, 50257 // 64)])
def test_the_padded_head_computes_the_same_logits(rows, width, vocab):
    h, weight = torch.randn(rows, width), torch.randn(vocab, width)
    assert torch.equal(cpu_kernels.head_logits(h, weight, vocab), F.linear(h, weight))


def test_the_fused_head_and_loss_match_the_head_then_cross_entropy(cpu_kernel_set):
    """GPTModel(idx, targets) on the eager CPU path (_HeadCrossEntropy, on either kernel set) against
    out_head then F.cross_entropy: the loss and every gradient, tied and padded heads included."""
    for kw in ({}, {"tie_weights": True}, {"vocab_multiple": 64}):
        cfg = tiny(drop_rate=0.0, **kw)
        model = built(cfg).train()
        idx, targets = batch(cfg)
        loss = model(idx, targets)
        assert "HeadCrossEntropy" in type(loss.grad_fn).__name__
        names, params = zip(*model.named_parameters())
        fused = torch.autograd.grad(loss, params)
        reference = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten())
        torch.testing.assert_close(loss, reference, rtol=1e-6, atol=0)
        for name, ours, theirs in zip(names, fused, torch.autograd.grad(reference, params)):
            torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7, msg=name)
        with torch.inference_mode():  # the evaluation's per-token losses
            model.eval()
            per_token = F.cross_entropy(model(idx).flatten(0, 1), targets.flatten(), reduction="none")
            torch.testing.assert_close(model(idx, targets, reduction="none"), per_token, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="reduction='sum' is not one of mean, none"):
        model(idx, targets, reduction="sum")
    with pytest.raises(ValueError, match=r"targets of shape \(3, 15\) for token ids of shape \(3, 16\)"):
        model(idx, targets[:, 1:])


# --- padded vocabulary ----------------------------------------------------------------------------


def test_padded_vocab_logits_and_loss_ignore_the_padding(cpu_kernel_set):
    cfg = tiny(vocab_multiple=64, drop_rate=0.0)
    assert cfg.padded_vocab_size == 128
    padded = built(cfg).eval()
    idx, targets = batch(cfg)
    logits = padded(idx)
    assert logits.shape == (3, 16, 97)

    # The same network without padding: the first 97 rows of the embedding and head.
    plain = GPTModel(tiny(drop_rate=0.0)).eval()
    state = padded.state_dict()
    state["tok_emb.weight"] = state["tok_emb.weight"][:97]
    state["out_head.weight"] = state["out_head.weight"][:97]
    plain.load_state_dict(state)
    torch.testing.assert_close(logits, plain(idx), rtol=0, atol=0)
    torch.testing.assert_close(padded(idx, targets), plain(idx, targets), rtol=0, atol=0)

    # Padded head rows that would dominate every softmax change nothing.
    with torch.no_grad():
        padded.out_head.weight[97:] = 1e4
    assert torch.equal(padded(idx).argmax(-1), logits.argmax(-1))
    torch.testing.assert_close(padded(idx, targets), plain(idx, targets), rtol=0, atol=0)

    padded(idx, targets).backward()
    assert torch.count_nonzero(padded.out_head.weight.grad[97:]) == 0
    assert torch.count_nonzero(padded.tok_emb.weight.grad[97:]) == 0


# --- seeded initialisation ------------------------------------------------------------------------


def test_qkv_bias_arm_shares_every_baseline_value_at_the_same_seed():
    base = built(TINY, seed=7).state_dict()
    arm = built(tiny(qkv_bias=True), seed=7).state_dict()
    assert set(base) < set(arm)
    for name, value in base.items():
        assert torch.equal(arm[name], value), name


@pytest.mark.parametrize("name", [n for n in SWITCHES if n != "gpt2_init"])
def test_every_arm_shares_values_of_common_parameters(name):
    # named_parameters lists a tied head once, as the embedding it is.
    base = dict(built(TINY, seed=3).named_parameters())
    arm = dict(built(tiny(**SWITCHES[name]), seed=3).named_parameters())
    common = [k for k in base if k in arm and arm[k].shape == base[k].shape]
    assert len(common) > len(base) // 2
    for k in common:
        assert torch.equal(arm[k], base[k]), k


def test_init_is_deterministic_and_seed_dependent():
    torch.manual_seed(0)
    a = built(TINY, seed=1).state_dict()
    torch.manual_seed(123)  # the global RNG plays no part
    b = built(TINY, seed=1).state_dict()
    c = built(TINY, seed=2).state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
        constant = k.endswith(("scale", "shift"))
        assert torch.equal(a[k], c[k]) == constant, k


def test_init_does_not_depend_on_the_implementation_or_dtype():
    ref = built(TINY, seed=5).state_dict()
    twin = BookGPTModel(TINY)
    init_weights(twin, 5)
    low = GPTModel(TINY).to(torch.bfloat16)
    init_weights(low, 5)
    for k, v in ref.items():
        assert torch.equal(twin.state_dict()[k], v), k
        assert torch.equal(low.state_dict()[k], v.to(torch.bfloat16)), k


def test_tied_weights_are_initialised_once_as_the_embedding():
    tied = built(tiny(tie_weights=True), seed=4)
    untied = built(TINY, seed=4)
    assert torch.equal(tied.out_head.weight, untied.tok_emb.weight)


def test_init_refuses_the_meta_device():
    with torch.device("meta"):
        model = GPTModel(TINY)
    with pytest.raises(ValueError, match="meta"):
        init_weights(model, 0)


MEDIUM = dict(vocab_size=512, context_length=32, emb_dim=256, n_heads=4, n_layers=8)


def test_torch_default_init_matches_pytorchs_distributions():
    model = built(ModelConfig(**MEDIUM), seed=0)
    block = model.trf_blocks[0]
    for linear in (block.att.W_query, block.att.out_proj, block.ff.layers[0], block.ff.layers[2], model.out_head):
        bound = 1 / math.sqrt(linear.in_features)
        for p in linear.parameters():
            assert p.abs().max() <= bound
        assert linear.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    assert model.tok_emb.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert torch.equal(block.norm1.scale, torch.ones(256))
    assert torch.equal(block.norm1.shift, torch.zeros(256))


def test_gpt2_init_stds():
    model = built(ModelConfig(init="gpt2", **MEDIUM), seed=0)
    resid = 0.02 / math.sqrt(2 * 8)
    std = {n: p.std().item() for n, p in model.named_parameters() if p.dim() == 2}
    for name, s in std.items():
        expect = resid if name.endswith(("att.out_proj.weight", "ff.layers.2.weight")) else 0.02
        assert s == pytest.approx(expect, rel=0.05), name
    for name, p in model.named_parameters():
        if name.endswith(("bias", "shift")):
            assert torch.count_nonzero(p) == 0, name
    swiglu = built(ModelConfig(init="gpt2", mlp="swiglu", **MEDIUM), seed=0)
    assert swiglu.trf_blocks[0].ff.fc3.weight.std().item() == pytest.approx(resid, rel=0.05)
    assert swiglu.trf_blocks[0].ff.fc1.weight.std().item() == pytest.approx(0.02, rel=0.05)


# --- attention masks ------------------------------------------------------------------------------


def changed_positions(cfg: ModelConfig, p: int) -> torch.Tensor:
    """Which positions' logits move when the token at position p changes."""
    model = built(cfg).eval()
    idx, _ = batch(cfg, B=1)
    other = idx.clone()
    other[0, p] = (idx[0, p] + 1) % cfg.vocab_size
    return (model(idx) - model(other)).abs().amax(-1)[0] > 1e-6


@pytest.mark.parametrize("positions", ["learned", "rope", "nope"])
def test_full_attention_is_causal(positions):
    changed = changed_positions(tiny(positions=positions), p=5)
    assert not changed[:5].any()
    assert changed[5:].all()


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_sliding_window_sees_exactly_the_last_w_tokens(positions):
    W, p = 4, 5
    changed = changed_positions(tiny(positions=positions, attention_window=W, n_layers=1), p)
    assert not changed[:p].any()
    assert changed[p:p + W].all()
    assert not changed[p + W:].any()
    # Stacked layers widen the receptive field to n_layers * (W - 1) + 1 tokens.
    L = 3
    changed = changed_positions(tiny(positions=positions, attention_window=W, n_layers=L), p)
    reach = p + L * (W - 1)
    assert changed[p:reach + 1].all()
    assert not changed[reach + 1:].any()


def test_window_no_shorter_than_sequence_is_full_attention():
    full = built(TINY).eval()
    windowed = GPTModel(tiny(attention_window=8)).eval()
    windowed.load_state_dict(full.state_dict())
    idx, _ = batch(TINY)
    torch.testing.assert_close(windowed(idx[:, :8]), full(idx[:, :8]))
    assert not torch.allclose(windowed(idx), full(idx))


# --- equivalence with the book's code -------------------------------------------------------------


def assert_same_function(cfg: ModelConfig, T: int):
    """Same weights, eval mode: same logits and same gradients of the loss, to float32 rounding."""
    ours = built(cfg, seed=11).eval()
    theirs = BookGPTModel(cfg).eval()
    theirs.load_state_dict(ours.state_dict())
    idx, targets = batch(cfg, T=T)
    logits = ours(idx)
    ref = theirs(idx)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    F.cross_entropy(ref.flatten(0, 1), targets.flatten()).backward()
    grads = {name: p.grad for name, p in theirs.named_parameters()}
    # Tolerance relative to the model's largest gradient: some gradients are exactly zero in exact
    # arithmetic (a key bias shifts a whole softmax row) and are pure rounding noise in both.
    atol = 1e-5 * max(g.abs().max().item() for g in grads.values())
    for name, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], rtol=1e-4, atol=atol, msg=name)


@pytest.mark.parametrize("name", ["default", *COMBOS])
def test_matches_the_books_implementation(name):
    cfg = tiny(**COMBOS.get(name, {}))
    assert_same_function(cfg, T=cfg.context_length)
    assert_same_function(cfg, T=7)


def test_layernorm_is_the_books_formula():
    x = torch.randn(4, 5, 32) * 3 + 1
    ours, theirs = gpt.LayerNorm(32, 1e-5, bias=True), book.LayerNorm(32, 1e-5, bias=True)
    with torch.no_grad():
        for m in (ours, theirs):
            m.scale.copy_(torch.linspace(0.5, 2.0, 32))
            m.shift.copy_(torch.linspace(-1.0, 1.0, 32))
    torch.testing.assert_close(ours(x), theirs(x))
    torch.testing.assert_close(gpt.LayerNorm(32, 1e-5, bias=False)(x), book.LayerNorm(32, 1e-5, bias=False)(x))
    # Biased variance, by hand.
    by_hand = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, keepdim=True, unbiased=False) + 1e-5)
    torch.testing.assert_close(gpt.LayerNorm(32, 1e-5, bias=True)(x), by_hand)


def test_rmsnorm_is_the_books_formula():
    x = torch.randn(4, 5, 32) * 3
    torch.testing.assert_close(gpt.RMSNorm(32, 1e-6)(x), book.RMSNorm(32, 1e-6)(x))


def test_gelu_is_the_tanh_formula():
    x = torch.linspace(-10, 10, 10001)
    ours = gpt.FeedForward(TINY).layers[1]
    by_hand = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    torch.testing.assert_close(ours(x), by_hand)
    torch.testing.assert_close(book.GELU()(x), by_hand)


def test_gelus_sigmoid_form_and_its_gradient_match_the_tanh_formula_in_float64(cpu_kernel_set):
    """The eager CPU path (x sigmoid(2u), a hand-written backward; the C kernel or torch's
    operations) against the book's formula computed in float64: as close as torch's own
    F.gelu(approximate="tanh") is, value and gradient."""
    x = (torch.randn(64, 192, dtype=torch.float64) * 3).requires_grad_()
    exact = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    grad_out = torch.randn_like(exact)
    (exact_grad,) = torch.autograd.grad(exact, x, grad_out)
    assert "TanhGELU" in type(gpt.TanhGELU()(x.detach().float().requires_grad_()).grad_fn).__name__  # the sigmoid form
    for fn in (gpt.TanhGELU(), lambda t: F.gelu(t, approximate="tanh")):
        x32 = x.detach().float().requires_grad_()
        y = fn(x32)
        (g,) = torch.autograd.grad(y, x32, grad_out.float())
        torch.testing.assert_close(y.double(), exact.detach(), rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(g.double(), exact_grad, rtol=1e-5, atol=1e-5)
