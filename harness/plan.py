"""RunSpec: everything one run needs, fixed before launch and shared by the CLI and the worker."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.budget import Budget
from harness.config import ArmConfig, config_hash, derive_seed


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    sweep: str
    arm: str
    seed: int
    init_seed: int
    data_seed: int
    dropout_seed: int
    preset: str
    config: dict[str, Any]  # ArmConfig.as_dict()
    overrides: dict[str, Any]
    config_hash: str  # identifies the arm's config and budget; (config_hash, seed) identifies a run
    params: int
    tokens: int
    steps: int
    tokens_per_step: int
    world_size: int

    @property
    def interventions(self) -> str:
        return "+".join(p for p in self.arm.split("+") if p != "baseline")

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True)

    @classmethod
    def load(cls, path: Path) -> "RunSpec":
        return cls(**json.loads(Path(path).read_text()))


def run_spec(cfg: ArmConfig, seed: int, budget: Budget, sweep: str, world_size: int) -> RunSpec:
    """The run's identity hashes what changes the outcome (config, budget, batch), not the arm's name."""
    identity = cfg.as_dict() | {"tokens": budget.tokens, "tokens_per_step": budget.tokens_per_step}
    identity.pop("arm")
    digest = config_hash(identity)
    safe_arm = cfg.arm.replace("/", "_")
    return RunSpec(
        run_id=f"{safe_arm}-s{seed}-{digest[:10]}", sweep=sweep, arm=cfg.arm, seed=seed,
        init_seed=derive_seed(seed, "init"), data_seed=derive_seed(seed, "data"),
        dropout_seed=derive_seed(seed, "dropout"), preset=cfg.preset, config=cfg.as_dict(),
        overrides=cfg.overrides, config_hash=digest, params=budget.params, tokens=budget.tokens,
        steps=budget.steps, tokens_per_step=budget.tokens_per_step, world_size=world_size,
    )
