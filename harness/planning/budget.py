"""Chinchilla token budgets: tokens_per_param x parameters, rounded UP to whole global batches."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from harness.data.batches import BatchShape
from harness.core.config import ArmConfig
from harness.core.errors import UserError
from harness.model.gpt import parameter_counts


@dataclass(frozen=True)
class Budget:
    arm: str
    params: int
    non_embedding_params: int
    raw_tokens: int  # tokens_per_param x params, before rounding
    tokens: int  # raw_tokens rounded up to whole global batches
    steps: int
    tokens_per_step: int  # global_batch x context_length, whatever the number of processes

    def as_dict(self) -> dict:
        return asdict(self)


def tokens_per_step(cfg: ArmConfig, nproc: int) -> int:
    """Tokens per optimiser step; refuses a process count that cannot share the global batch."""
    BatchShape.of(cfg.train.global_batch, nproc, cfg.train.micro_batch)
    return cfg.train.global_batch * cfg.model.context_length


def chinchilla(cfg: ArmConfig, nproc: int) -> Budget:
    """This arm's own Chinchilla budget (the same on any number of processes that can run it)."""
    counts = parameter_counts(cfg.model)
    raw = math.ceil(cfg.train.tokens_per_param * counts["total"])
    return fixed_budget(cfg, nproc, raw)


def fixed_budget(cfg: ArmConfig, nproc: int, tokens: int) -> Budget:
    """A given token count for this arm, rounded up to whole global batches."""
    counts = parameter_counts(cfg.model)
    per_step = tokens_per_step(cfg, nproc)
    if tokens < per_step:
        raise UserError(f"a budget of {tokens:,} tokens is below one step of {per_step:,} tokens "
                        "(global_batch x context_length); raise --tokens")
    steps = math.ceil(tokens / per_step)
    return Budget(cfg.arm, counts["total"], counts["non_embedding"], tokens, steps * per_step, steps, per_step)
