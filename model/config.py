"""The network's configuration: the book's GPT-2 small plus every architectural switch.

Every field is a switch an intervention TOML may set by name (see sweeps/interventions/).
A new switch is one documented() field; off by default, it keeps every stored run's identity (its
neutral value is its default: see documented). Defaults are the book's GPT_CONFIG_124M ("gpt2-small" here, 163,009,536 parameters untied).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin, get_type_hints

Norm = Literal["layernorm", "rmsnorm"]
Positions = Literal["learned", "rope", "nope"]
Mlp = Literal["gelu", "swiglu"]
Init = Literal["torch_default", "gpt2"]


_DEFAULT = object()


def not_allowed(name: str, value: Any, kind: Any) -> str | None:
    """Why a value of a Literal-typed key is refused, naming what is allowed; None where it is fine."""
    if get_origin(kind) is Literal and value not in get_args(kind):
        return f"{name}={value!r} is not one of {', '.join(map(str, get_args(kind)))}"
    return None


def check_literals(config: Any) -> None:
    """Raise ValueError naming the first Literal-typed field of a config dataclass with a value
    outside its choices (every config's one check of them)."""
    hints = get_type_hints(type(config))
    for f in dataclasses.fields(config):
        why = not_allowed(f.name, getattr(config, f.name), hints[f.name])
        if why:
            raise ValueError(why)


def documented(default: Any, doc: str, placement: bool = False, neutral: Any = _DEFAULT) -> Any:
    """A config key: its default and its one-line meaning (shown by `harness list --keys`).
    placement: a knob of where and how fast the run computes (memory, compilation, logging), which
    changes its result at most by float rounding; recorded with the run but not part of its identity.
    neutral: the value under which harness computes exactly what it computed before the key existed;
    the default unless given. A key at its neutral value enters no identity (harness.core.scheme), so
    a new switch that is off by default keeps every stored run; one whose default changes what the
    baseline computes declares the old behaviour's value here, and its default makes new runs."""
    return dataclasses.field(default=default, metadata={"doc": doc, "placement": placement,
                                                        "neutral": default if neutral is _DEFAULT else neutral})


def neutral_values(cls: type) -> dict[str, Any]:
    """Field name -> neutral value of a config dataclass (see documented)."""
    return {f.name: f.metadata.get("neutral", f.default) for f in dataclasses.fields(cls)}


def key_docs(cls: type) -> dict[str, tuple[Any, str]]:
    """Field name -> (default, one-line meaning) of a config dataclass."""
    return {f.name: (f.default, f.metadata.get("doc", "")) for f in dataclasses.fields(cls)}


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = documented(50257, "token ids the embedding and output head cover")
    context_length: int = documented(1024, "tokens per training window and evaluation window")
    emb_dim: int = documented(768, "width of the residual stream")
    n_heads: int = documented(12, "attention heads per layer (must divide emb_dim)")
    n_layers: int = documented(12, "transformer blocks")
    drop_rate: float = documented(0.1, "dropout on attention weights, before residual adds and after embeddings")
    qkv_bias: bool = documented(False, "biases on the query, key and value projections")
    tie_weights: bool = documented(False, "share the token embedding with the output head")
    bias: bool = documented(True, "False removes every Linear and norm bias (qkv_bias still adds Q/K/V biases)")
    norm: Norm = documented("layernorm", "layernorm (the book's) or rmsnorm")
    norm_eps: float = documented(1e-5, "epsilon of the normalisation layers")
    positions: Positions = documented("learned", "learned absolute embeddings, rope (rotary) or nope (none)")
    rope_base: float = documented(10000.0, "RoPE frequency base")
    mlp: Mlp = documented("gelu", "gelu (Linear, tanh-GELU, Linear at 4x) or swiglu (gated SiLU)")
    mlp_multiple_of: int = documented(256, "SwiGLU hidden size 8/3 * emb_dim rounded up to this multiple")
    parallel_block: bool = documented(False, "attention and MLP from one shared norm, added in parallel")
    init: Init = documented("torch_default", "torch_default or gpt2 (normal 0.02, residual projections scaled)")
    attention_window: int = documented(0, "0: full causal attention; W > 0: each token sees the last W tokens")
    vocab_multiple: int = documented(1, "pad the embedding/output vocabulary up to a multiple of this")

    @property
    def head_dim(self) -> int:
        return self.emb_dim // self.n_heads

    @property
    def padded_vocab_size(self) -> int:
        m = self.vocab_multiple
        return -(-self.vocab_size // m) * m

    @property
    def mlp_hidden(self) -> int:
        if self.mlp == "gelu":
            return 4 * self.emb_dim
        m = self.mlp_multiple_of
        return -(-(8 * self.emb_dim // 3) // m) * m

    def validate(self) -> None:
        """Raise ValueError naming the field when the combination cannot build a network."""
        check_literals(self)
        for name in ("vocab_size", "context_length", "emb_dim", "n_heads", "n_layers",
                     "vocab_multiple", "mlp_multiple_of"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.emb_dim % self.n_heads:
            raise ValueError(f"emb_dim={self.emb_dim} must be divisible by n_heads={self.n_heads}")
        if self.positions == "rope" and self.head_dim % 2:
            raise ValueError(f"rope needs an even head dimension, got {self.head_dim}")
        if not 0.0 <= self.drop_rate < 1.0:
            raise ValueError(f"drop_rate must be in [0, 1), got {self.drop_rate}")
        if self.attention_window < 0:
            raise ValueError(f"attention_window must be >= 0 (0 = full causal), got {self.attention_window}")
        if self.attention_window >= self.context_length:
            raise ValueError(f"attention_window={self.attention_window} must be smaller than "
                             f"context_length={self.context_length} (else it is full attention)")
        if self.norm_eps <= 0:
            raise ValueError(f"norm_eps must be > 0, got {self.norm_eps}")

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))
