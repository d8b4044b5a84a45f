"""What a user asks for, as values checked once: a sweep (or one run), a noise study, and the
sweep file format.

The CLI builds a SweepRequest from its options and an optional sweep file (an option given wins
over the file) and hands it whole to harness.planning.plan; nothing downstream re-reads options.
Contradictions are refused here with one line: both seeds and seed_list, --budget own with
--tokens, duplicate or empty seeds, an empty sweep name, a stream both varied and fixed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from harness.core import config as cfgmod
from harness.core.bounds import MAX_SEED, MAX_SEEDS, check_int, check_seeds
from harness.core.definitions import SWEEP_NAME, SWEEP_NAME_RULE, Library
from harness.core.errors import UserError, shown
from harness.core.seeds import STREAMS
from harness.planning.adaptive import Adaptive
from harness.planning.trainer import Trainer

SWEEP_FILE_KEYS = {"name": str, "description": str, "preset": str, "arms": list, "seeds": int, "seed_list": list,
                   "budget": str, "tokens": int, "set": dict, "trainer": dict}
BUDGETS = ("baseline", "own")  # the first is the default: every arm at the baseline's budget
MIN_EXTEND, MAX_EXTEND = 1.1, 16.0
DEFAULT_SEEDS = 5
# a ladder's sizes (harness.planning.ladder): rungs, spaced evenly in log parameters from the smallest
# to the largest factor of the preset's parameters
DEFAULT_RUNGS, DEFAULT_SMALLEST, DEFAULT_LARGEST = 3, 0.125, 1.0
DEFAULT_PRESET = "tiny"


@dataclass(frozen=True)
class Streams:
    """Which random streams the seed drives: vary one alone ("" all three), and streams fixed by hand."""

    vary: str = ""
    fixed: Mapping[str, int] = field(default_factory=dict)

    def check(self, seeds: int) -> None:
        if self.vary and self.vary not in STREAMS:
            raise UserError(f"--vary {self.vary!r}: allowed: {', '.join(STREAMS)}")
        for name, value in self.fixed.items():
            if name not in STREAMS:
                raise UserError(f"unknown random stream {name!r}: allowed: {', '.join(STREAMS)}")
            if not 0 <= value <= MAX_SEED:
                raise UserError(f"--{name}-seed {value}: give a seed from 0 to {MAX_SEED}")
        if self.vary and self.vary in self.fixed:
            raise UserError(f"--vary {self.vary} and --{self.vary}-seed contradict each other; give one")
        held = set(self.fixed) | ({s for s in STREAMS if s != self.vary} if self.vary else set())
        if held >= set(STREAMS) and seeds > 1:
            raise UserError(f"every random stream is fixed ({', '.join(f'--{s}-seed' for s in STREAMS if s in self.fixed)}"
                            f"{' and --vary' if self.vary else ''}), so {seeds} seeds would all train one identical run; "
                            "give one seed, or measure the nondeterminism floor with `harness noise --replicates N`")


@dataclass(frozen=True)
class SweepRequest:
    """A sweep as asked: its arms (the baseline is added unless include_baseline is False), seeds,
    preset, overrides, budget and name; an adaptive sweep's settings; streams varied or fixed."""

    arms: tuple[str, ...]
    seeds: tuple[int, ...] = tuple(range(DEFAULT_SEEDS))
    preset: str = DEFAULT_PRESET
    sets: Mapping[str, Any] = field(default_factory=dict)
    tokens: int | None = None
    budget: str = BUDGETS[0]
    name: str | None = None
    include_baseline: bool = True
    streams: Streams = Streams()
    adaptive: Adaptive | None = None
    extend: float | None = None  # baseline runs up to this factor of the budget, for the compute multiplier
    scale: cfgmod.Scale | None = None  # another size of the preset: a rung of a ladder (harness.planning.ladder)
    trainer: Trainer | None = None  # the arms run a researcher's own script (harness.planning.trainer)

    def check(self) -> "SweepRequest":
        if not self.arms:
            raise UserError("no arms: name at least one intervention (see `harness list`)")
        check_seed_list(list(self.seeds), "seeds")
        if self.tokens is not None:
            check_int("tokens", self.tokens)
            if self.tokens < 1:
                raise UserError(f"--tokens must be >= 1, got {self.tokens}")
        if self.budget not in BUDGETS:
            raise UserError(f"--budget {self.budget!r}: use 'baseline' or 'own'")
        if self.budget == "own" and self.tokens is not None:
            raise UserError("--budget own gives each arm its own Chinchilla count, --tokens one fixed count for all; "
                            "give one of them")
        if self.name is not None and not SWEEP_NAME.fullmatch(self.name):
            raise UserError(f"sweep name {shown(self.name)!r}: use {SWEEP_NAME_RULE}")
        self.streams.check(len(self.seeds))
        if self.extend is not None and not (math.isfinite(self.extend) and MIN_EXTEND <= self.extend <= MAX_EXTEND):
            raise UserError(f"--extend-baseline {self.extend!r}: give a factor of the budget from {MIN_EXTEND:g} to "
                            f"{MAX_EXTEND:g}, e.g. 2 (the baseline's held-out curve then reaches twice the budget)")
        if self.adaptive is not None:
            self.adaptive.check()
            if all(cfgmod.canonical_arm(a) == cfgmod.BASELINE for a in self.arms):
                raise UserError("--until-decided decides arms against the baseline, and this sweep has no other arm; "
                                "name an intervention (or run the baseline alone with --seeds N)")
        return self


def check_seed_list(seeds: list[int], where: str) -> None:
    """A sweep's seeds: at least one, each >= 0 and 31-bit, none twice, at most MAX_SEEDS."""
    if not seeds:
        raise UserError("no seeds: give --seeds N (N >= 1) or --seed-list 0,1,2")
    negative = sorted(s for s in seeds if s < 0)
    if negative:
        raise UserError(f"seeds must be >= 0, got {format_seeds(negative)}")
    check_seeds(seeds, 1)
    seen: set[int] = set()
    twice = sorted({s for s in seeds if s in seen or seen.add(s)})
    if twice:
        raise UserError(f"{where}: seed{'s' if len(twice) > 1 else ''} {format_seeds(twice)} "
                        f"listed twice; a seed is one run per arm")


def sweep_request(arms: list[str], *, seeds: int | None, seed_list: str | None, preset: str | None,
                  sets: Mapping[str, Any], tokens: int | None, budget: str | None, name: str | None,
                  data: str | None, adaptive: Adaptive | None, streams: Streams, library: Library,
                  extend: float | None = None) -> SweepRequest:
    """`harness sweep`'s request. One keyword per sweep option, because this is the one place where
    a sweep file's values (when `arms` is one sweep file) and the options given meet; an option
    given wins over the file. An adaptive sweep plans seeds 0 .. max_seeds-1 (run in rounds)."""
    file: dict[str, Any] = {}
    trainer = None
    if len(arms) == 1 and (arms[0].endswith(".toml") or os.path.isfile(arms[0])):
        path = sweep_file_path(arms[0], library)
        file = load_sweep_file(path)
        arms = file["arms"]
        if "trainer" in file:
            trainer = Trainer.read(file["trainer"], path)
            given = [flag for flag, value in (("--preset", preset), ("--set", sets), ("--data", data),
                                              ("--extend-baseline", extend)) if value]
            if given:
                raise UserError(f"{given[0]} is for harness's own model; {path} runs its own trainer, whose settings "
                                "are its [trainer.settings] and its arms' [set] tables")
    chosen = seed_values(seeds, seed_list, file, adaptive)
    if adaptive is not None:
        adaptive.check()
    return SweepRequest(
        arms=tuple(arms), seeds=tuple(chosen), preset=preset or file.get("preset", DEFAULT_PRESET),
        sets=with_data(dict(file.get("set", {})) | dict(sets), data),
        tokens=tokens if tokens is not None else file.get("tokens"),
        budget=budget or file.get("budget", BUDGETS[0]), name=name if name is not None else file.get("name"),
        streams=streams, adaptive=adaptive, extend=extend, trainer=trainer).check()


@dataclass(frozen=True)
class NoiseRequest:
    """`harness noise`: per arm (the baseline and `arm`), `seeds` runs varying each random stream
    alone and all three, plus `replicates` runs with identical seeds."""

    preset: str = DEFAULT_PRESET
    arm: str | None = None
    seeds: int = 8
    replicates: int = 2
    sets: Mapping[str, Any] = field(default_factory=dict)
    tokens: int | None = None
    name: str | None = None

    def check(self) -> "NoiseRequest":
        if self.seeds < 2:
            raise UserError(f"--seeds must be >= 2 (a spread needs two runs per source), got {self.seeds}")
        check_int("seeds", self.seeds)
        if not 1 <= self.replicates <= 1000:
            raise UserError(f"--replicates must be from 1 to 1000, got {self.replicates}")
        if self.arm is not None and cfgmod.canonical_arm(self.arm) == cfgmod.BASELINE:
            raise UserError("--arm baseline: the baseline is always in the study; name an intervention")
        if self.name is not None and not SWEEP_NAME.fullmatch(self.name):
            raise UserError(f"study name {shown(self.name)!r}: use {SWEEP_NAME_RULE}")
        return self


def with_data(sets: dict[str, Any], data: str | None) -> dict[str, Any]:
    """--set overrides plus --data PATH (its shorthand)."""
    if data is None:
        return sets
    if "data" in sets:
        raise UserError("give --data PATH or --set data=PATH, not both")
    if not data.strip():
        raise UserError("--data needs a value: 'shakespeare', a text file or folder, or a shard folder")
    return sets | {"data": data}


def seed_values(seeds: int | None, seed_list: str | None, file: dict[str, Any] | None = None,
                adaptive: Adaptive | None = None) -> list[int]:
    """--seeds N (0..N-1) or --seed-list 7,11,13, else the sweep file's seeds or seed_list, else 0..4;
    under --until-decided, seeds 0 .. max_seeds-1 (run in rounds), and neither option."""
    if adaptive is not None:
        if seeds is not None or seed_list is not None:
            raise UserError("--until-decided runs seeds 0, 1, ... until each arm is decided, at most --max-seeds; "
                            "drop --seeds / --seed-list")
        adaptive.check()  # before its max_seeds is used
        return list(range(adaptive.max_seeds))
    file = file or {}
    if seeds is not None and seed_list is not None:
        raise UserError("give --seeds or --seed-list, not both")
    if seed_list is not None:
        if seed_list.count(",") >= MAX_SEEDS:
            raise UserError(f"--seed-list: at most {MAX_SEEDS:,} seeds per sweep")
        items = [s.strip() for s in seed_list.split(",")]
        if any(not s for s in items):
            raise UserError(f"--seed-list {shown(seed_list, 60)!r} has an empty item; give comma-separated "
                            "integers, e.g. 7,11,13")
        try:
            return [int(s) for s in items]
        except ValueError:
            raise UserError(f"--seed-list {shown(seed_list, 60)!r}: expected comma-separated integers, e.g. 7,11,13") from None
    if seeds is None and "seed_list" in file:
        return list(file["seed_list"])
    count = seeds if seeds is not None else file.get("seeds", DEFAULT_SEEDS)
    if count < 1:
        raise UserError(f"--seeds must be >= 1, got {count}")
    check_int("seeds", count)
    return list(range(count))


def sweep_file_path(text: str, library: Library) -> Path:
    """A sweep file: a path, or the name of one in the definitions folders (e.g. interventions_32.toml)."""
    path = Path(text).expanduser()
    if path.is_file() or os.sep in text or "/" in text:
        return path
    stem = text[:-5] if text.endswith(".toml") else text
    try:
        return library.find("sweep file", stem).path
    except UserError:
        raise UserError(f"sweep file {shown(text)!r}: no such file, and no sweep file of that name in the definitions "
                        "folders (see `harness list`)") from None


def load_sweep_file(path: Path) -> dict[str, Any]:
    """A sweep file: name, preset, arms, seeds or seed_list, budget, tokens, [set]."""
    data = cfgmod.read_toml(path)
    cfgmod.check_keys(path, data, SWEEP_FILE_KEYS)
    arms = data.get("arms")
    if not isinstance(arms, list) or not arms or not all(isinstance(a, str) for a in arms):
        raise UserError(f"{path}: 'arms' must be a non-empty list of arm names")
    if "seeds" in data and "seed_list" in data:
        raise UserError(f"{path}: give 'seeds' (0..N-1) or 'seed_list', not both")
    seed_list = data.get("seed_list", [])
    if not all(isinstance(s, int) and not isinstance(s, bool) for s in seed_list):
        raise UserError(f"{path}: 'seed_list' must be a list of integers, got {seed_list!r}")
    if "seed_list" in data:
        check_seed_list(list(seed_list), f"{path}: seed_list")
    if "name" in data and not SWEEP_NAME.fullmatch(data["name"]):
        raise UserError(f"{path}: name {shown(data['name'])!r}: use {SWEEP_NAME_RULE}")
    if "trainer" in data and ("preset" in data or "set" in data):
        raise UserError(f"{path}: a sweep file with a [trainer] runs its own script: its settings are "
                        "[trainer.settings], not {}".format("preset" if "preset" in data else "[set]"))
    sets = {k: cfgmod.coerce(k, v, f"{path} [set]") for k, v in data.get("set", {}).items()}
    return data | {"name": data.get("name", path.stem), "set": sets}


def format_seeds(seeds: list[int]) -> str:
    if len(seeds) > 1 and seeds == list(range(len(seeds))):
        return f"0..{len(seeds) - 1}"
    return ",".join(map(str, seeds))
