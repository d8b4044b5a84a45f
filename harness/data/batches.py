"""The batch order and the evaluation windows over a tokenized split.

Training: the sequence of global batches is a pure function of (data seed, step), the same for
any number of processes (BatchSampler). Evaluation: non-overlapping windows that make every token
after the first a target exactly once (eval_batches).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from harness.core.errors import UserError


def n_windows(split_len: int, context_length: int) -> int:
    """Non-overlapping training windows: window w is tokens[w*T : w*T+T+1] (inputs plus shift)."""
    return max(split_len - 1, 0) // context_length


def epochs_needed(tokens_budget: int, split_len: int, context_length: int) -> float:
    """How many passes over the train windows a budget of trained tokens takes."""
    per_epoch = n_windows(split_len, context_length) * context_length
    if per_epoch == 0:
        return float("inf")
    return tokens_budget / per_epoch


def check_epochs(tokens_budget: int, split_len: int, context_length: int, allow_repeat: bool) -> float:
    """epochs_needed, raising UserError when it exceeds one and repeating data was not allowed."""
    if n_windows(split_len, context_length) == 0:
        raise UserError(f"the train split has {split_len:,} tokens, fewer than context_length + 1 = "
                        f"{context_length + 1}: not one training window; use a larger corpus or a shorter context")
    epochs = epochs_needed(tokens_budget, split_len, context_length)
    if epochs > 1 and not allow_repeat:
        raise UserError(
            f"a budget of {tokens_budget:,} tokens needs {epochs:.2f} epochs over the "
            f"{split_len:,}-token train split at context {context_length}; to repeat data pass "
            "--set allow_repeat=true, or lower the budget or use a larger corpus"
        )
    return epochs


@dataclass(frozen=True)
class BatchShape:
    """How one optimiser step's global batch is spread: over processes, then micro-steps.

    The global batch (sequences per optimiser step) is part of the experiment; the number of
    processes only decides where it runs. Each process takes global_batch / world_size sequences
    in micro-steps of micro_batch: the largest divisor of its share up to the configured
    micro_batch (a memory knob), so gradient accumulation is derived, as in nanoGPT."""

    global_batch: int
    world_size: int
    micro_batch: int

    @classmethod
    def of(cls, global_batch: int, world_size: int, max_micro_batch: int) -> "BatchShape":
        if global_batch < 1 or world_size < 1 or max_micro_batch < 1:
            raise UserError(f"global_batch ({global_batch}), processes ({world_size}) and micro_batch "
                            f"({max_micro_batch}) must all be positive")
        if global_batch % world_size:
            valid = [n for n in range(1, global_batch + 1) if global_batch % n == 0]
            shown = ", ".join(map(str, valid[:12])) + (", ..." if len(valid) > 12 else "")
            raise UserError(f"a global batch of {global_batch} sequences cannot be split evenly over {world_size} "
                            f"processes; valid process counts (--nproc x --nnodes): {shown}")
        per_rank = global_batch // world_size
        micro = max(m for m in range(1, min(max_micro_batch, per_rank) + 1) if per_rank % m == 0)
        return cls(global_batch, world_size, micro)

    @property
    def per_rank(self) -> int:
        return self.global_batch // self.world_size

    @property
    def accum(self) -> int:
        """Micro-steps per optimiser step on each process."""
        return self.per_rank // self.micro_batch

    def first_sequence(self, rank: int, micro_step: int) -> int:
        """Index, within its step's global batch, of the first sequence of (rank, micro_step)."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} is outside 0..{self.world_size - 1}")
        if not 0 <= micro_step < self.accum:
            raise ValueError(f"micro_step {micro_step} is outside 0..{self.accum - 1}")
        return rank * self.per_rank + micro_step * self.micro_batch


class BatchSampler:
    """The training batch order as a pure function of (data_seed, step).

    Global sequence i = step * global_batch + j reads window perm_e[i % n_windows] of epoch
    e = i // n_windows, where perm_e comes from PCG64 seeded by (data_seed, e), or is the
    identity with shuffle=False (the seed author's fixed order). Rank r takes the contiguous
    slice [r*per_rank, (r+1)*per_rank) of the step's global batch and micro-step m the slice
    [m*micro_batch, (m+1)*micro_batch) of that, so the sequences trained per step do not depend
    on how the global batch is spread over processes and accumulation steps.
    """

    def __init__(self, tokens: np.ndarray, context_length: int, data_seed: int, shuffle: bool = True):
        if context_length < 1:
            raise UserError(f"context_length must be a positive integer, got {context_length}")
        if data_seed < 0:
            raise UserError(f"data_seed must be a non-negative integer, got {data_seed}")
        self.tokens = np.asarray(tokens)
        self.context_length = context_length
        self.data_seed = data_seed
        self.shuffle = shuffle
        self.n_windows = n_windows(len(self.tokens), context_length)
        if self.n_windows == 0:
            raise UserError(
                f"the train split has {len(self.tokens):,} tokens, fewer than context_length + 1 = "
                f"{context_length + 1}; use a larger corpus or a shorter context"
            )
        self._perms: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        """Window order of one epoch; this and the previous epoch stay cached for straddling batches."""
        if epoch not in self._perms:
            if self.shuffle:
                rng = np.random.Generator(np.random.PCG64([self.data_seed, epoch]))
                perm = rng.permutation(self.n_windows)
            else:
                perm = np.arange(self.n_windows)
            self._perms = {e: p for e, p in self._perms.items() if e == epoch - 1}
            self._perms[epoch] = perm
        return self._perms[epoch]

    def window_ids(self, start: int, count: int) -> np.ndarray:
        """Windows of global sequences start .. start+count-1."""
        out = np.empty(count, dtype=np.int64)
        done = 0
        while done < count:
            i = start + done
            epoch, offset = divmod(i, self.n_windows)
            take = min(count - done, self.n_windows - offset)
            out[done : done + take] = self.permutation(epoch)[offset : offset + take]
            done += take
        return out

    def batch(self, step: int, shape: BatchShape, rank: int, micro_step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) int64 CPU tensors of shape (micro_batch, T) for this rank and micro-step."""
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}")
        start = step * shape.global_batch + shape.first_sequence(rank, micro_step)
        T = self.context_length
        offsets = self.window_ids(start, shape.micro_batch)[:, None] * T + np.arange(T + 1)
        return _inputs_targets(self.tokens[offsets])


def eval_batches(
    tokens: np.ndarray, context_length: int, batch_size: int, positions: bool = False
) -> Iterator[tuple[torch.Tensor, ...]]:
    """Non-overlapping windows that make every token after the first a target exactly once:
    full (batch_size, T) batches (the last may have fewer rows), then the remaining tail as a
    (1, t) batch with t < T. positions: also each target's index in the split (for evaluation_units)."""
    if context_length < 1 or batch_size < 1:
        raise UserError(
            f"context_length ({context_length}) and batch_size ({batch_size}) must be positive"
        )
    tokens = np.asarray(tokens)
    T = context_length
    full = n_windows(len(tokens), T)
    for first in range(0, full, batch_size):
        rows = np.arange(first, min(first + batch_size, full))[:, None] * T + np.arange(T + 1)
        yield _inputs_targets(tokens[rows]) + ((torch.from_numpy(rows[:, 1:]),) if positions else ())
    start = full * T
    if start < len(tokens) - 1:
        yield _inputs_targets(tokens[None, start:]) + (
            (torch.arange(start + 1, len(tokens))[None, :],) if positions else ())


MIN_DOCUMENTS = 32  # fewer documents than this are too few clusters: fixed blocks instead
MAX_UNITS = 1024  # more documents are grouped, consecutive ones together, into this many units
BLOCKS = 64  # the units of a split with few documents


def evaluation_units(tokens: np.ndarray, eot_id: int) -> tuple[np.ndarray, int, str]:
    """The units the final evaluation keeps its loss per (the test text's sampling units, for the
    report's test-text uncertainty): per token position of the split its unit's index, the number
    of units, and what a unit is. Documents are the segments the corpus and `harness data prepare`
    join with the eot id (an eot belongs to the document it ends): the units where the split has
    at least MIN_DOCUMENTS of them, consecutive ones grouped into MAX_UNITS units where it has
    more. Otherwise (a corpus of a few long documents, such as four plays) BLOCKS blocks of
    consecutive tokens: they sample the text within the documents, not the documents themselves."""
    tokens = np.asarray(tokens)
    n = len(tokens)
    doc = np.zeros(n, dtype=np.int32)
    if n > 1:
        np.cumsum(tokens[:-1] == eot_id, dtype=np.int32, out=doc[1:])
    documents = int(doc[-1]) + 1 if n else 0
    if documents >= MIN_DOCUMENTS:
        if documents <= MAX_UNITS:
            return doc, documents, f"{documents:,} documents"
        return ((doc.astype(np.int64) * MAX_UNITS) // documents).astype(np.int32), MAX_UNITS, \
            f"{MAX_UNITS:,} groups of consecutive documents (of {documents:,})"
    blocks = max(1, min(BLOCKS, n // 2))
    units = ((np.arange(n, dtype=np.int64) * blocks) // max(n, 1)).astype(np.int32)
    return units, blocks, (f"{blocks} blocks of about {n / blocks:,.0f} consecutive tokens (the split holds "
                           f"{documents} document{'s' if documents != 1 else ''}, too few to sample)")


def heldout_rows(tokens: np.ndarray, context_length: int, max_tokens: int = 0) -> np.ndarray:
    """The windows the held-out points along training evaluate when they take a subset: (k, T + 1)
    token rows, k = every window of the split (max_tokens 0) or max_tokens // T of them, spread evenly over the split
    (window i of k is window floor(i x all / k)), so the subset is the same for every arm, seed
    and budget, and covers the whole split (every test play) instead of its beginning."""
    T = context_length
    full = n_windows(len(tokens), T)
    k = full if max_tokens <= 0 else max(1, min(full, max_tokens // T))
    first = (np.arange(k, dtype=np.int64) * full) // max(k, 1)
    return np.asarray(tokens)[first[:, None] * T + np.arange(T + 1)]


def row_batches(rows: np.ndarray, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(x, y) batches of up to batch_size rows of T + 1 tokens."""
    for first in range(0, len(rows), batch_size):
        yield _inputs_targets(rows[first:first + batch_size])


def _inputs_targets(rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """int64 (x, y) tensors from rows of t+1 tokens: y is x shifted left by one."""
    rows = rows.astype(np.int64)
    x, y = np.ascontiguousarray(rows[:, :-1]), np.ascontiguousarray(rows[:, 1:])
    return torch.from_numpy(x), torch.from_numpy(y)
