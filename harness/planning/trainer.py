"""A researcher's own training script as the runner of a sweep's arms: a sweep file's [trainer] table.

    [trainer]
    command = "{python} train.py"      # run in the sweep file's folder; {placeholders}: harness.store.contract
    files = ["data.txt"]               # more files whose content is part of each run's identity
    global_batch = 8                   # sequences per optimiser step
    context_length = 64                # tokens per sequence
    tokens_per_param = 20              # the Chinchilla rule (without `tokens`)
    [trainer.settings]                 # the script's settings and the baseline's values
    qkv_bias = false
    drop_rate = 0.1

Arms are interventions as for harness's own model, whose [set] tables set the script's settings (a
built-in intervention such as qkv_bias works where the script names its setting alike); a key the
script does not declare is refused, so no arm silently trains the baseline. The identity of a run
is the command, the content of the files it names and `files` (a Python file with the modules of
its own that it imports: harness.core.code), the arm's settings, the budget and the sub-seeds; not
the folder, which may move. The files are stored under RESULTS/code/<sha256>/ with the runs, and a
file changed under a started sweep is refused (planfile.conflicts; and before each run: verify).
Without `tokens`, a probe (the command with HARNESS_PROBE=1) reports each arm's parameter count.
"""

from __future__ import annotations

import ast
import difflib
import math
import os
import shlex
import shutil
import string
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.bounds import check_int
from harness.core.code import SETTING_TYPES, content_hash, own_modules, typed_setting
from harness.core.config import INTERVENTION_KEYS, Intervention, check_keys, merged_overrides, read_toml, split_arm
from harness.core.definitions import Library, builtin_folder
from harness.core.errors import UserError
from harness.core.scheme import EXPERIMENT_FACTS, TRAINED_BY
from harness.store import contract

PRESET = "trainer"  # the preset label of an external trainer's runs
TRAINER_KEYS = {"command": str, "files": list, "global_batch": int, "context_length": int,
                "tokens_per_param": float, "settings": dict}
PROBE_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class TrainerArm:
    """One arm under an external trainer, as a plan holds an arm's config (ArmConfig's shape)."""

    arm: str
    config: dict[str, Any]  # {"trainer": {command, files, settings, global_batch, context_length}}
    overrides: dict[str, Any]  # settings away from the trainer's defaults
    intervention_sets: dict[str, Any]  # what the arm's interventions set
    code: tuple[dict[str, Any], ...] = ()  # its files as stored with the runs (harness.core.code.store_copy)
    code_files: tuple[Path, ...] = ()
    preset: str = PRESET

    def as_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "arm": self.arm} | self.config


@dataclass(frozen=True)
class Trainer:
    """A checked [trainer] table."""

    command: str
    folder: Path  # where it runs: the sweep file's folder
    files: dict[str, str]  # file (relative to folder) -> sha256 of it and its own modules
    modules: dict[str, tuple[str, ...]]  # file -> its own modules
    settings: dict[str, Any]  # name -> the baseline's value
    global_batch: int
    context_length: int
    tokens_per_param: float = 20.0
    source: Path = field(default=Path("."), compare=False)

    @property
    def argv(self) -> list[str]:
        return shlex.split(self.command)

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch * self.context_length

    @classmethod
    def read(cls, table: dict[str, Any], sweep_file: Path) -> "Trainer":
        where = f"{sweep_file} [trainer]"
        check_keys(Path(where), {k: float(v) if k == "tokens_per_param" and type(v) is int else v
                                 for k, v in table.items()}, TRAINER_KEYS)
        for key in ("command", "global_batch", "context_length"):
            if key not in table:
                raise UserError(f"{where}: no {key}; a trainer needs command, global_batch and context_length")
        for key in ("global_batch", "context_length"):
            check_int(f"{where} {key} =", table[key])
            if table[key] < 1:
                raise UserError(f"{where}: {key} must be >= 1, got {table[key]}")
        per_param = float(table.get("tokens_per_param", 20.0))
        if not (math.isfinite(per_param) and per_param > 0):
            raise UserError(f"{where}: tokens_per_param must be a positive number, got {per_param!r}")
        settings = dict(table.get("settings", {}))
        for name, value in settings.items():
            if not name.isidentifier() or name in contract.PLACEHOLDERS or name in EXPERIMENT_FACTS:
                raise UserError(f"{where}.settings: {name!r} is not a setting's name: use an identifier other than "
                                f"{', '.join([*contract.PLACEHOLDERS, *sorted(EXPERIMENT_FACTS)])}")
            if type(value) not in SETTING_TYPES or (type(value) is float and not math.isfinite(value)):
                raise UserError(f"{where}.settings: {name} = {value!r}: a setting is a bool, int, finite float or "
                                "string")
        try:
            argv = shlex.split(table["command"])
        except ValueError as err:
            raise UserError(f"{where}: command {table['command']!r} cannot be split into arguments: {err}") from None
        if not argv:
            raise UserError(f"{where}: command is empty; e.g. command = \"{{python}} train.py\"")
        _check_placeholders(argv, settings, where)
        folder = sweep_file.resolve().parent
        if argv[0] != "{python}" and not shutil.which(argv[0]) and not (folder / argv[0]).is_file():
            raise UserError(f"{where}: command {table['command']!r}: {argv[0]!r} is not a program here (nor a file "
                            f"in {folder}); e.g. command = \"{{python}} train.py\"")
        listed = table.get("files", [])
        if not all(isinstance(f, str) and f for f in listed):
            raise UserError(f"{where}: files must be a list of file names, got {listed!r}")
        for name in listed:
            if Path(name).is_absolute() or ".." in Path(name).parts:
                raise UserError(f"{where}: files names {name!r}: give paths inside {folder}, relative to it")
            if not (folder / name).is_file():
                raise UserError(f"{where}: files names {name!r}, which is not a file in {folder}")
        named = [*folder_files(folder, argv), *listed]
        files, modules = {}, {}
        for name in dict.fromkeys(named):
            files[name], modules[name] = _identity(folder / name)
        if not files:
            raise UserError(f"{where}: the command names no file of {folder} (its script is part of each run's "
                            "identity): name the script in the command, or list it in files = [...]")
        return cls(table["command"], folder, files, modules, settings, table["global_batch"], table["context_length"],
                   per_param, sweep_file)

    def arm(self, arm: str, library: Library) -> TrainerArm:
        """An arm's settings: its interventions' [set] values over the trainer's, each a declared setting
        of the default's type; two interventions that set one setting differently are refused."""
        interventions = [self._intervention(name, library) for name in split_arm(arm)]
        own = merged_overrides(interventions)
        settings = self.settings | own
        files, modules = dict(self.files), dict(self.modules)
        for name in folder_files(self.folder, [v for v in settings.values() if isinstance(v, str)]):
            if name not in files:  # a file a setting names is read by the run
                files[name], modules[name] = _identity(self.folder / name)
        config = {TRAINED_BY: {"command": self.command, "files": files, "settings": settings,
                              "global_batch": self.global_batch, "context_length": self.context_length,
                              "tokens_per_param": self.tokens_per_param}}  # how a budget is chosen: not its identity
        overrides = {k: v for k, v in settings.items() if self.settings[k] != v}
        entries = tuple({"intervention": PRESET, "file": name, "sha256": sha, "seams": [], "settings": {}}
                        | ({"modules": list(modules[name])} if modules[name] else {})
                        for name, sha in files.items())
        return TrainerArm(arm, config, overrides, own, entries, tuple(self.folder / n for n in files))

    def _intervention(self, name: str, library: Library) -> Intervention:
        path = library.find("intervention", name).path
        data = read_toml(path)
        check_keys(path, data, INTERVENTION_KEYS)
        if "code" in data:
            raise UserError(f"{path}: intervention {name!r} is code for harness's own model (code = "
                            f"{data['code']!r}); an external trainer's arms set its settings in [set]")
        checked = {}
        for key, value in data.get("set", {}).items():
            if key not in self.settings:
                match = difflib.get_close_matches(key, list(self.settings), n=1)
                raise UserError(f"intervention {name!r} ({path}) sets {key!r}, which the trainer does not declare"
                                f"{f' (did you mean {match[0]!r}?)' if match else ''}; {self.source} [trainer.settings] "
                                f"declares {', '.join(self.settings) or 'none'}")
            checked[key] = typed_setting(key, value, self.settings[key], f"{path} [set]")
        return Intervention(name, data.get("description", ""), data.get("source", ""), checked)

    def budget(self, arm: TrainerArm, params: int, tokens: int):
        """`tokens` rounded up to whole global batches (params: the probe's count, or 0 unknown)."""
        from harness.planning.budget import whole_steps  # torch: not for a command that only checks its options

        return whole_steps(arm.arm, params, 0, tokens, self.tokens_per_step)

    def chinchilla(self, arm: TrainerArm, params: int):
        return self.budget(arm, params, math.ceil(self.tokens_per_param * params))

    def probe(self, arm: TrainerArm) -> int:
        """The arm's parameter count, from the command run with HARNESS_PROBE=1."""
        from harness.store.record import RunSpec

        with tempfile.TemporaryDirectory(prefix="harness-probe-") as tmp:
            spec = RunSpec(run_id="probe", sweep="probe", arm=arm.arm, seed=0, init_seed=0, data_seed=0, dropout_seed=0,
                           preset=PRESET, config=arm.config, overrides={}, config_hash="", params=0,
                           tokens=self.tokens_per_step, steps=1, tokens_per_step=self.tokens_per_step, world_size=1)
            values = contract.passed(spec, Path(tmp), resume=False, probe=True)
            env = os.environ | {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "LOCAL_WORLD_SIZE": "1",
                                "PYTHONUNBUFFERED": "1"} | contract.environment(values)
            argv = contract.command(self.argv, values, arm.config[TRAINED_BY]["settings"])
            try:
                done = subprocess.run(argv, cwd=self.folder, env=env, capture_output=True, text=True,
                                      errors="replace", timeout=PROBE_TIMEOUT_S)
            except FileNotFoundError:
                raise UserError(f"the trainer's command {self.command!r}: {argv[0]!r} is not a program here") from None
            except subprocess.TimeoutExpired:
                raise UserError(f"the trainer's probe (HARNESS_PROBE=1) for arm {arm.arm!r} took over "
                                f"{PROBE_TIMEOUT_S:g} s; give --tokens (or tokens in the sweep file)") from None
            if done.returncode != 0:
                last = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
                raise UserError(f"the trainer's probe (HARNESS_PROBE=1) for arm {arm.arm!r} exited with code "
                                f"{done.returncode}: {last[0][:300]}")
            try:
                return int(contract.read_result(Path(values["result"]), 0, probe=True)["params"])
            except contract.BrokenResult as err:
                raise UserError(f"the trainer's probe for arm {arm.arm!r}: {err}; or give --tokens") from None


def _check_placeholders(argv: list[str], settings: dict[str, Any], where: str) -> None:
    known = [*contract.PLACEHOLDERS, *settings]
    for arg in argv:
        try:
            parsed = [(f, spec, conv) for _, f, spec, conv in string.Formatter().parse(arg) if f is not None]
        except ValueError as err:
            raise UserError(f"{where}: command argument {arg!r}: {err} (write a literal brace as {{{{ or }}}})") from None
        for name, spec, conv in parsed:
            if spec or conv:
                raise UserError(f"{where}: command has {{{name}{'!' + conv if conv else ''}{':' + spec if spec else ''}}}: "
                                "a placeholder is a bare name, written as harness passes it (format it in the script)")
            if name not in known:
                match = difflib.get_close_matches(name, known, n=1)
                raise UserError(f"{where}: command has the placeholder {{{name}}}"
                                f"{f' (did you mean {{{match[0]}}}?)' if match else ''}; allowed: "
                                f"{', '.join(contract.PLACEHOLDERS)} and the settings ({', '.join(settings) or 'none'})")


def folder_files(folder: Path, words: list[str]) -> list[str]:
    """The files of `folder` that words of a command (or a setting's value) name, as relative paths:
    "train.py", "--config=conf.yaml"; placeholders aside."""
    found = []
    for word in words:
        for part in (word, word.partition("=")[2]):
            if part and "{" not in part and not Path(part).is_absolute() and ".." not in Path(part).parts \
                    and (folder / part).is_file():
                found.append(part)
    return found


def _identity(path: Path) -> tuple[str, tuple[str, ...]]:
    """A trainer file's content hash and the modules of its own it imports (a Python file's, through
    harness.core.code; any other file is its bytes)."""
    modules: tuple[str, ...] = ()
    if path.suffix == ".py":
        try:
            modules = own_modules(path, ast.parse(path.read_bytes(), filename=str(path)))
        except SyntaxError as err:
            raise UserError(f"{path}:{err.lineno or 0}: {err.msg}: the trainer's script cannot be read") from None
    return content_hash(path, modules), modules


def changed_files(spec) -> list[str]:
    """The files of an external run (a RunSpec) whose content is no longer what was planned."""
    trainer = spec.config[TRAINED_BY]
    folder = Path(spec.workdir)
    changed = []
    for name, sha in trainer["files"].items():
        try:
            now = _identity(folder / name)[0]
        except (OSError, UserError):
            now = "(unreadable)"
        if now != sha:
            changed.append(name)
    return changed


EXAMPLES = "trainers"  # the example trainers' folder in the built-in definitions (the checkout's sweeps/trainers)


def copy_examples(dest: Path) -> list[Path]:
    """Copy the example trainers and their sweep files into `dest` (made if need be); a file already
    there is never overwritten."""
    source = builtin_folder() / EXAMPLES
    files = sorted(p for p in source.iterdir() if p.suffix in (".py", ".toml") and p.is_file())
    dest = Path(dest)
    there = [p.name for p in files if (dest / p.name).exists()]
    if there:
        raise UserError(f"{dest} already holds {', '.join(there)}: choose an empty or new folder (nothing was copied)")
    try:
        dest.mkdir(parents=True, exist_ok=True)
        for p in files:
            partial = dest / f".{p.name}.partial"
            shutil.copyfile(p, partial)
            partial.replace(dest / p.name)
    except OSError as err:
        raise UserError(f"cannot copy the example trainers into {dest}: {err.strerror or err}") from None
    return [dest / p.name for p in files]
