"""The book's GPT-2 as one fast, readable module, with every architectural switch of ModelConfig.

Module and parameter names follow Raschka's "Build a Large Language Model (from Scratch)"
(tok_emb, pos_emb, trf_blocks.N.att.W_query, ff.layers, norm1, final_norm.scale, out_head, ...)
so a state_dict loads into the book's code (model/book.py) and back. What differs is only how
the same functions are computed: fused kernels (F.scaled_dot_product_attention, F.layer_norm)
instead of the book's hand-written tensor algebra, and on the eager CPU the kernels of
harness.model.cpu_kernels, which tests/test_model.py proves equivalent.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from harness.model import cpu_kernels
from harness.model.config import ModelConfig

# The Linears that write into the residual stream; GPT-2 init scales them by 1/sqrt(2 * n_layers).
RESIDUAL_PROJECTIONS = ("att.out_proj.weight", "ff.layers.2.weight", "ff.fc3.weight")


class LayerNorm(nn.Module):
    """The book's LayerNorm (biased variance, learnable `scale` and `shift`) via the fused kernel.

    F.layer_norm computes exactly (x - mean) / sqrt(var(unbiased=False) + eps) * scale + shift.
    """

    def __init__(self, dim: int, eps: float, bias: bool):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))
        self.shift = nn.Parameter(torch.zeros(dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, self.scale.shape, self.scale, self.shift, self.eps)


class RMSNorm(nn.Module):
    """x / sqrt(mean(x^2) + eps) * scale: no centring and no shift (Llama's norm)."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, self.scale.shape, self.scale, self.eps)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.emb_dim, cfg.norm_eps)
    return LayerNorm(cfg.emb_dim, cfg.norm_eps, cfg.bias)


def rope_tables(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin, (context_length, head_dim), computed as the book's precompute_rope_params."""
    d = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_base ** (torch.arange(0, d, 2).float() / d))
    angles = torch.arange(cfg.context_length).float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=1)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (B, H, T, D) queries or keys by position, "rotate half" layout as in the book.

    cos and sin are cast to x's dtype first so that under autocast the result stays in the
    low-precision dtype of v (SDPA wants q, k and v in one dtype).
    """
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos.to(x.dtype) + rotated * sin.to(x.dtype)


class Dropout(nn.Dropout):
    """nn.Dropout (same function: zero with probability p, scale survivors by 1/(1-p)).

    On CUDA and other devices it is F.dropout's fused kernel; on the eager CPU path it is
    harness.model.cpu_kernels.dropout, whose masks are keyed per sequence and several times faster
    than F.dropout's bernoulli_ there.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0 or not cpu_kernels.eager_cpu(x):
            return super().forward(x)
        return cpu_kernels.dropout(x, self.p)


class TanhGELU(nn.Module):
    """nn.GELU(approximate="tanh"), the book's GELU; on the eager CPU path in its sigmoid form
    (harness.model.cpu_kernels.tanh_gelu)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32 and cpu_kernels.eager_cpu(x):
            return cpu_kernels.tanh_gelu(x)
        return F.gelu(x, approximate="tanh")


class MultiHeadAttention(nn.Module):
    """The book's multi-head causal self-attention, computed by F.scaled_dot_product_attention.

    The heads stay a tensor dimension (no Python loop); dropout on the attention weights is SDPA's
    dropout_p, active only in training mode, as the book's nn.Dropout on attn_weights is. Training
    on the CPU with dropout takes cpu_kernels.projected_attention instead, projections included
    (attention_with_dropout after RoPE): SDPA has no fused CPU kernel with dropout; so does CPU
    training without dropout where the C kernels are built (cpu_kernels.projects_attention).
    Evaluation and CUDA always take SDPA (flash / memory-efficient kernels).
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.emb_dim
        self.n_heads = cfg.n_heads
        self.head_dim = cfg.head_dim
        self.drop_rate = cfg.drop_rate
        self.W_query = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.W_key = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.W_value = nn.Linear(d, d, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(d, d, bias=cfg.bias)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """mask: boolean (T, T), True where attention is allowed; None means plain causal."""
        B, T, d = x.shape
        p = self.drop_rate if self.training else 0.0
        if rope is None and runs_fast_path(self) and cpu_kernels.projects_attention(x, p):
            return cpu_kernels.projected_attention(x, self.W_query, self.W_key, self.W_value, self.out_proj, mask,
                                                   p, self.n_heads)
        cpu_dropout = p > 0 and cpu_kernels.eager_cpu(x)
        q = self.W_query(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.W_key(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        v = self.W_value(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cpu_dropout:
            y = cpu_kernels.attention_with_dropout(q, k, v, mask, self.drop_rate)
        else:
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=mask is None,
                dropout_p=self.drop_rate if self.training else 0.0,
            )
        return self.out_proj(y.transpose(1, 2).reshape(B, T, d))


class FeedForward(nn.Module):
    """mlp="gelu": the book's Linear(d, 4d) -> GELU(tanh) -> Linear(4d, d) as `layers`.

    mlp="swiglu": the gated SiLU MLP of the book's Llama chapter, fc3(silu(fc1(x)) * fc2(x)),
    hidden width cfg.mlp_hidden.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, h = cfg.emb_dim, cfg.mlp_hidden
        self.swiglu = cfg.mlp == "swiglu"
        if self.swiglu:
            self.fc1 = nn.Linear(d, h, bias=cfg.bias)
            self.fc2 = nn.Linear(d, h, bias=cfg.bias)
            self.fc3 = nn.Linear(h, d, bias=cfg.bias)
        else:
            self.layers = nn.Sequential(
                nn.Linear(d, h, bias=cfg.bias),
                TanhGELU(),
                nn.Linear(h, d, bias=cfg.bias),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            return self.fc3(F.silu(self.fc1(x)) * self.fc2(x))
        return self.layers(x)


class TransformerBlock(nn.Module):
    """Pre-norm residual block; parallel_block feeds attention and MLP from one shared norm1."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.parallel = cfg.parallel_block
        self.att = MultiHeadAttention(cfg)
        self.ff = FeedForward(cfg)
        self.norm1 = make_norm(cfg)
        self.norm2 = None if self.parallel else make_norm(cfg)
        self.drop_shortcut = Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.parallel:
            h = self.norm1(x)
            return x + self.drop_shortcut(self.att(h, rope, mask)) + self.drop_shortcut(self.ff(h))
        x = x + self.drop_shortcut(self.att(self.norm1(x), rope, mask))
        return x + self.drop_shortcut(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    """GPT-2 as the book builds it, plus the switches of ModelConfig.

    The constructor leaves PyTorch's default initialisation from the global RNG; call
    init_weights(model, seed) for the seeded, per-parameter-name initialisation cfg.init asks for.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.padded_vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim) if cfg.positions == "learned" else None
        self.drop_emb = Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = make_norm(cfg)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.padded_vocab_size, bias=False)
        if cfg.tie_weights:
            self.out_head.weight = self.tok_emb.weight
        if cfg.positions == "rope":
            cos, sin = rope_tables(cfg)
            self.register_buffer("rope_cos", cos, persistent=False)
            self.register_buffer("rope_sin", sin, persistent=False)
        # A window as long as the context is plain causal attention: keep SDPA's fast causal path.
        self.window = cfg.attention_window if cfg.attention_window < cfg.context_length else 0
        if self.window:
            # Built once for the full context; sliced to (T, T) per call and moved by .to() with
            # the module, so forward never rebuilds it and torch.compile sees a plain buffer.
            i = torch.arange(cfg.context_length)
            allowed = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - self.window)
            self.register_buffer("window_mask", allowed, persistent=False)

    forward_takes_targets = True  # the trainer and the evaluation pass the targets in and get the loss

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None,
                reduction: str = "mean") -> torch.Tensor:
        """Token ids (B, T), T <= context_length -> logits (B, T, vocab_size); with targets (B, T),
        the next-token cross-entropy instead, float32: the mean over all B * T positions, or with
        reduction="none" each position's, flat (as F.cross_entropy's reduction).

        The head computes padded_vocab_size columns (a matmul-friendly size) and the padding is
        sliced off here, so argmax, softmax and the loss never see the padded tokens. On the eager
        CPU path in float32 the head computes vocab_size rounded up to 8 columns instead, and the
        head and the loss are one function (harness.model.cpu_kernels.head_logits, head_loss).
        Targets must be valid token ids of idx's shape (no ignore_index).
        """
        T = idx.shape[1]
        if T > self.cfg.context_length:
            raise ValueError(f"sequence length {T} exceeds context_length {self.cfg.context_length}")
        if reduction not in ("mean", "none"):
            raise ValueError(f"reduction={reduction!r} is not one of mean, none")
        if targets is not None and targets.shape != idx.shape:
            raise ValueError(f"targets of shape {tuple(targets.shape)} for token ids of shape {tuple(idx.shape)}")
        x = self.tok_emb(idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(T, device=idx.device))
        x = self.drop_emb(x)
        rope = (self.rope_cos[:T], self.rope_sin[:T]) if self.cfg.positions == "rope" else None
        mask = self.window_mask[:T, :T] if self.window and T > self.window else None
        for block in self.trf_blocks:
            x = block(x, rope, mask)
        h = self.final_norm(x)
        vocab = self.cfg.vocab_size
        if runs_fast_path(self.out_head) and cpu_kernels.eager_cpu_float32(h):
            if targets is None:
                return cpu_kernels.head_logits(h, self.out_head.weight, vocab)
            return cpu_kernels.head_loss(h.flatten(0, 1), self.out_head.weight, targets.flatten(), vocab, reduction)
        logits = self.out_head(h)
        if self.cfg.padded_vocab_size != vocab:
            logits = logits[..., :vocab]
        if targets is not None:
            logits = logits.float() if logits.dtype.itemsize < 4 else logits  # 16-bit logits: the loss in float32
            return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction=reduction)
        return logits


OWN = "_harness_own"  # a module attribute set by mark_own: False where code changed the module or below it


def runs_fast_path(module: nn.Module) -> bool:
    """Whether a fast path that computes `module` without calling its submodules (cpu_kernels'
    projected attention reads the projections' weights, the fused head the head's) may run: only
    where the module is harness's own and unchanged (mark_own). The one decision, for every path."""
    return getattr(module, OWN, True)


def _hooked(module: nn.Module) -> bool:
    return any(getattr(module, hooks, None) for hooks in (
        "_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks"))


def mark_own(model: "GPTModel") -> None:
    """After code changed a built model (harness.training.seams): mark every module that is not
    what harness builds there, has a hook, an instance-level forward, or such a module below it, so
    that no fast path skips the code (runs_fast_path); those modules run the plain torch path."""
    with torch.device("meta"):
        reference = dict(GPTModel(model.cfg).named_modules())

    def mark(name: str, module: nn.Module) -> bool:
        ref = reference.get(name)
        children = dict(module.named_children())
        own = (ref is not None and type(module) is type(ref) and not _hooked(module) and "forward" not in vars(module)
               and set(children) == {n for n, _ in ref.named_children()})
        below = [mark(f"{name}.{c}" if name else c, m) for c, m in children.items()]
        setattr(module, OWN, own and all(below))
        return getattr(module, OWN)

    mark("", model)


def _stream_seed(seed: int, name: str) -> int:
    """A stable 64-bit seed for one parameter: the same (seed, name) gives the same stream in any
    process, on any machine, whatever other parameters the model has."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


def _initial_value(cfg: ModelConfig, name: str, module: nn.Module, attr: str,
                   shape: torch.Size, g: torch.Generator) -> torch.Tensor:
    """Float32 CPU initial value for parameter `name` (= module's `attr`) under cfg.init."""
    gpt2 = cfg.init == "gpt2"
    if isinstance(module, nn.Linear):
        if gpt2:
            if attr == "bias":
                return torch.zeros(shape)
            std = 0.02 / math.sqrt(2 * cfg.n_layers) if name.endswith(RESIDUAL_PROJECTIONS) else 0.02
            return torch.empty(shape).normal_(0.0, std, generator=g)
        # PyTorch's nn.Linear default: kaiming_uniform_(a=sqrt(5)) = U(+-1/sqrt(fan_in)), bias alike.
        bound = 1.0 / math.sqrt(module.in_features)
        return torch.empty(shape).uniform_(-bound, bound, generator=g)
    if isinstance(module, nn.Embedding):
        return torch.empty(shape).normal_(0.0, 0.02 if gpt2 else 1.0, generator=g)
    if attr == "scale":
        return torch.ones(shape)
    if attr == "shift":
        return torch.zeros(shape)
    raise TypeError(f"no initialisation rule for parameter {name!r} of {type(module).__name__} (code that adds "
                    "it gives it one with an init seam)")


@torch.no_grad()
def init_weights(model: nn.Module, seed: int, override=None) -> None:
    """Initialise every parameter from its own generator, seeded by (seed, parameter name).

    Seeding per name gives common random numbers: two arms that differ by a switch (say
    qkv_bias) start with bit-identical values in every parameter they share, so their difference
    in outcome is not blurred by different initial draws. Values are drawn on the CPU in float32
    and copied in, so they do not depend on the device or dtype. A tied output head is the
    embedding and is initialised once, as the embedding. Call it on the unwrapped model (before
    torch.compile or DDP), whose parameter names are the book's. `override(name, param, generator)`
    (a code intervention's init seam) may return a parameter's value instead (None: the rule here).
    """
    cfg: ModelConfig = model.cfg
    seen: set[int] = set()
    for mod_name, module in model.named_modules():
        for attr, p in module.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            name = f"{mod_name}.{attr}" if mod_name else attr
            if p.is_meta:
                raise ValueError(f"cannot initialise {name!r} on the meta device; materialise it first")
            g = torch.Generator().manual_seed(_stream_seed(seed, name))
            value = override(name, p, g) if override is not None else None
            p.copy_(_initial_value(cfg, name, module, attr, p.shape, g) if value is None else value)


def count_parameters(model: nn.Module) -> int:
    """Unique parameters: a tied head shares the embedding's tensor and is counted once."""
    return sum(p.numel() for p in model.parameters())


def parameter_counts(cfg: ModelConfig, convert=None) -> dict[str, int]:
    """Exact parameter counts of GPTModel(cfg), changed by `convert(model)` if given (code
    interventions), from a build on the meta device (no memory).

    embedding = tok_emb + pos_emb; non_embedding = total - embedding (a tied head is the embedding).
    """
    with torch.device("meta"):
        model = GPTModel(cfg)
        if convert is not None:
            convert(model)
    total = count_parameters(model)
    embedding = model.tok_emb.weight.numel()
    if model.pos_emb is not None:
        embedding += model.pos_emb.weight.numel()
    return {"total": total, "non_embedding": total - embedding, "embedding": embedding}


def flops_per_token(cfg: ModelConfig) -> int:
    """Training FLOPs per token, nanoGPT's MFU estimate: 6*N + 12*L*H*Q*T.

    N = parameters excluding position embeddings, L layers, H heads, Q head dim, T context length.
    """
    n = parameter_counts(cfg)["total"]
    if cfg.positions == "learned":
        n -= cfg.context_length * cfg.emb_dim
    return 6 * n + 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * cfg.context_length
