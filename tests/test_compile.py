"""The GPU path's pieces, proved on the CPU: torch.compile (inductor compiles on this CPU too) and
low-precision autocast, through the real Trainer step, for every architectural switch.

- No graph breaks: torch._dynamo.explain traces the model's forward (training mode, dropout on, and
  eval mode) for each switch alone; every switch must give one graph. Tracing is seconds, so every
  switch runs in CI.
- Compiled bf16 == eager fp32: a compiled Trainer in bf16 autocast trains the same steps as the
  eager fp32 Trainer to a stated tolerance. Compiling costs tens of seconds per model, so two models
  carry every switch at once (positions takes one value per model: rope in one, nope in the other);
  the first runs in CI, the second and the one-switch-at-a-time versions are marked slow.
- fp16 with a GradScaler (the seed author's setting) and the bf16 evaluation path.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from harness.core.config import TrainConfig
from harness.training.worker import Dist, Trainer, evaluate
from harness.model import GPTModel, ModelConfig

CPU = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
BASE = ModelConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.1,
                   mlp_multiple_of=32)
SWITCHES = {  # every architectural switch the interventions use
    "qkv_bias": {"qkv_bias": True}, "no_bias": {"bias": False}, "rmsnorm": {"norm": "rmsnorm", "norm_eps": 1e-6},
    "swiglu": {"mlp": "swiglu"}, "rope": {"positions": "rope"}, "nope": {"positions": "nope"},
    "parallel_block": {"parallel_block": True}, "sliding_window": {"attention_window": 6},
    "vocab_pad_64": {"vocab_multiple": 64}, "weight_tying": {"tie_weights": True}, "gpt2_init": {"init": "gpt2"},
}
TOGETHER = {
    "rope+everything": ["qkv_bias", "rmsnorm", "swiglu", "rope", "parallel_block", "sliding_window", "vocab_pad_64",
                        "gpt2_init"],
    "nope+no_bias+tied": ["no_bias", "nope", "weight_tying", "sliding_window"],
}
# bf16 keeps 8 bits of mantissa: a loss near ln(97) = 4.6 agrees with fp32 to about 1e-2 after a
# few steps; observed differences are below 5e-3 (float32 compiled vs eager: below 1e-5)
BF16_TOLERANCE = 2e-2
STEPS = 3


def config(*names: str, **extra) -> ModelConfig:
    switches = {k: v for name in names for k, v in SWITCHES[name].items()}
    cfg = dataclasses.replace(BASE, **switches, **extra)
    cfg.validate()
    return cfg


def losses(mcfg: ModelConfig, precision: str, compile: bool, dropout_seed: int = 3) -> list[float]:
    tcfg = TrainConfig(global_batch=4, micro_batch=2, precision=precision, compile="on" if compile else "off")
    tokens = torch.randint(0, 90, (4000,), generator=torch.Generator().manual_seed(0)).numpy()
    trainer = Trainer(mcfg, tcfg, CPU, train_tokens=tokens, data_seed=1, init_seed=2, dropout_seed=dropout_seed, steps=STEPS,
                      tokens_per_step=4 * mcfg.context_length)
    assert trainer.compiled == compile
    out = []
    for step in range(STEPS):
        trainer.train_step(step)
        out.append(trainer.window_loss(1))
    return out


@pytest.mark.parametrize("name", sorted(SWITCHES))
def test_the_forward_of_every_switch_compiles_without_graph_breaks(name):
    torch._dynamo.reset()
    model = GPTModel(config(name))
    x = torch.randint(0, 90, (2, BASE.context_length))
    for training in (True, False):
        model.train(training)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            explained = torch._dynamo.explain(model)(x)
        assert explained.graph_break_count == 0 and explained.graph_count == 1, (name, training, explained.break_reasons)


def _compiled_bf16_matches_eager_fp32(names: list[str]) -> None:
    mcfg = config(*names, drop_rate=0.0)  # the compiled and eager paths draw dropout masks differently
    eager = losses(mcfg, "fp32", compile=False)
    compiled = losses(mcfg, "bf16", compile=True)
    assert all(abs(a - b) < BF16_TOLERANCE for a, b in zip(eager, compiled)), (names, eager, compiled)


def test_a_compiled_bf16_step_with_every_switch_matches_the_eager_fp32_step():
    _compiled_bf16_matches_eager_fp32(TOGETHER["rope+everything"])


@pytest.mark.slow
@pytest.mark.parametrize("names", [TOGETHER["nope+no_bias+tied"], *[[n] for n in sorted(SWITCHES)]], ids=str)
def test_compiled_bf16_matches_eager_fp32_for_the_other_switches(names):
    _compiled_bf16_matches_eager_fp32(names)


def test_a_compiled_training_step_runs_with_dropout():
    """Compiled, dropout on (inductor's own random numbers, so not the eager path's masks): the
    losses are those of the eager run to within the spread that other masks give, measured here as
    the eager run's own change under three other dropout seeds."""
    mcfg = config(*TOGETHER["nope+no_bias+tied"])
    compiled, eager = losses(mcfg, "fp32", compile=True), losses(mcfg, "fp32", compile=False)
    others = [losses(mcfg, "fp32", compile=False, dropout_seed=s) for s in (4, 5, 6)]
    spread = [max(abs(o[i] - eager[i]) for o in others) for i in range(len(eager))]
    assert all(math.isfinite(v) for v in compiled) and max(spread) > 0, (compiled, spread)
    assert all(abs(v - e) <= 2 * s for v, e, s in zip(compiled, eager, spread)), (compiled, eager, spread)


def test_fp16_with_a_grad_scaler_trains_like_fp32():
    mcfg = config("qkv_bias", drop_rate=0.0)
    fp32, fp16 = losses(mcfg, "fp32", compile=False), losses(mcfg, "fp16", compile=False)
    assert all(abs(a - b) < BF16_TOLERANCE for a, b in zip(fp32, fp16)), (fp32, fp16)
    tcfg = TrainConfig(global_batch=4, micro_batch=2, precision="fp16", compile="off")
    tokens = torch.randint(0, 90, (4000,), generator=torch.Generator().manual_seed(0)).numpy()
    trainer = Trainer(mcfg, tcfg, CPU, train_tokens=tokens, data_seed=1, init_seed=2, dropout_seed=3, steps=2,
                      tokens_per_step=4 * mcfg.context_length)
    assert trainer.scaler.is_enabled() and trainer.dtype == "float16"
    trainer.train_step(0)
    assert 0 < trainer.scaler.get_scale() <= 65536.0


def test_bf16_evaluation_matches_fp32():
    model = GPTModel(config("swiglu", "rope")).eval()
    tokens = torch.randint(0, 90, (3000,), generator=torch.Generator().manual_seed(1)).numpy()
    fp32, n32 = evaluate(model, tokens, BASE.context_length, 8, CPU, None)
    bf16, n16 = evaluate(model, tokens, BASE.context_length, 8, CPU, torch.bfloat16)
    assert n32 == n16 == len(tokens) - 1 and abs(fp32 - bf16) < BF16_TOLERANCE and fp32 != bf16
