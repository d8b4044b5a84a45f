"""The CPU's own kernels for the model's training step and evaluation: the same functions as
torch's, computed faster on an eager CPU (tests/test_model.py and tests/test_train_step.py prove
each equal to torch's). model/gpt.py takes them where eager_cpu(x) holds; CUDA and torch.compile
keep torch's fused kernels.

- keep_mask / dropout / attention_with_dropout: dropout masks drawn per sequence from a
  counter-based generator, so a sequence gets the same mask wherever its batch runs
  (sequences_from), faster than F.dropout's bernoulli_ on the CPU;
- projected_attention: the attention block with its projections, computed in the heads' (D, T)
  layout without copies between layouts;
- tanh_gelu: GELU(tanh) as x sigmoid(2u), since torch's CPU tanh is slow;
- head_logits / head_log_probs / head_loss: the output head on a width padded to a multiple of
  8, and the head and the cross-entropy as one function.

Where its C half (cpu_kernels.c, built by harness.model.native) is built, float32 dropout, the
attention weights' softmax and dropout, GELU and the head's cross-entropy run there, each in one
pass (the same masks word for word, the same functions to float rounding); elsewhere torch's
operations compute them, as here.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from harness.model import native


def takes_kernels(device_type: str, compiled: bool) -> bool:
    """The one rule for where this module's kernels run (keep_mask, the sigmoid form of GELU, the
    padded head): eager CPU work. torch.compile fuses F.dropout, SDPA's dropout and F.gelu into code
    of its own, and CUDA has fused kernels for them, so both keep torch's functions. The training
    step keys its dropout masks by the same rule (harness.training.worker.eager_cpu_step), so the
    masks cannot follow one path while the kernels follow the other."""
    return device_type == "cpu" and not compiled


def eager_cpu(x: torch.Tensor) -> bool:
    """Whether to take this module's kernels for `x` (takes_kernels)."""
    return takes_kernels(x.device.type, torch.compiler.is_compiling())


def eager_cpu_float32(x: torch.Tensor) -> bool:
    """eager_cpu(x) for float32 work outside autocast: the kernels written as autograd Functions
    (the projected attention, the head and its loss), which autocast does not cast into."""
    return x.dtype == torch.float32 and eager_cpu(x) and not torch.is_autocast_enabled("cpu")


def _c_kernels(*tensors: torch.Tensor):
    """The C kernels (harness.model.native) for these tensors, or None: they take float32 CPU tensors
    outside autocast and torch.compile (eager_cpu_float32), where the library is built at all."""
    lib = native.library()
    return lib if lib is not None and all(eager_cpu_float32(t) for t in tensors) else None


_first_sequence = 0  # index in its step's global batch of the current micro-batch's first sequence


@contextmanager
def sequences_from(first: int) -> Iterator[None]:
    """Key the CPU dropout masks drawn inside this block by global sequence index: the micro-batch's
    row b is sequence first + b of its step. With one torch seed per step, every sequence then gets
    the same masks however the step's batch is split over processes and micro-steps."""
    global _first_sequence
    before, _first_sequence = _first_sequence, first
    try:
        yield
    finally:
        _first_sequence = before


PHILOX_WORDS = 16  # 16-bit words per Philox4x64 counter step: a sequence's block starts on a step boundary


def _mask_key() -> int:
    """The Philox key of one mask: one draw from torch's default CPU generator (its state is the run's
    dropout stream, seeded per step)."""
    return int(torch.randint(0, 2**62, (1,)).item())


def _threshold(p: float) -> int:
    """The smallest 16-bit word that keeps its entry: kept with probability 1 - p to within 2^-16."""
    return math.ceil(p * 2**16)


def keep_mask(shape: torch.Size, p: float, dtype: torch.dtype, sequences: int | None = None) -> torch.Tensor:
    """A CPU dropout mask: each entry 1 with probability 1 - p, else 0 (float, in `dtype`).

    The tensor holds `sequences` (default shape[0]) equal contiguous blocks, one per sequence of the
    micro-batch. Every entry is a 16-bit word of numpy's Philox4x64 counter-based generator, keyed
    by one draw from torch's default CPU generator, and sequence s's block starts at counter step
    s x (its block's words, rounded up to a whole step) (see sequences_from): so the whole
    micro-batch is one vectorised draw, and a sequence gets the same mask in any micro-batch, on
    any process, from the same torch random state. An entry is kept when its word is at least
    ceil(p x 2^16), which keeps it with probability 1 - p to within 2^-16 (p = 0.1 drops 0.100006).
    This is faster than F.dropout's bernoulli_ (a Mersenne twister), which dominated a CPU training
    step of the small presets; 16-bit words halve the generator's work against 32-bit ones (the
    figures: reports/benchmarks.md, "Figures once in docstrings").
    """
    key = _mask_key()
    n = shape[0] if sequences is None else sequences
    per = math.prod(shape) // n
    stride = -(-per // PHILOX_WORDS) * PHILOX_WORDS
    words = np.random.Philox(key=key, counter=_first_sequence * (stride // PHILOX_WORDS)).random_raw(n * stride // 4)
    words = words.view(np.uint16).reshape(n, stride)[:, :per]
    threshold = _threshold(p)
    keep = np.empty(tuple(shape), dtype=np.float32)
    if threshold >= 2**16:  # p within 2^-16 of 1: every word is below it
        keep.fill(0.0)
    else:
        np.greater_equal(words.reshape(tuple(shape)), np.uint16(threshold), out=keep, casting="unsafe")
    mask = torch.from_numpy(keep)
    return mask if dtype == torch.float32 else mask.to(dtype)


class _Dropout(torch.autograd.Function):
    """x times keep_mask's mask scaled by 1/(1-p), mask and product in one pass of the C kernel."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float) -> torch.Tensor:
        x = x.contiguous()
        y, mask = torch.empty_like(x), torch.empty_like(x)
        native.library().harness_dropout(x.data_ptr(), y.data_ptr(), mask.data_ptr(), x.shape[0], x[0].numel(),
                                         _mask_key(), _first_sequence, _threshold(p), 1.0 / (1.0 - p))
        ctx.save_for_backward(mask)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable  # what forward saved is not linked to its inputs
    def backward(ctx, grad: torch.Tensor):
        (mask,) = ctx.saved_tensors
        return grad * mask, None


def dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """F.dropout(x, p) in training mode, with keep_mask's mask: zero with probability p, survivors
    scaled by 1/(1-p). The C kernel's (_Dropout) gives the same values as torch's operations here."""
    if x.numel() and _c_kernels(x) is not None:
        return _Dropout.apply(x, p)
    return x * keep_mask(x.shape, p, x.dtype).mul_(1.0 / (1.0 - p))


def _row_bounds(mask: torch.Tensor | None, T: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(lo, hi), int32: row i of a boolean attention mask (True: allowed; None: causal) allows exactly
    the columns [lo[i], hi[i]); None where some row's allowed columns are not one non-empty run
    (the C kernel takes only runs: causal and sliding-window masks are)."""
    if mask is None:
        return torch.zeros(T, dtype=torch.int32), torch.arange(1, T + 1, dtype=torch.int32)
    cols = torch.arange(T)
    lo = torch.where(mask, cols, T).amin(1)
    hi = torch.where(mask, cols + 1, 0).amax(1)
    if not bool((lo < hi).all()) or not torch.equal(mask, (cols >= lo[:, None]) & (cols < hi[:, None])):
        return None
    return lo.to(torch.int32), hi.to(torch.int32)


def _attend(qt: torch.Tensor, kt: torch.Tensor, vt: torch.Tensor, mask: torch.Tensor | None, p: float,
            sequences: int):
    """Attention with dropout on (B*H, D, T) queries, keys and values (each head's D x T matrix):
    (the (B*H, D, T) output, what _attend_backward needs). Every product whose result has D rows
    is computed in that transposed layout (v^T (w m)^T instead of (w m) v, and likewise for the
    gradients), which MKL runs faster for a small head_dim than the (T, D) one (reports/benchmarks.md);
    each entry is the same dot product. The weights' softmax and dropout are the C kernel's where it
    is built (one pass, and only over the allowed columns), else torch's with keep_mask's mask: the
    same masks either way."""
    BH, D, T = qt.shape
    alpha = 1.0 / math.sqrt(D)
    lib = _c_kernels(qt, kt, vt)
    bounds = _row_bounds(mask, T) if lib is not None else None
    if bounds is None:  # p 0: no mask drawn (none saved), kept is the weights, as on the C kernel's path
        weights = torch.softmax(torch.baddbmm(_mask_bias(mask, T, qt), qt.transpose(1, 2), kt, alpha=alpha), dim=-1)
        keep = keep_mask(weights.shape, p, weights.dtype, sequences=sequences) if p > 0 else None
        kept = weights * keep if keep is not None else weights
        mask_form: tuple[torch.Tensor | None, ...] = (keep,)
    else:
        scores = torch.bmm(qt.transpose(1, 2), kt)
        weights = torch.empty_like(scores)
        kept = torch.empty_like(scores) if p > 0 else weights
        if lib.harness_attention_weights(scores.data_ptr(), weights.data_ptr(), kept.data_ptr() if p > 0 else None,
                                         sequences, BH // sequences, T, bounds[0].data_ptr(), bounds[1].data_ptr(),
                                         alpha, _mask_key() if p > 0 else 0, _first_sequence, _threshold(p)):
            raise MemoryError("the attention kernel could not allocate a row's mask words")
        mask_form = bounds
    yt = torch.bmm(vt, kept.transpose(1, 2)).mul_(1.0 / (1.0 - p))
    return yt, (qt, kt, vt, weights, kept, *mask_form)


def _attend_backward(gt: torch.Tensor, saved, p: float):
    """The gradients (d_qt, d_kt, d_vt) of _attend's inputs from its output's gradient gt, all (B*H, D, T)."""
    qt, kt, vt, weights, kept, *mask_form = saved  # (keep or None,) on torch's path, the rows' (lo, hi) on the C kernel's
    alpha = 1.0 / math.sqrt(qt.shape[1])
    gt = gt * (1.0 / (1.0 - p))
    d_vt = torch.bmm(gt, kept)
    d_kept = torch.bmm(gt.transpose(1, 2), vt)
    if len(mask_form) == 1:
        keep = mask_form[0]
        d_scores = torch._softmax_backward_data(d_kept if keep is None else d_kept.mul_(keep), weights, -1,
                                                weights.dtype)
    else:
        lo, hi = mask_form
        native.library().harness_attention_weights_backward(d_kept.data_ptr(), weights.data_ptr(), kept.data_ptr(),
                                                            d_kept.shape[0] * d_kept.shape[1], d_kept.shape[2],
                                                            lo.data_ptr(), hi.data_ptr())
        d_scores = d_kept
    d_qt = torch.bmm(kt, d_scores.transpose(1, 2)).mul_(alpha)
    d_kt = torch.bmm(qt, d_scores).mul_(alpha)
    return d_qt, d_kt, d_vt


class _AttentionWithDropout(torch.autograd.Function):
    """_attend for (B, H, T, D) queries, keys and values (after RoPE), with its backward."""

    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                p: float) -> torch.Tensor:
        B, H, T, D = q.shape
        qt, kt, vt = (t.transpose(2, 3).reshape(B * H, D, T) for t in (q, k, v))
        yt, saved = _attend(qt, kt, vt, mask, p, B)
        ctx.save_for_backward(*saved)
        ctx.p = p
        return yt.view(B, H, D, T).transpose(2, 3)

    @staticmethod
    @torch.autograd.function.once_differentiable  # what forward saved is not linked to its inputs
    def backward(ctx, grad: torch.Tensor):
        B, H, T, D = grad.shape
        grads = _attend_backward(grad.transpose(2, 3).reshape(B * H, D, T), ctx.saved_tensors, ctx.p)
        return (*(g.view(B, H, D, T).transpose(2, 3) for g in grads), None, None)


def projects_attention(x: torch.Tensor, p: float) -> bool:
    """Whether the attention block of x takes projected_attention: on the eager CPU in float32 with
    dropout (SDPA has no CPU kernel with dropout), and in training without it where the C kernels are
    built (forward and backward faster than SDPA's at the tiny preset); evaluation keeps SDPA's
    flash kernel, which is as fast as this path's forward."""
    return eager_cpu_float32(x) and (p > 0 or (torch.is_grad_enabled() and native.library() is not None))


def _mask_bias(mask: torch.Tensor | None, T: int, like: torch.Tensor) -> torch.Tensor:
    """The (T, T) additive form of a boolean attention mask (True: allowed; None: causal): 0 or -inf."""
    allowed = torch.ones(T, T, dtype=torch.bool, device=like.device).tril_() if mask is None else mask
    return torch.zeros(T, T, dtype=like.dtype, device=like.device).masked_fill_(~allowed, float("-inf"))


def attention_with_dropout(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None,
                           p: float) -> torch.Tensor:
    """softmax(q k^T / sqrt(D) + mask) with dropout p on the weights, times v: (B, H, T, D) in and out.

    SDPA's own CPU path for dropout > 0 is its unfused "math" fallback (no flash kernel on the CPU
    supports dropout); this is the same algebra with fewer passes over the (B*H, T, T) weights
    (_attend): the scale and the causal/window mask are folded into one baddbmm (an additive -inf
    bias, so no masked_fill forward or backward), the mask comes from keep_mask, and the dropout
    scale 1/(1-p) is applied to the (B, H, T, D) output instead of the T/D times larger weights.
    """
    return _AttentionWithDropout.apply(q, k, v, mask, p)


def _project(w: torch.Tensor, b: torch.Tensor | None, xt: torch.Tensor) -> torch.Tensor:
    """w x_i (+ b) for each (features, T) matrix x_i of xt: Linear in the transposed layout."""
    w = w.expand(xt.shape[0], *w.shape)
    return torch.bmm(w, xt) if b is None else torch.baddbmm(b[:, None], w, xt)


class _ProjectedAttention(torch.autograd.Function):
    """out_proj(attention_with_dropout(W_query x, W_key x, W_value x)) for x (B, T, d), with its
    backward: the query, key and value projections are computed straight into the (B, d, T) =
    (B*H, D, T) layout that _attend takes, and the output projection reads _attend's output in it,
    so no tensor is copied between layouts (the module's own path copies q, k, v, the output and
    their gradients, about a tenth of its time at the tiny preset). The same dot products as the
    Linear layers; a weight's gradient sums over the batch's sequences one sequence at a time."""

    @staticmethod
    def forward(ctx, x, wq, bq, wk, bk, wv, bv, wo, bo, mask, p: float, n_heads: int):
        B, T, d = x.shape
        xt = x.transpose(1, 2)
        qt, kt, vt = (_project(w, b, xt).view(B * n_heads, d // n_heads, T) for w, b in ((wq, bq), (wk, bk), (wv, bv)))
        yt, saved = _attend(qt, kt, vt, mask, p, B)
        yt = yt.view(B, d, T)
        wo_t = wo.t().expand(B, d, d)
        out = torch.bmm(yt.transpose(1, 2), wo_t) if bo is None else torch.baddbmm(bo, yt.transpose(1, 2), wo_t)
        ctx.save_for_backward(x, wq, wk, wv, wo, yt, *saved)
        ctx.p, ctx.n_heads = p, n_heads
        ctx.biases = tuple(b is not None for b in (bq, bk, bv, bo))
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable  # what forward saved is not linked to its inputs
    def backward(ctx, grad: torch.Tensor):
        x, wq, wk, wv, wo, yt, *saved = ctx.saved_tensors
        B, T, d = x.shape
        grad = grad.contiguous()
        d_wo = torch.bmm(grad.transpose(1, 2), yt.transpose(1, 2)).sum(0)
        gt = torch.bmm(wo.t().expand(B, d, d), grad.transpose(1, 2)).view(B * ctx.n_heads, d // ctx.n_heads, T)
        d_qkv = [g.view(B, d, T) for g in _attend_backward(gt, saved, ctx.p)]
        d_x = torch.bmm(d_qkv[0].transpose(1, 2), wq.expand(B, d, d))
        d_x.baddbmm_(d_qkv[1].transpose(1, 2), wk.expand(B, d, d))
        d_x.baddbmm_(d_qkv[2].transpose(1, 2), wv.expand(B, d, d))
        d_w = [torch.bmm(g, x).sum(0) for g in d_qkv]
        d_b = [g.sum((0, 2)) if has else None for g, has in zip(d_qkv, ctx.biases)]
        d_bo = grad.sum((0, 1)) if ctx.biases[3] else None
        return (d_x, d_w[0], d_b[0], d_w[1], d_b[1], d_w[2], d_b[2], d_wo, d_bo, None, None, None)


def projected_attention(x: torch.Tensor, query: nn.Linear, key: nn.Linear, value: nn.Linear, out: nn.Linear,
                        mask: torch.Tensor | None, p: float, n_heads: int) -> torch.Tensor:
    """out(attention_with_dropout(query(x), key(x), value(x) split into n_heads heads)) for x (B, T, d),
    through _ProjectedAttention: the same function, in fewer passes (no RoPE between the projections
    and the attention: with RoPE the module takes attention_with_dropout)."""
    return _ProjectedAttention.apply(x, query.weight, query.bias, key.weight, key.bias, value.weight, value.bias,
                                     out.weight, out.bias, mask, p, n_heads)


_GELU_C = math.sqrt(2.0 / math.pi)  # the tanh approximation: u = C (x + A x^3)
_GELU_A = 0.044715


class _TanhGELUFunction(torch.autograd.Function):
    """0.5 x (1 + tanh(u)) computed as x sigmoid(2u), the same function (tanh(u) = 2 sigmoid(2u) - 1),
    in place where it can be. torch's CPU tanh is about three times slower than its sigmoid here,
    so F.gelu(approximate="tanh") and its backward were an eighth of a tiny training step."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        lib = _c_kernels(x)
        if lib is None:
            s = (x * x).mul_(2 * _GELU_C * _GELU_A).add_(2 * _GELU_C).mul_(x).sigmoid_()  # sigmoid(2u)
            y = x * s
        else:  # one pass; s only where a backward will want it
            x = x.contiguous()
            y = torch.empty_like(x)
            s = torch.empty_like(x) if ctx.needs_input_grad[0] else None
            lib.harness_gelu(x.data_ptr(), y.data_ptr(), s.data_ptr() if s is not None else None, x.numel())
        ctx.save_for_backward(x, s)
        ctx.native = lib is not None
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable  # what forward saved is not linked to its inputs
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # d/dx x s = s + x s (1 - s) 2u', with 2u' = 2C (1 + 3A x^2)
        x, s = ctx.saved_tensors
        if not ctx.native:
            x_du = (x * x).mul_(6 * _GELU_C * _GELU_A).add_(2 * _GELU_C).mul_(x)
            return (1 - s).mul_(s).mul_(x_du).add_(s).mul_(grad)
        grad, dx = grad.contiguous(), torch.empty_like(x)
        native.library().harness_gelu_backward(x.data_ptr(), s.data_ptr(), grad.data_ptr(), dx.data_ptr(), x.numel())
        return dx


def tanh_gelu(x: torch.Tensor) -> torch.Tensor:
    """F.gelu(x, approximate="tanh") in its sigmoid form (_TanhGELUFunction; the C kernel's for float32
    where it is built), within float32 rounding of it (tests/test_model.py)."""
    return _TanhGELUFunction.apply(x)


def _padded_rows(weight: torch.Tensor, vocab: int) -> torch.Tensor:
    """weight[:vocab] with zero rows appended up to a multiple of 8: a matmul-friendly width for the
    CPU (the 257 columns of a byte vocabulary took twice as long as 264)."""
    used = weight[:vocab]
    pad = -vocab % 8
    return torch.cat([used, used.new_zeros(pad, used.shape[1])]) if pad else used


def head_logits(h: torch.Tensor, weight: torch.Tensor, vocab: int) -> torch.Tensor:
    """h W[:vocab]^T, the output head's first `vocab` logits, computed with _padded_rows: the same
    values (a column's dot products do not change), sooner."""
    return F.linear(h, _padded_rows(weight, vocab))[..., :vocab]


def head_log_probs(h: torch.Tensor, weight: torch.Tensor, vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(_padded_rows(weight, vocab), the log-softmax of h's logits over that padded width): the
    padding's columns are set to -inf, so their probability is exactly 0 and every pass runs on
    a contiguous matmul-friendly width (a slice of it would be copied by log_softmax)."""
    padded = _padded_rows(weight, vocab)
    logits = F.linear(h, padded)
    logits[:, vocab:] = float("-inf")
    return padded, torch.log_softmax(logits, dim=-1)


def _out_of_vocabulary(target: int, vocab: int) -> IndexError:
    return IndexError(f"target {target} is out of bounds for a vocabulary of {vocab}")


def _head_scores(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab: int, for_backward: bool):
    """(padded weight, scores, each position's loss, the targets as contiguous int64, whether the C
    kernel ran) of the head: the C kernel's where it takes h and the weight (scores: the softmax over
    the padded width if for_backward, else the logits), else torch's (scores: the log-probabilities,
    head_log_probs). A target outside the vocabulary is refused on both."""
    if weight.shape[0] < vocab:
        raise ValueError(f"an output head of {weight.shape[0]} rows for a vocabulary of {vocab}")
    targets = targets.contiguous().long()
    lib = _c_kernels(h, weight)
    if lib is None:
        if targets.numel() and not 0 <= int(targets.min()) <= int(targets.max()) < vocab:
            raise _out_of_vocabulary(next(int(t) for t in targets if not 0 <= t < vocab), vocab)
        padded, log_probs = head_log_probs(h, weight, vocab)
        return padded, log_probs, log_probs.gather(1, targets[:, None]).squeeze(1).neg_(), targets, False
    padded = _padded_rows(weight, vocab)
    logits = F.linear(h, padded)
    losses = logits.new_empty(h.shape[0])
    bad = lib.harness_cross_entropy(logits.data_ptr(), targets.data_ptr(), losses.data_ptr(), h.shape[0],
                                    logits.shape[1], vocab, for_backward)
    if bad >= 0:  # as gather would refuse it
        raise _out_of_vocabulary(int(targets[bad]), vocab)
    if bad == -2:
        raise MemoryError("the cross-entropy kernel could not allocate a row's exponentials")
    if bad != -1:
        raise ValueError(f"the cross-entropy kernel refused a vocabulary of {vocab} in {logits.shape[1]} columns")
    return padded, logits, losses, targets, True


class _HeadCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of the output head's logits h W[:vocab]^T against targets, in one pass
    each way: the same function as F.cross_entropy(out_head(h)[:, :vocab], targets). The forward
    keeps only the log-probabilities (head_log_probs), or on the C kernel's path the probabilities,
    and the backward turns them into the gradient in place (softmax - one-hot), without
    F.cross_entropy's zero-filled one-hot gradient and its second softmax pass."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab: int) -> torch.Tensor:
        padded, scores, losses, targets, ctx.native = _head_scores(h, weight, targets, vocab, for_backward=True)
        ctx.save_for_backward(h, weight, padded, scores, targets)
        ctx.vocab = vocab
        return losses.sum().div_(h.shape[0])

    @staticmethod
    @torch.autograd.function.once_differentiable  # what forward saved is not linked to its inputs
    def backward(ctx, grad: torch.Tensor):
        h, weight, padded, scores, targets = ctx.saved_tensors  # a second backward fails: scores are reused
        N, scale = h.shape[0], grad / h.shape[0]
        if ctx.native:  # the softmax, and the targets the kernel checked
            native.library().harness_cross_entropy_backward(scores.data_ptr(), targets.data_ptr(), N, scores.shape[1],
                                                            float(scale))
            d_logits = scores
        else:  # the log-probabilities
            d_logits = scores.exp_()  # the padding's columns: exp(-inf) = 0
            d_logits.scatter_add_(1, targets[:, None], d_logits.new_full((N, 1), -1.0))
            d_logits.mul_(scale)
        d_weight = torch.zeros_like(weight)
        torch.mm(d_logits[:, :ctx.vocab].t(), h, out=d_weight[:ctx.vocab])
        return d_logits @ padded, d_weight, None, None


def head_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, vocab: int,
              reduction: str = "mean") -> torch.Tensor:
    """F.cross_entropy(h W[:vocab]^T, targets, reduction) for h (N, d) and targets (N,): the mean
    through _HeadCrossEntropy, each position's (reduction="none") from _head_scores."""
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r} is not one of mean, none")
    if reduction == "mean":
        return _HeadCrossEntropy.apply(h, weight, targets, vocab)
    return _head_scores(h, weight, targets, vocab, for_backward=False)[2]
