"""Chinchilla token budgets: tokens_per_param x parameters, rounded UP to whole global batches."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

from harness.data.batches import BatchShape
from harness.core.files import default_cache_dir
from harness.core.config import ArmConfig
from harness.core.errors import UserError
from harness.core.files import atomic_write_json
from harness.model import ModelConfig, gpt
from harness.model.gpt import parameter_counts

COUNT_KEYS = ("total", "non_embedding", "embedding")


@cache
def _model_source() -> str:
    return hashlib.sha256(Path(gpt.__file__).read_bytes()).hexdigest()


def arm_parameter_counts(cfg: ArmConfig) -> dict[str, int]:
    """The arm's parameter counts: its network as its code interventions change it (their convert
    seams run on the meta device, which also proves here, before anything trains, that they load)."""
    if not cfg.code:
        return model_parameter_counts(cfg.model)
    from harness.training.seams import Seams

    seams = Seams.load(cfg.code, None, cfg.model, cfg.train, 0, 0, files=cfg.code_files)
    return model_parameter_counts(cfg.model, seams.convert if seams.has("convert") else None,
                                  [[e["sha256"], e["settings"]] for e in cfg.code])


def model_parameter_counts(mcfg: ModelConfig, convert=None, code: list | None = None) -> dict[str, int]:
    """harness.model.gpt.parameter_counts, remembered in the cache folder under the config, the
    model's source and `code` (what identifies `convert`): the count builds the model on the meta
    device, whose first use loads torch's meta kernels (about 1.6 s on a CPU), so every command that
    plans paid it. The cache is only a memo: anything unreadable in it is counted again."""
    key = hashlib.sha256(json.dumps([asdict(mcfg), _model_source()] + ([code] if code else []), sort_keys=True,
                                    default=str).encode())
    path = default_cache_dir() / "parameter-counts" / f"{key.hexdigest()[:24]}.json"
    try:
        known = json.loads(path.read_text())
        if isinstance(known, dict) and all(isinstance(known.get(k), int) for k in COUNT_KEYS):
            return {k: known[k] for k in COUNT_KEYS}
    except (OSError, ValueError):
        pass
    counts = parameter_counts(mcfg, convert)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, counts)
    except OSError:  # a read-only cache only costs the time
        pass
    return counts


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
    counts = arm_parameter_counts(cfg)
    raw = math.ceil(cfg.train.tokens_per_param * counts["total"])
    return fixed_budget(cfg, nproc, raw)


def fixed_budget(cfg: ArmConfig, nproc: int, tokens: int) -> Budget:
    """A given token count for this arm, rounded up to whole global batches."""
    counts = arm_parameter_counts(cfg)
    return whole_steps(cfg.arm, counts["total"], counts["non_embedding"], tokens, tokens_per_step(cfg, nproc))


def whole_steps(arm: str, params: int, non_embedding: int, tokens: int, per_step: int) -> Budget:
    """`tokens` rounded up to whole global batches of `per_step` tokens (harness's arms and an
    external trainer's alike)."""
    if tokens < per_step:
        raise UserError(f"a budget of {tokens:,} tokens is below one step of {per_step:,} tokens "
                        "(global_batch x context_length); raise --tokens")
    steps = math.ceil(tokens / per_step)
    return Budget(arm, params, non_embedding, tokens, steps * per_step, steps, per_step)
