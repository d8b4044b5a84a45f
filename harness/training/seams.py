"""The seams of code interventions (harness.core.code), as the trainer and the budget call them.

Seams.load turns a run's recorded code entries into the functions of their files (imported by path
from the results folder's copies) and calls each at its one place, with one clear line for
anything wrong in them (SeamError: the file, the line, the seam): an exception, a wrong return
type, or a draw from torch's global random state (which would silently break the pairing:
harness hands each seam a generator keyed by the run's seed and a name instead).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from harness.core.code import import_file, stored_path, where_in
from harness.core.config import TrainConfig
from harness.core.errors import UserError
from harness.core.files import environment_failure
from harness.model.config import ModelConfig


class SeamError(UserError):
    """A code intervention's seam failed: the run cannot run as planned (recorded, not retried)."""


@dataclass
class Context:
    """What a seam is given besides its own arguments."""

    settings: dict[str, Any]  # the intervention's settings (SETTINGS, with its [set] values)
    model_config: ModelConfig
    train_config: TrainConfig
    steps: int  # optimiser steps in the run
    seed: int  # the run's init seed: what generator() keys its streams by

    def generator(self, name: str) -> torch.Generator:
        """A CPU generator of its own for `name`, the same in every process and placement of this
        run (and, for a name the baseline also draws, the same stream as the baseline's)."""
        digest = hashlib.sha256(f"{self.seed}/code/{name}".encode()).digest()
        return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))


@dataclass
class Seam:
    intervention: str
    path: Path
    name: str
    function: Callable
    ctx: Context

    def __call__(self, *args, check_random: bool = True):
        """Call the seam; any failure in it is a SeamError naming the file, line and seam."""
        before = torch.random.get_rng_state() if check_random else None
        try:
            value = self.function(*args, self.ctx)
        except SeamError:
            raise
        except Exception as err:  # noqa: BLE001 - the user's code: any error is one line naming where
            if isinstance(err, (torch.OutOfMemoryError, MemoryError)) or environment_failure(err):
                raise  # the machine's failure, not the code's: retried, or resumed, as any run's
            raise self.error(f"raised {type(err).__name__}: {err}", where_in(self.path, err)) from None
        if before is not None and not torch.equal(before, torch.random.get_rng_state()):
            raise self.error("drew from torch's global random state, which would break the pairing with the "
                             "baseline; draw from ctx.generator(name) (or the generator an init seam is given)")
        return value

    def error(self, what: str, where: str | None = None) -> SeamError:
        return SeamError(f"{where or self.path}: {self.name} seam of code intervention {self.intervention!r} {what}")


@dataclass
class Seams:
    """A run's code interventions: each seam's functions (convert: all, in the arm's order; the
    others: the one intervention that defines it)."""

    by_seam: dict[str, list[Seam]] = field(default_factory=dict)

    @classmethod
    def load(cls, entries: Sequence[dict[str, Any]], root: Path | None, mcfg: ModelConfig, tcfg: TrainConfig,
             steps: int, seed: int, files: Sequence[Path] = ()) -> "Seams":
        """The seams of a run's code entries (its config's "code"): imported from the copies under
        `root` (the results folder), or from `files` where the parent plans (before any copy)."""
        seams = cls()
        for i, entry in enumerate(entries):
            path = Path(files[i]) if files else stored_path(root, entry)
            if not path.is_file():  # not the code's fault, and not final: the sweep command stores it again
                raise FileNotFoundError(f"code intervention {entry['intervention']!r}: its file {path} is missing "
                                        "(the results folder's copy of the code this run was planned with; run the "
                                        "sweep command again to store it)")
            module = import_file(path, entry["sha256"], tuple(entry.get("modules", ())))
            ctx = Context(dict(entry.get("settings", {})), mcfg, tcfg, steps, seed)
            for name in entry.get("seams", []):
                function = getattr(module, name, None)
                if callable(function):
                    seams.by_seam.setdefault(name, []).append(Seam(entry["intervention"], path, name, function, ctx))
        return seams

    def has(self, name: str) -> bool:
        return bool(self.by_seam.get(name))

    def _one(self, name: str) -> Seam | None:
        found = self.by_seam.get(name) or []
        return found[0] if found else None

    def convert(self, model: nn.Module) -> nn.Module:
        """Apply every convert seam in order. Modules they build draw their (discarded) default
        initialisation from a stream of their own, so torch's global state is untouched; every
        parameter is then initialised by name (init_weights)."""
        for seam in self.by_seam.get("convert", []):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int.from_bytes(hashlib.sha256(f"{seam.ctx.seed}/convert/{seam.intervention}"
                                                                .encode()).digest()[:8], "little") >> 1)
                returned = seam(model, check_random=False)
            if returned is not None and returned is not model:
                raise seam.error(f"returned {type(returned).__name__}: it changes the model it is given in place "
                                 "and returns it or None")
        return model

    def initial_value(self) -> Callable | None:
        """init_weights' override for parameter values, or None without an init seam."""
        seam = self._one("init")
        if seam is None:
            return None

        def value(name: str, param: torch.Tensor, generator: torch.Generator) -> torch.Tensor | None:
            got = seam(name, param, generator)
            if got is not None and (not isinstance(got, torch.Tensor) or got.shape != param.shape):
                shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                raise seam.error(f"returned {shape} for {name!r}, which needs a tensor of shape {tuple(param.shape)} "
                                 "(or None for harness's rule)")
            return got

        return value

    def optimizers(self, model: nn.Module) -> list[torch.optim.Optimizer] | None:
        seam = self._one("optimizer")
        if seam is None:
            return None
        got = seam(model)
        found = list(got) if isinstance(got, (list, tuple)) else [got]
        if not found or not all(isinstance(o, torch.optim.Optimizer) for o in found):
            raise seam.error(f"returned {type(got).__name__}: it returns a torch.optim.Optimizer or a list of them")
        params = [p for o in found for g in o.param_groups for p in g["params"]]
        missing = [n for n, p in model.named_parameters() if p.requires_grad and all(p is not q for q in params)]
        if missing:
            raise seam.error(f"left {len(missing)} parameter(s) out of every optimiser (e.g. {missing[0]!r})")
        return found

    def schedule(self, step: int, check_random: bool) -> dict[str, float] | None:
        seam = self._one("schedule")
        if seam is None:
            return None
        got = seam(step, check_random=check_random)
        if not isinstance(got, dict) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                                and not isinstance(v, bool) for k, v in got.items()):
            raise seam.error(f"returned {got!r} at step {step}: it returns a dict of hyperparameter -> number")
        return got

    def check_schedule_keys(self, scheduled: dict[str, float], groups: list[dict]) -> None:
        """Refuse a hyperparameter that no parameter group has (a typo would change nothing)."""
        known = {"lr"} | {k for g in groups for k in g if k != "params"}
        unknown = sorted(set(scheduled) - known)
        if unknown:
            raise self._one("schedule").error(f"returned {unknown[0]!r}, which no parameter group has (they have "
                                              f"{', '.join(sorted(known))})")

    def loss(self, logits: torch.Tensor, targets: torch.Tensor, check_random: bool) -> torch.Tensor:
        seam = self._one("loss")
        got = seam(logits, targets, check_random=check_random)
        if not isinstance(got, torch.Tensor) or got.dim() != 0:
            shape = f"a tensor of shape {tuple(got.shape)}" if isinstance(got, torch.Tensor) else type(got).__name__
            raise seam.error(f"returned {shape}: it returns the loss as a scalar tensor")
        if check_random and not torch.isfinite(got.detach()).item():  # the first step only: one host sync
            raise seam.error(f"returned {got.item()} at the first step: a loss that is not finite from the start")
        return got


class Optimizers:
    """Several optimisers (a code intervention's optimizer seam: Muon and AdamW) stepped as one."""

    def __init__(self, optimizers: list[torch.optim.Optimizer]):
        self.optimizers = optimizers

    @property
    def param_groups(self) -> list[dict]:
        return [g for o in self.optimizers for g in o.param_groups]

    def step(self) -> None:
        for o in self.optimizers:
            o.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [o.state_dict() for o in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        for o, s in zip(self.optimizers, state["optimizers"], strict=True):
            o.load_state_dict(s)
