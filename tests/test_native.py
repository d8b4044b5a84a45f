"""The CPU kernels' C half (harness.model.native, model/cpu_kernels.c): built once per machine and
cached, the same dropout masks as keep_mask word for word, the same functions as torch's operations
(tests/test_model.py and tests/test_train_step.py run both kernel sets against the book and the
formulas), and torch's operations wherever no compiler builds it."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from harness.model import cpu_kernels, native


def test_the_c_kernels_are_built_and_used_on_this_machine():
    """The suite's C paths run here (a broken build would otherwise pass as torch's fallback)."""
    assert native.state() == "native"
    assert native.library() is not None


@pytest.mark.parametrize("shape, first", [((4, 3, 10), 0), ((5, 7, 33), 3), ((3, 16), 1), ((2, 1), 5)])
@pytest.mark.parametrize("p", [0.0, 0.1, 0.5, 1 - 2**-17])
def test_c_dropout_draws_keep_masks_words(shape, first, p):
    """Per sequence, at any place in the global batch (sequences_from), for any block size (not
    only whole Philox blocks), keeping all (p 0) or none (p above the last 16-bit threshold)."""
    x = torch.randn(shape)
    torch.manual_seed(9)
    with cpu_kernels.sequences_from(first):
        ours = cpu_kernels.dropout(x, p)
        torch.manual_seed(9)
        torch_path = x * cpu_kernels.keep_mask(shape, p, torch.float32).mul_(1.0 / (1.0 - p))
    assert torch.equal(ours, torch_path)
    assert "Dropout" in type(cpu_kernels.dropout(x.requires_grad_(), p).grad_fn).__name__


@pytest.mark.parametrize("T", [7, 16, 70])
@pytest.mark.parametrize("window", [0, 3])
def test_c_attention_weights_keep_the_entries_that_keep_mask_keeps(T, window, monkeypatch):
    """_attend on its C kernel and on torch's operations, same torch seed: the same kept entries
    (exactly), the same weights and output to float rounding, causal and sliding-window masks."""
    B, H, D = 3, 2, 5
    g = torch.Generator().manual_seed(1)
    qt, kt, vt = (torch.randn(B * H, D, T, generator=g) for _ in range(3))
    i = torch.arange(T)
    mask = ((i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)) if window else None
    results = []
    for lib in (native.library(), None):
        monkeypatch.setattr(native, "library", lambda lib=lib: lib)
        torch.manual_seed(4)
        with cpu_kernels.sequences_from(2):
            yt, (_, _, _, weights, kept, *mask_form) = cpu_kernels._attend(qt, kt, vt, mask, 0.3, B)
        results.append((yt, weights, kept, len(mask_form)))
    (y_c, w_c, k_c, form_c), (y_t, w_t, k_t, form_t) = results
    assert (form_c, form_t) == (2, 1)  # the rows' bounds (C kernel), keep (torch's)
    assert torch.equal(k_c == 0, k_t == 0) and 0.2 < (k_c[w_c > 0] == 0).float().mean() < 0.4
    torch.testing.assert_close(w_c, w_t)
    torch.testing.assert_close(k_c, k_t)
    torch.testing.assert_close(y_c, y_t)


def test_masks_whose_rows_are_not_one_run_take_torchs_operations():
    """The C kernel takes each row's allowed columns as one run; any other mask goes to torch."""
    T = 6
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    lo, hi = cpu_kernels._row_bounds(causal, T)
    assert lo.tolist() == [0] * T and hi.tolist() == list(range(1, T + 1))
    holes = causal.clone()
    holes[5, 2] = False
    assert cpu_kernels._row_bounds(holes, T) is None
    empty_row = causal.clone()
    empty_row[0, 0] = False
    assert cpu_kernels._row_bounds(empty_row, T) is None


def test_extreme_inputs_stay_exact_where_exp_is_clamped():
    """exp's clamps (0 below -87.3, exp(87) above 87): GELU of large |x|, its gradient, and a head
    whose logits span hundreds, against float64."""
    x = torch.cat([torch.linspace(-60, 60, 2001), torch.tensor([-1e4, 1e4, 0.0])]).requires_grad_()
    y = cpu_kernels.tanh_gelu(x)
    (dx,) = torch.autograd.grad(y, x, torch.ones_like(y))
    x64 = x.detach().double().requires_grad_()
    exact = 0.5 * x64 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    (exact_dx,) = torch.autograd.grad(exact, x64, torch.ones_like(exact))
    torch.testing.assert_close(y.double(), exact.detach(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(dx.double(), exact_dx, rtol=1e-5, atol=1e-5)
    g = torch.Generator().manual_seed(2)
    h, weight = torch.randn(64, 16, generator=g) * 40, torch.randn(23, 16, generator=g)
    targets = torch.randint(0, 21, (64,), generator=g)
    exact_losses = F.cross_entropy(h.double() @ weight[:21].double().t(), targets, reduction="none")
    torch.testing.assert_close(cpu_kernels.head_loss(h, weight, targets, 21, "none").double(), exact_losses,
                               rtol=1e-6, atol=1e-4)


def test_a_target_outside_the_vocabulary_is_refused_not_read(cpu_kernel_set):
    """The C kernel reads and writes logits[target]: a target past the vocabulary, inside the padding
    or not, raises on both kernel sets instead of touching other memory (or giving an infinite loss)."""
    h, weight = torch.randn(6, 8), torch.randn(24, 8)
    for target in (21, 23, 500, -1):
        targets = torch.tensor([0, 1, 2, target, 4, 5])
        with pytest.raises(IndexError, match=f"target {target} is out of bounds for a vocabulary of 21"):
            cpu_kernels.head_loss(h.clone().requires_grad_(), weight, targets, 21)
        with pytest.raises(IndexError):
            cpu_kernels.head_loss(h, weight, targets, 21, "none")
    with pytest.raises(ValueError, match="an output head of 24 rows for a vocabulary of 30"):
        cpu_kernels.head_loss(h, weight, torch.zeros(6, dtype=torch.long), 30)


def test_targets_of_any_integer_type_and_layout_give_the_same_loss_and_gradients(cpu_kernel_set):
    """The kernel reads int64 in a row: int32 targets, or a strided view, are the same targets."""
    g = torch.Generator().manual_seed(3)
    h, weight = torch.randn(12, 8, generator=g), torch.randn(24, 8, generator=g)
    base = torch.randint(0, 21, (12, 2), generator=g)
    results = []
    for targets in (base[:, 0].contiguous(), base[:, 0], base[:, 0].int()):
        hh, ww = h.clone().requires_grad_(), weight.clone().requires_grad_()
        loss = cpu_kernels.head_loss(hh, ww, targets, 21)
        loss.backward()
        results.append((loss, hh.grad, ww.grad, cpu_kernels.head_loss(h, weight, targets, 21, "none")))
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def test_tensors_the_c_kernels_do_not_take_go_to_torch():
    """float64, or float32 under CPU autocast (whose products come out in bf16), take torch's
    operations: the right values, never float32 arithmetic on other memory."""
    x = torch.randn(5, 7, dtype=torch.float64) * 3
    exact = 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    torch.testing.assert_close(cpu_kernels.tanh_gelu(x), exact)
    assert torch.equal(cpu_kernels.dropout(x, 0.0), x)
    q, k, v = (torch.randn(2, 2, 9, 4) for _ in range(3))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = cpu_kernels.attention_with_dropout(q, k, v, None, 0.0)
    torch.testing.assert_close(y.float(), F.scaled_dot_product_attention(q, k, v, is_causal=True), atol=0.05, rtol=0.05)


def test_a_nan_logit_gives_a_nan_loss(cpu_kernel_set):
    """Divergence is told by a non-finite loss: a NaN anywhere in a row's logits makes that row's
    loss NaN (the kernel's max skips a NaN; its sum of exponentials does not)."""
    h, weight = torch.randn(4, 8), torch.randn(24, 8)
    weight[7] = float("nan")  # column 7 of every row's logits
    losses = cpu_kernels.head_loss(h, weight, torch.tensor([0, 1, 2, 3]), 21, "none")
    assert torch.isnan(losses).all()
    assert torch.isnan(cpu_kernels.head_loss(h, weight, torch.tensor([0, 1, 2, 3]), 21))


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env=os.environ | env)


STATE = "from harness.model import native; print(native.state()); print(native.library_path(native.FLAGS + native.NATIVE_FLAGS))"


def test_built_once_per_machine_into_the_cache(tmp_path):
    first = _python(STATE, HARNESS_CACHE=str(tmp_path))
    state, path = first.stdout.split("\n")[:2]
    assert state == "native", first.stderr
    built = tmp_path / "kernels" / os.path.basename(path)
    assert built.is_file() and {p.name for p in (tmp_path / "kernels").iterdir()} <= {built.name, built.name + ".lock"}
    umask = os.umask(0)
    os.umask(umask)
    assert built.stat().st_mode & 0o777 == 0o777 & ~umask  # readable by whoever shares the cache
    stamp = built.stat().st_mtime_ns
    second = _python(STATE, HARNESS_CACHE=str(tmp_path), HARNESS_CC="false")  # a cached build needs no compiler
    assert second.stdout.split("\n")[0] == "native" and built.stat().st_mtime_ns == stamp
    built.write_bytes(built.read_bytes()[:100])  # a cached library that does not load (a crash mid-copy)
    third = _python(STATE, HARNESS_CACHE=str(tmp_path))
    assert third.stdout.split("\n")[0] == "native", third.stderr  # built again, not passed over for good
    assert built.stat().st_size > 100  # the -march=native build itself, not the portable one in its place
    assert _python(STATE, HARNESS_CACHE=str(tmp_path), HARNESS_CC="false").stdout.split("\n")[0] == "native"


def test_without_a_compiler_the_model_takes_torchs_operations(tmp_path):
    broken = _python(STATE, HARNESS_CACHE=str(tmp_path), HARNESS_CC="false")
    assert broken.returncode == 0, broken.stderr
    assert broken.stdout.startswith("torch (the C kernels did not build: false exited 1")
    assert not list((tmp_path / "kernels").glob("*.so")) and not list((tmp_path / "kernels").glob(".build-*"))
    off = _python(STATE, HARNESS_CACHE=str(tmp_path), HARNESS_NATIVE_KERNELS="0")
    assert off.stdout.startswith("torch (HARNESS_NATIVE_KERNELS=0)")


def test_results_do_not_depend_on_the_vector_width_or_optimisation(tmp_path, monkeypatch):
    """The same source built for this CPU's vectors at -O3 and as plain scalar code at -O0 gives
    bit-identical losses and gradients: no fused multiply-adds, no reassociation, fixed lanes."""
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path))
    scalar_flags = tuple("-O0" if flag == "-O3" else flag for flag in native.FLAGS)
    builds = [native._load(native.build(native.FLAGS + native.NATIVE_FLAGS)), native._load(native.build(scalar_flags))]
    from harness.model import GPTModel, ModelConfig, init_weights

    cfg = ModelConfig(vocab_size=97, context_length=16, emb_dim=32, n_heads=4, n_layers=2, drop_rate=0.25)
    g = torch.Generator().manual_seed(0)
    idx, targets = torch.randint(97, (3, 16), generator=g), torch.randint(97, (3, 16), generator=g)
    results = []
    for lib in builds:
        monkeypatch.setattr(native, "library", lambda lib=lib: lib)
        model = GPTModel(cfg).train()
        init_weights(model, 3)
        torch.manual_seed(8)
        loss = model(idx, targets)
        loss.backward()
        with torch.inference_mode():
            per_token = model.eval()(idx, targets, reduction="none")
        results.append([loss, per_token] + [p.grad for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))
