"""`harness ladder`: one set of arms across a family of model sizes derived from a preset, each
size (a rung) an ordinary sweep with its own Chinchilla budget and the same paired seeds.

The family (scheme() says it in words, with its sources): the preset's head size and its width per
layer are held, so a size is a number of heads h: width = h x head size, depth = width / (the
preset's width per layer), rounded, at least 1. This is how GPT-2's and GPT-3's families grow
(Radford et al. 2019; Brown et al. 2020, Table 2.1: head size fixed, depth and width together),
and Kaplan et al. 2020 (section 3.1) found the loss to depend little on the shape at a fixed
parameter count, so holding it isolates size. Per rung, with N its baseline's parameters and N0
the preset's: the learning rate times (N/N0)^(-1/3) and the global batch times (N/N0)^(2/3),
rounded to whole multiples of 8 sequences (the power laws Porian et al. 2024 fitted, as
OLMo-core's ladder uses them, anchored here at the preset's own values).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from harness.core import config as cfgmod
from harness.core.definitions import Library
from harness.core.errors import UserError, shown
from harness.planning.adaptive import Adaptive
from harness.planning.budget import model_parameter_counts
from harness.planning.plan import Plan, build_plan
from harness.core.definitions import SWEEP_NAME, SWEEP_NAME_RULE
from harness.planning.request import DEFAULT_LARGEST, DEFAULT_RUNGS, DEFAULT_SMALLEST, SweepRequest, check_seed_list

SCHEME = ("head size and width per layer held at the preset's (width = heads x head size, depth = width / "
          "width per layer, rounded): GPT-2/GPT-3's family (Brown et al. 2020, Table 2.1); learning rate x "
          "(N/N0)^(-1/3) and global batch x (N/N0)^(2/3) in multiples of 8 sequences, N0 the preset's parameters "
          "(Porian et al. 2024, as OLMo-core's ladder); each rung {tokens_per_param:g} tokens per parameter "
          "(tokens_per_param), whole global batches")


def scheme(tokens_per_param: float) -> str:
    """The ladder's family in words, with the budget rule its rungs actually use."""
    return SCHEME.format(tokens_per_param=tokens_per_param)
LR_EXPONENT, BATCH_EXPONENT, BATCH_MULTIPLE = -1 / 3, 2 / 3, 8
SIZE_KEYS = ("n_layers", "emb_dim", "n_heads", "global_batch")
MAX_RUNGS = 12
SIZE_TEXT = re.compile(r"\s*(\d{1,4})\s*x\s*(\d{1,6})\s*")


@dataclass(frozen=True, order=True)
class Size:
    """A member of the family: depth x width, with width / head size heads."""

    n_layers: int
    emb_dim: int
    n_heads: int

    @property
    def label(self) -> str:
        return f"{self.n_layers}x{self.emb_dim}"


def head_size(model) -> int:
    return model.emb_dim // model.n_heads


def family_size(model, heads: int) -> Size:
    """The family's size with `heads` heads (model: the preset's ModelConfig)."""
    width = heads * head_size(model)
    per_layer = model.emb_dim / model.n_layers
    return Size(max(1, math.floor(width / per_layer + 0.5)), width, heads)


def parse_sizes(text: str, model) -> list[Size]:
    """--sizes 1x24,2x48,3x72: depth x width, each width a multiple of the preset's head size."""
    sizes = []
    for item in text.split(","):
        m = SIZE_TEXT.fullmatch(item)
        if not m:
            raise UserError(f"--sizes {shown(text, 60)!r}: give comma-separated LAYERSxWIDTH sizes, e.g. 1x24,2x48,3x72")
        layers, width = int(m[1]), int(m[2])
        size = head_size(model)
        if layers < 1 or width < size or width % size:
            raise UserError(f"--sizes {item.strip()!r}: the width must be a positive multiple of the preset's head "
                            f"size {size} (e.g. {', '.join(str(size * k) for k in (1, 2, 3, 4))}), with at least 1 layer")
        sizes.append(Size(layers, width, width // size))
    if len(set(sizes)) != len(sizes):
        raise UserError(f"--sizes {shown(text, 60)!r} names a size twice")
    return sorted(sizes, key=lambda s: (s.n_layers * s.emb_dim ** 2, s))


@dataclass(frozen=True)
class LadderRequest:
    """A ladder as asked: its arms (the baseline is added), seeds or adaptive settings, preset and
    overrides, the sizes (explicit, or `rungs` spaced evenly in log parameters from `smallest` to
    `largest` times the preset's), the size to predict the effect at, and its name."""

    arms: tuple[str, ...]
    seeds: tuple[int, ...] = tuple(range(5))
    preset: str = "tiny"
    sets: Mapping[str, Any] = field(default_factory=dict)
    sizes: str | None = None
    rungs: int = DEFAULT_RUNGS
    smallest: float = DEFAULT_SMALLEST
    largest: float = DEFAULT_LARGEST
    target: str | None = None  # a preset's name or a parameter count; None: the preset
    name: str | None = None
    adaptive: Adaptive | None = None

    def check(self) -> "LadderRequest":
        if not self.arms or all(cfgmod.canonical_arm(a) == cfgmod.BASELINE for a in self.arms):
            raise UserError("a ladder compares interventions with the baseline at every size: name at least one "
                            "intervention (see `harness list`)")
        check_seed_list(list(self.seeds), "seeds")
        if self.adaptive is not None:
            self.adaptive.check()
        if not 2 <= self.rungs <= MAX_RUNGS:
            raise UserError(f"--rungs {self.rungs}: give 2 to {MAX_RUNGS} sizes (a trend needs two)")
        for flag, value in (("--smallest", self.smallest), ("--largest", self.largest)):
            if not (math.isfinite(value) and 1 / 4096 <= value <= 64):
                raise UserError(f"{flag} {value!r}: give a factor of the preset's parameters from 1/4096 to 64, "
                                "e.g. 0.125")
        if self.smallest >= self.largest:
            raise UserError(f"--smallest {self.smallest:g} must be below --largest {self.largest:g}")
        if self.name is not None and not SWEEP_NAME.fullmatch(self.name):
            raise UserError(f"ladder name {shown(self.name)!r}: use {SWEEP_NAME_RULE}")
        return self


@dataclass
class Rung:
    size: Size
    params: int  # the baseline's, at this size
    lr: float  # the baseline's
    global_batch: int
    plan: Plan

    @property
    def sweep(self) -> str:
        return self.plan.sweep


@dataclass
class Ladder:
    name: str
    preset: str
    arms: list[str]
    preset_params: int
    target: str
    target_params: int
    rungs: list[Rung]
    notes: list[str] = field(default_factory=list)
    scheme: str = ""  # scheme(): how its sizes, learning rates, batches and budgets were chosen


def model_keys(sizes: Size) -> tuple[tuple[str, Any], ...]:
    return (("n_layers", sizes.n_layers), ("emb_dim", sizes.emb_dim), ("n_heads", sizes.n_heads))


def baseline_params(preset: str, sets: Mapping[str, Any], library: Library, size: Size | None = None) -> int:
    scale = None if size is None else cfgmod.Scale(model_keys(size))
    cfg = cfgmod.resolve(preset, cfgmod.BASELINE, dict(sets), library, scale)
    return model_parameter_counts(cfg.model)["total"]


def rung_scale(size: Size, params: int, preset_params: int, preset_batch: int) -> cfgmod.Scale:
    """The rung's sizes and its learning-rate factor (scheme())."""
    ratio = params / preset_params
    quantum = min(BATCH_MULTIPLE, preset_batch)
    batch = max(quantum, quantum * math.floor(preset_batch * ratio ** BATCH_EXPONENT / quantum + 0.5))
    return cfgmod.Scale(model_keys(size) + (("global_batch", batch),), ratio ** LR_EXPONENT)


def sizes_by_count(request: LadderRequest, model, library: Library, preset_params: int) -> tuple[list[Size], list[str]]:
    """`rungs` family sizes nearest to targets spaced evenly in log parameters (each found by
    bisection over the number of heads: parameters grow with it)."""
    def params(heads: int) -> int:
        return baseline_params(request.preset, request.sets, library, family_size(model, heads))

    chosen, notes = [], []
    for k in range(request.rungs):
        goal = preset_params * request.smallest * (request.largest / request.smallest) ** (k / (request.rungs - 1))
        low, high = 1, 1
        while params(high) < goal:
            low, high = high, high * 2
            if high > 4096:
                raise UserError(f"no size of preset {request.preset!r}'s family reaches {goal:,.0f} parameters")
        while high - low > 1:  # params(low) < goal <= params(high), or low == high == 1
            mid = (low + high) // 2
            low, high = (mid, high) if params(mid) < goal else (low, mid)
        best = min({low, high}, key=lambda h: abs(math.log(params(h) / goal)))
        chosen.append(family_size(model, best))
    smallest = baseline_params(request.preset, request.sets, library, chosen[0])
    asked = preset_params * request.smallest
    if smallest > 1.5 * asked:
        notes.append(f"the smallest size the family can build has {smallest:,} parameters, {smallest / asked:,.0f}x "
                     f"the --smallest {request.smallest:g} asked for ({asked:,.0f}): the ladder starts there")
    distinct = sorted(set(chosen), key=chosen.index)
    if len(distinct) < len(chosen):
        notes.append(f"the family has only {len(distinct)} distinct sizes for {request.rungs} rungs from "
                     f"{request.smallest:g}x to {request.largest:g}x the preset's parameters")
    if len(distinct) < 2:
        raise UserError(f"the family of preset {request.preset!r} has one size from {request.smallest:g}x to "
                        f"{request.largest:g}x its parameters; widen --smallest/--largest or give --sizes")
    return distinct, notes


def target_size(target: str | None, request: LadderRequest, library: Library, preset_params: int) -> tuple[str, int]:
    """The size the report predicts the effect at: a preset's baseline (default: the ladder's) or a count."""
    if target is None:
        return request.preset, preset_params
    text = target.strip().replace("_", "").replace(",", "")
    if text.isdigit():
        if int(text) < 1:
            raise UserError(f"--target {target!r}: give a preset's name or a positive number of parameters")
        return f"{int(text):,} parameters", int(text)
    try:
        return target, baseline_params(target, {}, library)
    except UserError:
        raise UserError(f"--target {shown(target)!r}: give a preset's name (see `harness list`) or a number of "
                        "parameters, e.g. 163009536") from None


def build_ladder(request: LadderRequest, world_size: int, on_gpu: bool, results: Path,
                 library: Library | None = None) -> Ladder:
    """Every rung's plan (harness.planning.plan.build_plan with the rung's Scale), smallest first."""
    library = library or Library.from_environment()
    request.check()
    base = cfgmod.resolve(request.preset, cfgmod.BASELINE, dict(request.sets), library)
    clash = sorted(set(SIZE_KEYS) & set(request.sets))
    if clash:
        raise UserError(f"--set {clash[0]}: a ladder sets {', '.join(SIZE_KEYS)} per rung; leave them to it")
    preset_params = model_parameter_counts(base.model)["total"]
    if request.sizes is not None:
        sizes, notes = parse_sizes(request.sizes, base.model), []
    else:
        sizes, notes = sizes_by_count(request, base.model, library, preset_params)
    target, target_params = target_size(request.target, request, library, preset_params)
    name = request.name or f"ladder-{request.preset}-{','.join(cfgmod.canonical_arm(a) for a in request.arms)}"
    if not SWEEP_NAME.fullmatch(name) or len(name) > 180:
        raise UserError(f"ladder name {name!r}: use {SWEEP_NAME_RULE}, at most 180 characters (give --name)")
    rungs = []
    for size in sizes:
        params = baseline_params(request.preset, request.sets, library, size)
        scale = rung_scale(size, params, preset_params, base.train.global_batch)
        sweep = SweepRequest(arms=request.arms, seeds=request.seeds, preset=request.preset, sets=request.sets,
                             name=f"{name}-{size.label}", adaptive=request.adaptive, scale=scale).check()
        plan = build_plan(sweep, world_size, on_gpu, results, library)
        rung_base = plan.configs[cfgmod.BASELINE]
        rungs.append(Rung(size, params, rung_base.train.lr, rung_base.train.global_batch, plan))
    rungs.sort(key=lambda r: r.params)
    lo, hi = rungs[0].params, rungs[-1].params
    where = "inside" if lo <= target_params <= hi else "beyond"
    notes.append(f"sizes: {scheme(base.train.tokens_per_param)}")
    notes.append(f"the report predicts each arm's effect at {target} ({target_params:,} parameters), {where} the "
                 f"measured range {lo:,} to {hi:,}" + (" (an extrapolation)" if where == "beyond" else ""))
    arms = list(dict.fromkeys(a for r in rungs for a in r.plan.arms))
    return Ladder(name, request.preset, arms, preset_params, target, target_params, rungs, notes,
                  scheme(base.train.tokens_per_param))

