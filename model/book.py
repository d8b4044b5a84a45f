"""The book's own GPT-2 code (Raschka, "Build a Large Language Model (from Scratch)", ch. 3-4),
kept as the readable reference that model/gpt.py must reproduce.

Attention is the book's explicit algebra: registered mask buffer, masked_fill(-inf),
softmax(scores / sqrt(head_dim)), dropout on the weights, weights @ values. LayerNorm and GELU are
the book's hand-written formulas. The switches follow the same book where it has them (RoPE,
RMSNorm and the SiLU-gated MLP of its Llama chapter) and are direct edits of the block otherwise
(sliding-window mask, parallel block, no biases, padded vocabulary, tied head). Every parameter
name matches GPTModel, and the mask/RoPE buffers are non-persistent, so
`BookGPTModel(cfg).load_state_dict(GPTModel(cfg).state_dict())` works both ways.
It is slow and meant for comparison, not training.
"""

from __future__ import annotations

import torch
from torch import nn

from harness.model.config import ModelConfig


class LayerNorm(nn.Module):
    def __init__(self, emb_dim: int, eps: float, bias: bool):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))
        self.shift = nn.Parameter(torch.zeros(emb_dim)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=-1, keepdim=True)
        var = x.var(dim=-1, keepdim=True, unbiased=False)
        norm_x = (x - mean) / torch.sqrt(var + self.eps)
        out = self.scale * norm_x
        return out if self.shift is None else out + self.shift


class RMSNorm(nn.Module):
    def __init__(self, emb_dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.scale = nn.Parameter(torch.ones(emb_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        means = x.pow(2).mean(dim=-1, keepdim=True)
        x_normed = x * torch.rsqrt(means + self.eps)
        return (x_normed * self.scale).to(dtype=x.dtype)


class GELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 0.5 * x * (1 + torch.tanh(
            torch.sqrt(torch.tensor(2.0 / torch.pi)) * (x + 0.044715 * torch.pow(x, 3))
        ))


class SiLU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


def precompute_rope_params(head_dim: int, theta_base: float, context_length: int):
    inv_freq = 1.0 / (theta_base ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    positions = torch.arange(context_length)
    angles = positions[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=1)
    return torch.cos(angles), torch.sin(angles)


def compute_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    batch_size, num_heads, seq_len, head_dim = x.shape
    x1 = x[..., : head_dim // 2]
    x2 = x[..., head_dim // 2:]
    cos = cos[:seq_len, :].unsqueeze(0).unsqueeze(0)
    sin = sin[:seq_len, :].unsqueeze(0).unsqueeze(0)
    rotated = torch.cat((-x2, x1), dim=-1)
    x_rotated = (x * cos) + (rotated * sin)
    return x_rotated.to(dtype=x.dtype)


class MultiHeadAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d_in = d_out = cfg.emb_dim
        self.d_out = d_out
        self.num_heads = cfg.n_heads
        self.head_dim = d_out // cfg.n_heads
        self.W_query = nn.Linear(d_in, d_out, bias=cfg.qkv_bias)
        self.W_key = nn.Linear(d_in, d_out, bias=cfg.qkv_bias)
        self.W_value = nn.Linear(d_in, d_out, bias=cfg.qkv_bias)
        self.out_proj = nn.Linear(d_out, d_out, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.drop_rate)
        n = cfg.context_length
        mask = torch.triu(torch.ones(n, n), diagonal=1)
        if cfg.attention_window:  # also hide keys W or more positions back
            mask = mask + torch.tril(torch.ones(n, n), diagonal=-cfg.attention_window)
        self.register_buffer("mask", mask, persistent=False)
        self.rope = cfg.positions == "rope"
        if self.rope:
            cos, sin = precompute_rope_params(self.head_dim, cfg.rope_base, n)
            self.register_buffer("cos", cos, persistent=False)
            self.register_buffer("sin", sin, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, num_tokens, d_in = x.shape
        keys = self.W_key(x)
        queries = self.W_query(x)
        values = self.W_value(x)

        keys = keys.view(b, num_tokens, self.num_heads, self.head_dim)
        values = values.view(b, num_tokens, self.num_heads, self.head_dim)
        queries = queries.view(b, num_tokens, self.num_heads, self.head_dim)

        keys = keys.transpose(1, 2)
        queries = queries.transpose(1, 2)
        values = values.transpose(1, 2)
        if self.rope:
            keys = compute_rope(keys, self.cos, self.sin)
            queries = compute_rope(queries, self.cos, self.sin)

        attn_scores = queries @ keys.transpose(2, 3)
        mask_bool = self.mask.bool()[:num_tokens, :num_tokens]
        attn_scores.masked_fill_(mask_bool, -torch.inf)
        attn_weights = torch.softmax(attn_scores / keys.shape[-1] ** 0.5, dim=-1)
        attn_weights = self.dropout(attn_weights)

        context_vec = (attn_weights @ values).transpose(1, 2)
        context_vec = context_vec.contiguous().view(b, num_tokens, self.d_out)
        return self.out_proj(context_vec)


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, h = cfg.emb_dim, cfg.mlp_hidden
        self.swiglu = cfg.mlp == "swiglu"
        if self.swiglu:
            self.fc1 = nn.Linear(d, h, bias=cfg.bias)
            self.fc2 = nn.Linear(d, h, bias=cfg.bias)
            self.fc3 = nn.Linear(h, d, bias=cfg.bias)
            self.silu = SiLU()
        else:
            self.layers = nn.Sequential(
                nn.Linear(d, h, bias=cfg.bias),
                GELU(),
                nn.Linear(h, d, bias=cfg.bias),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            x_fc1 = self.fc1(x)
            x_fc2 = self.fc2(x)
            return self.fc3(self.silu(x_fc1) * x_fc2)
        return self.layers(x)


def make_norm(cfg: ModelConfig) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(cfg.emb_dim, cfg.norm_eps)
    return LayerNorm(cfg.emb_dim, cfg.norm_eps, cfg.bias)


class TransformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.parallel = cfg.parallel_block
        self.att = MultiHeadAttention(cfg)
        self.ff = FeedForward(cfg)
        self.norm1 = make_norm(cfg)
        self.norm2 = None if self.parallel else make_norm(cfg)
        self.drop_shortcut = nn.Dropout(cfg.drop_rate)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.parallel:
            shortcut = x
            x = self.norm1(x)
            return shortcut + self.drop_shortcut(self.att(x)) + self.drop_shortcut(self.ff(x))

        shortcut = x
        x = self.norm1(x)
        x = self.att(x)
        x = self.drop_shortcut(x)
        x = x + shortcut

        shortcut = x
        x = self.norm2(x)
        x = self.ff(x)
        x = self.drop_shortcut(x)
        x = x + shortcut
        return x


class BookGPTModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.padded_vocab_size, cfg.emb_dim)
        self.pos_emb = nn.Embedding(cfg.context_length, cfg.emb_dim) if cfg.positions == "learned" else None
        self.drop_emb = nn.Dropout(cfg.drop_rate)
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg.n_layers)])
        self.final_norm = make_norm(cfg)
        self.out_head = nn.Linear(cfg.emb_dim, cfg.padded_vocab_size, bias=False)
        if cfg.tie_weights:
            self.out_head.weight = self.tok_emb.weight

    def forward(self, in_idx: torch.Tensor) -> torch.Tensor:
        batch_size, seq_len = in_idx.shape
        x = self.tok_emb(in_idx)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(seq_len, device=in_idx.device))
        x = self.drop_emb(x)
        x = self.trf_blocks(x)
        x = self.final_norm(x)
        logits = self.out_head(x)
        return logits[..., : self.cfg.vocab_size]
