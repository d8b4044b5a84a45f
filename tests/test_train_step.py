"""The training step that `harness run` and `harness bench` share (harness.training.worker.Trainer), and the
CPU fast path of the model: same results as the worker, deterministic, and the same function as
the book's code in training mode too (dropout on), not only in eval mode (tests/test_model.py)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import cli
from harness.core.config import TrainConfig
from harness.data.corpus import load_corpus
from harness.planning.plan import RunSpec
from harness.core.placement import CPU_THREADS
from harness.training.worker import (CPU_EVAL_TOKENS, Dist, Trainer, auto_eval_batch, configure_threads,
                                     eval_token_losses, keep_freed_memory)
from harness.model import GPTModel, ModelConfig, init_weights
from harness.model import cpu_kernels, native
from harness.model.book import BookGPTModel

CPU = Dist(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
SMALL = ModelConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.25)


@pytest.fixture
def worker_threads():
    """The worker's thread setting for the test, then back to pytest's."""
    before = torch.get_num_threads()
    configure_threads(CPU.device)
    yield
    torch.set_num_threads(before)


def test_trainer_reproduces_harness_run_exactly(tmp_path, worker_threads):
    """The torchrun worker and an in-process Trainer (what bench times) compute the same run."""
    cli("run", "--preset", "micro", "--seed", "3", "--tokens", "5000", "--set", "log_every=5",
        "--set", "heldout_points=0", "--results", str(tmp_path), check=True)  # held-out points split windows
    row = pd.read_parquet(tmp_path / "runs.parquet").iloc[0]
    spec = RunSpec.load(Path(row["run_dir"]) / "spec.json")
    mcfg, tcfg = ModelConfig(**spec.config["model"]), TrainConfig(**spec.config["train"])
    corpus = load_corpus(tcfg.data, tcfg.tokenizer)
    trainer = Trainer(mcfg, tcfg, CPU, train_tokens=corpus.train, data_seed=spec.data_seed,
                      init_seed=spec.init_seed, dropout_seed=spec.dropout_seed, steps=spec.steps,
                      tokens_per_step=spec.tokens_per_step)
    losses = []
    for step in range(spec.steps):
        trainer.train_step(step)
        if (step + 1) % 5 == 0:
            losses.append(trainer.window_loss(5))
    test_loss, test_tokens = trainer.evaluate(corpus.test)
    curve = pd.read_parquet(tmp_path / "curves.parquet")
    assert curve["train_loss"].tolist() == losses
    assert test_tokens == row["test_tokens"]
    assert test_loss == row["test_loss"]  # bit-identical: one code path


def _trainer(model_cls=GPTModel, **train):
    mcfg = dataclasses.replace(SMALL)
    tcfg = TrainConfig(global_batch=8, micro_batch=4, **train)
    tokens = torch.randint(0, SMALL.vocab_size, (5000,), generator=torch.Generator().manual_seed(0)).numpy()
    return Trainer(mcfg, tcfg, CPU, train_tokens=tokens, data_seed=1, init_seed=2, dropout_seed=3, steps=6,
                   tokens_per_step=8 * SMALL.context_length, model_cls=model_cls), tokens


def test_train_steps_are_deterministic_and_keep_the_loss_on_the_device(worker_threads):
    runs = []
    for _ in range(2):
        trainer, tokens = _trainer(grad_clip=1.0, lr_schedule="cosine")
        for step in range(6):
            trainer.train_step(step)
            assert trainer.loss_sum.device.type == "cpu" and trainer.loss_sum.dim() == 0
        runs.append((trainer.window_loss(6), trainer.evaluate(tokens[:2000])))
    assert runs[0] == runs[1]
    assert all(torch.isfinite(torch.tensor(r[0])) for r in runs)


def test_book_model_trains_through_the_same_trainer_from_the_same_weights(worker_threads):
    ours, _ = _trainer()
    book, _ = _trainer(model_cls=BookGPTModel)
    assert isinstance(book.model, BookGPTModel)
    for name, value in ours.model.state_dict().items():
        assert torch.equal(value, book.model.state_dict()[name]), name
    ours.train_step(0)
    book.train_step(0)
    assert abs(ours.window_loss(1) - book.window_loss(1)) < 0.1  # same start, different dropout draws


def test_eval_batch_is_automatic_unless_set():
    assert auto_eval_batch(SMALL, TrainConfig(), CPU.device) == CPU_EVAL_TOKENS // 16
    assert auto_eval_batch(dataclasses.replace(SMALL, context_length=8192), TrainConfig(), CPU.device) == 1
    assert auto_eval_batch(SMALL, TrainConfig(eval_batch=7), CPU.device) == 7


@pytest.mark.parametrize("gib, batch", [(139.8, 16), (24, 16), (8, 6)])
def test_cuda_eval_batch_is_capped_so_that_runs_can_share_a_gpu(monkeypatch, gib, batch):
    """gpt2-small on a CUDA device: at most CUDA_EVAL_TOKENS tokens per forward (16 x 1024, 8 GiB
    at peak on an H200: four runs at once fit, where the old 128 x 1024 took 62 GiB in each and
    ran out of memory), fewer where the device is small (8 GiB: 6)."""
    class Properties:
        total_memory = int(gib * 2**30)

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: Properties)
    assert auto_eval_batch(ModelConfig(), TrainConfig(), torch.device("cuda", 0)) == batch


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
@pytest.mark.slow  # CI time: a performance guard; `harness bench` shows a regression too
def test_cpu_training_steps_reuse_freed_memory_instead_of_faulting_fresh_pages():
    """After the worker's allocator setting (keep_freed_memory), a tiny training step and an
    evaluation batch allocate from memory the process already holds: the default glibc settings
    gave about 1,000 minor page faults per step (each activation over 128 KiB a fresh mapping)."""
    import resource

    assert keep_freed_memory()
    tcfg = TrainConfig(global_batch=32, micro_batch=32)
    mcfg = ModelConfig(vocab_size=257, context_length=64, emb_dim=48, n_heads=4, n_layers=2, drop_rate=0.1)
    tokens = torch.randint(0, 257, (50_000,)).numpy()
    trainer = Trainer(mcfg, tcfg, CPU, train_tokens=tokens, data_seed=1, init_seed=2, dropout_seed=3, steps=40,
                      tokens_per_step=32 * 64)
    x, y = torch.randint(0, 257, (2, 32, 64))
    for step in range(5):  # the heap grows to the step's peak once
        trainer.train_step(step)
    eval_token_losses(trainer.model.eval(), x, y, None)
    trainer.model.train()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for step in range(5, 25):
        trainer.train_step(step)
    faults_per_step = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20
    assert faults_per_step < 100, faults_per_step


def test_worker_thread_setting(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("HARNESS_CPU_THREADS", raising=False)
        assert configure_threads(CPU.device) == CPU_THREADS == 1
        monkeypatch.setenv("HARNESS_CPU_THREADS", "2")
        assert configure_threads(CPU.device) == 2
    finally:
        torch.set_num_threads(before)


# --- the CPU dropout path is the book's function -----------------------------------------------


def test_keep_mask_rate_and_determinism():
    torch.manual_seed(5)
    a = cpu_kernels.keep_mask((200, 1000), 0.25, torch.float32)
    torch.manual_seed(5)
    b = cpu_kernels.keep_mask((200, 1000), 0.25, torch.float32)
    assert torch.equal(a, b) and set(a.unique().tolist()) == {0.0, 1.0}
    assert abs(a.mean().item() - 0.75) < 0.005
    assert not torch.equal(a, cpu_kernels.keep_mask((200, 1000), 0.25, torch.float32))  # the stream moves on
    assert cpu_kernels.keep_mask((3, 4), 0.1, torch.bfloat16).dtype == torch.bfloat16


def test_keep_mask_keeps_one_minus_p_to_within_its_16_bit_words():
    torch.manual_seed(6)
    for p in (0.1, 0.5, 0.9):
        kept = cpu_kernels.keep_mask((64, 32768), p, torch.float32).mean().item()  # 2^21 entries: sd <= 3.5e-4
        assert abs(kept - (1 - p)) < 2e-3, (p, kept)
    assert not cpu_kernels.keep_mask((4, 100), 1 - 2**-17, torch.float32).any()  # above the last 16-bit threshold
    assert cpu_kernels.keep_mask((4, 100), 1e-9, torch.float32).all()  # p below 2^-16 drops a word only at 0


def test_keep_masks_are_keyed_by_the_sequence_not_by_the_micro_batch():
    """A sequence gets the same mask in a micro-batch of 4 as in one of 2 that starts at it: what
    makes the CPU path's dropout independent of processes and micro-steps (same torch seed)."""
    torch.manual_seed(5)
    whole = cpu_kernels.keep_mask((4, 3, 10), 0.5, torch.float32)
    torch.manual_seed(5)
    with cpu_kernels.sequences_from(2):
        tail = cpu_kernels.keep_mask((2, 3, 10), 0.5, torch.float32)
    assert torch.equal(whole[2:], tail) and not torch.equal(whole[:2], tail)
    torch.manual_seed(5)  # attention weights: (sequences x heads, T, T), one block per sequence
    weights = cpu_kernels.keep_mask((4 * 2, 5, 5), 0.5, torch.float32, sequences=4)
    torch.manual_seed(5)
    with cpu_kernels.sequences_from(1):
        second = cpu_kernels.keep_mask((1 * 2, 5, 5), 0.5, torch.float32, sequences=1)
    assert torch.equal(weights[2:4], second)


class _BookDropout(nn.Module):
    """The book's nn.Dropout with keep_mask's mask: in the book's order of dropouts, the same masks as
    our model draws from the same torch seed (the attention weights' (B, H, T, T) are B sequences'
    blocks, as ours)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x):
        return x * cpu_kernels.keep_mask(x.shape, self.p, x.dtype) / (1 - self.p) if self.training else x


ATTENTION_SWITCHES = {
    "default": {}, "qkv_bias": {"qkv_bias": True}, "rope": {"positions": "rope"}, "nope": {"positions": "nope"},
    "window": {"attention_window": 5}, "rope+window": {"positions": "rope", "attention_window": 5},
    "parallel_block": {"parallel_block": True}, "no_bias": {"bias": False}, "no_dropout": {"drop_rate": 0.0},
}


@pytest.mark.parametrize("name", list(ATTENTION_SWITCHES))
@pytest.mark.parametrize("T", [16, 7])
def test_cpu_training_path_matches_the_book_with_the_same_dropout_masks(name, T, cpu_kernel_set):
    """Training mode, dropout 0.25: our CPU path (its C kernels, or torch's operations without them)
    and the book's masked-softmax code give the same logits and gradients when they draw the same
    masks."""
    cfg = dataclasses.replace(SMALL, **ATTENTION_SWITCHES[name])
    ours = GPTModel(cfg).train()
    init_weights(ours, 11)
    book = BookGPTModel(cfg).train()
    book.load_state_dict(ours.state_dict())
    for parent in list(book.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, nn.Dropout):
                setattr(parent, child_name, _BookDropout(child.p))
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(cfg.vocab_size, (3, T), generator=g)
    targets = torch.randint(cfg.vocab_size, (3, T), generator=g)

    torch.manual_seed(5)
    logits = ours(idx)
    torch.manual_seed(5)
    ref = book(idx)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
    F.cross_entropy(logits.flatten(0, 1), targets.flatten()).backward()
    F.cross_entropy(ref.flatten(0, 1), targets.flatten()).backward()
    grads = dict(book.named_parameters())
    atol = 1e-5 * max(p.grad.abs().max().item() for p in grads.values())
    for pname, p in ours.named_parameters():
        torch.testing.assert_close(p.grad, grads[pname].grad, rtol=1e-4, atol=atol, msg=pname)


def test_cpu_attention_path_equals_sdpa_without_dropout(cpu_kernel_set):
    """With p = 0 (every 16-bit word keeps its entry) the CPU dropout attention is SDPA's
    causal/windowed attention."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 9, 8, generator=g) for _ in range(3))
    window = torch.ones(9, 9, dtype=torch.bool).tril() & ~torch.ones(9, 9, dtype=torch.bool).tril(-3)
    for mask in (None, window):
        torch.manual_seed(0)
        ours = cpu_kernels.attention_with_dropout(q, k, v, mask, p=0.0)
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=mask is None)
        torch.testing.assert_close(ours, ref)


@pytest.mark.parametrize("bias", [False, True])
def test_projected_attention_is_the_modules_own_path(bias, cpu_kernel_set):
    """cpu_kernels.projected_attention (the projections in the heads' layout, one hand-written backward)
    gives the output and the gradients of Linear -> attention_with_dropout -> Linear, masks included."""
    g = torch.Generator().manual_seed(0)
    B, T, d, H = 3, 9, 8, 2
    query, key, value, out = (nn.Linear(d, d, bias=bias) for _ in range(4))
    window = torch.ones(T, T, dtype=torch.bool).tril() & ~torch.ones(T, T, dtype=torch.bool).tril(-3)
    for mask in (None, window):
        x = torch.randn(B, T, d, generator=g, requires_grad=True)
        grad = torch.randn(B, T, d, generator=g)
        results = []
        for fused in (True, False):
            torch.manual_seed(7)
            if fused:
                y = cpu_kernels.projected_attention(x, query, key, value, out, mask, 0.3, H)
            else:
                heads = [lin(x).view(B, T, H, d // H).transpose(1, 2) for lin in (query, key, value)]
                y = out(cpu_kernels.attention_with_dropout(*heads, mask, 0.3).transpose(1, 2).reshape(B, T, d))
            params = [p for lin in (query, key, value, out) for p in lin.parameters()]
            results.append((y, *torch.autograd.grad(y, [x, *params], grad)))
        for a, b in zip(*results):
            torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_train_step_never_synchronises_with_the_host():
    dev = Dist(rank=0, world=1, local_rank=0, device=torch.device("cuda", 0))
    tcfg = TrainConfig(global_batch=8, micro_batch=4, compile="off", grad_clip=1.0)
    tokens = torch.randint(0, SMALL.vocab_size, (5000,)).numpy()
    for precision in ("bf16", "fp16"):
        trainer = Trainer(SMALL, dataclasses.replace(tcfg, precision=precision), dev, train_tokens=tokens,
                          data_seed=1, init_seed=2, dropout_seed=3, steps=4, tokens_per_step=8 * SMALL.context_length)
        trainer.train_step(0)  # first step: optimiser state and allocator warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            for step in range(1, 4):
                trainer.train_step(step)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert trainer.window_loss(4) > 0


def test_the_step_and_the_kernels_take_the_eager_path_by_one_rule(monkeypatch):
    """The step keys its dropout masks per sequence where the model takes its CPU kernels: both ask
    cpu_kernels.takes_kernels, so they cannot disagree (the masks would then depend on placement)."""
    from harness.training.worker import eager_cpu_step

    cpu, x = torch.device("cpu"), torch.zeros(2)
    assert eager_cpu_step(cpu, compiled=False) and cpu_kernels.eager_cpu(x)
    assert not eager_cpu_step(cpu, compiled=True) and not eager_cpu_step(torch.device("meta"), compiled=False)
    monkeypatch.setattr(cpu_kernels, "takes_kernels", lambda device_type, compiled: False)
    assert not eager_cpu_step(cpu, compiled=False) and not cpu_kernels.eager_cpu(x)
