"""Code interventions: an intervention whose TOML names a Python file (`code = "qk_norm.py"`, a path
beside the TOML) changes the network or its training through the seams below, and stays a paired,
identified arm like any other.

The file may define any of these functions (SEAMS); harness calls each at its one place:

  convert(model, ctx)             change the built network (wrap or replace modules, add
                                  parameters, register hooks); returns None or the model. Every
                                  parameter is then initialised by name (harness.model.gpt.init_weights),
                                  so the baseline's parameters keep the baseline's values.
  init(name, param, generator, ctx)
                                  a parameter's initial value (a tensor of its shape), drawn from
                                  `generator` (harness's stream for that name), or None to keep
                                  harness's rule; required for parameters harness has no rule for.
  optimizer(model, ctx)           the optimiser(s): a torch.optim.Optimizer or a list of them. A
                                  parameter group's "lr_scale" multiplies the scheduled learning rate.
  schedule(step, ctx)             per-step hyperparameters, a pure function of the step: a dict with
                                  "lr" (the schedule's learning rate) and any parameter-group key
                                  (set on every group that has it, e.g. Muon's "momentum").
  loss(logits, targets, ctx)      the training loss (a scalar tensor) from float logits (B, T, V) and
                                  targets (B, T). The test loss stays harness's, on the changed network.

`ctx` (harness.training.seams.Context) holds the run's settings, model and training configs, steps
and a generator(name) keyed by the run's seed and that name. The file's settings are declared as a
literal dict, SETTINGS = {"name": (default, "one-line meaning")}, read without running the file;
an intervention's [set] table sets them (checked like built-in keys). `convert` seams of an arm's
interventions compose in the arm's order; any other seam may come from one of them only.

The file's content, and that of the user's own modules it imports (NAME.py files beside it, found
by their import statements), is part of the run's identity; a copy of all of them goes into
RESULTS/code/<sha256>/, and workers import those copies by path (never from sys.path).
"""

from __future__ import annotations

import ast
import difflib
import hashlib
import importlib.abc
import importlib.util
import math
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from harness.core.errors import UserError

SEAMS = ("convert", "init", "optimizer", "schedule", "loss")
COMPOSING = ("convert",)  # seams that compose in the arm's order; the others come from one intervention
SETTING_TYPES = (bool, int, float, str)
CODE_FOLDER = "code"  # RESULTS/code/<sha256>/<file>: the stored copies


@dataclass(frozen=True)
class CodeFile:
    """An intervention's Python file as read (not run): its content's hash, its seams and settings."""

    intervention: str
    path: Path
    sha256: str  # of the file and its own modules (content_hash)
    seams: tuple[str, ...]
    settings: dict[str, tuple[Any, str]]  # name -> (default, one-line meaning)
    modules: tuple[str, ...] = ()  # the user's own modules it imports: NAME.py files beside it

    def entry(self, values: dict[str, Any]) -> dict[str, Any]:
        """What an arm records of it (ArmConfig.code): the file, its content and its settings' values."""
        return {"intervention": self.intervention, "file": self.path.name, "sha256": self.sha256,
                "seams": list(self.seams), "settings": {k: values.get(k, d) for k, (d, _) in self.settings.items()}} | (
            {"modules": list(self.modules)} if self.modules else {})


def _line_error(path: Path, err: SyntaxError) -> UserError:
    return UserError(f"{path}:{err.lineno or 0}: {err.msg}: the code intervention cannot be read")


def read_code(path: Path, intervention: str, reserved: frozenset[str] = frozenset()) -> CodeFile:
    """Read (without running) an intervention's file: syntax, seams, SETTINGS. `reserved`: the
    built-in keys, which a setting may not shadow."""
    try:
        source = path.read_bytes()
    except OSError as err:
        raise UserError(f"intervention {intervention!r}: cannot read its code {path}: {err.strerror or err}") from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as err:
        raise _line_error(path, err) from None
    seams = tuple(n.name for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in SEAMS)
    modules = own_modules(path, tree)
    settings: dict[str, tuple[Any, str]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "SETTINGS" for t in node.targets):
            settings = _settings(path, node)
    for name in settings:
        if name in reserved:
            raise UserError(f"{path}: setting {name!r} is a built-in key; give it another name")
    if not seams:
        raise UserError(f"{path}: defines none of the seams ({', '.join(SEAMS)}): a code intervention changes "
                        "something through at least one")
    return CodeFile(intervention, path, content_hash(path, modules), tuple(s for s in SEAMS if s in seams),
                    settings, modules)


def _imported(tree: ast.AST) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return names


def own_modules(path: Path, tree: ast.AST) -> tuple[str, ...]:
    """The user's modules a code file imports, directly or through each other: NAME.py files in its
    folder (sorted)."""
    found: set[str] = set()
    todo = [tree]
    while todo:
        for name in sorted(_imported(todo.pop())):
            module = path.parent / f"{name}.py"
            if name not in found and module != path and module.is_file():
                found.add(name)
                try:
                    todo.append(ast.parse(module.read_bytes(), filename=str(module)))
                except SyntaxError as err:
                    raise _line_error(module, err) from None
    return tuple(sorted(found))


def content_hash(path: Path, modules: tuple[str, ...] = ()) -> str:
    """SHA-256 of a code file, and of its own modules by name where it has any (a file alone hashes
    as its bytes)."""
    digest = hashlib.sha256(path.read_bytes())
    if not modules:
        return digest.hexdigest()
    for name in modules:
        digest.update(f"\0{name}\0".encode() + (path.parent / f"{name}.py").read_bytes())
    return digest.hexdigest()


def _settings(path: Path, node: ast.Assign) -> dict[str, tuple[Any, str]]:
    where = f"{path}:{node.lineno}: SETTINGS"
    try:
        value = ast.literal_eval(node.value)
    except ValueError:
        raise UserError(f"{where} must be a literal dict, name -> (default, \"meaning\")") from None
    if not isinstance(value, dict):
        raise UserError(f"{where} must be a dict, name -> (default, \"meaning\")")
    out = {}
    for name, spec in value.items():
        if not isinstance(name, str) or not name.isidentifier():
            raise UserError(f"{where}: setting name {name!r} is not an identifier")
        if not (isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], str)
                and type(spec[0]) in SETTING_TYPES):
            raise UserError(f"{where}: {name!r} must be (default, \"meaning\") with a bool, int, float or str default")
        out[name] = (spec[0], spec[1])
    return out


def coerce_setting(code: CodeFile, key: str, value: Any, where: str) -> Any:
    """A value for one of the file's settings, of its default's type (an int where a float is wanted)."""
    if key not in code.settings:
        match = difflib.get_close_matches(key, list(code.settings), n=1)
        hint = f" (did you mean {match[0]!r}?)" if match else ""
        raise UserError(f"{where}: unknown key {key!r}{hint}; {code.path.name} declares "
                        f"{', '.join(code.settings) or 'no settings'}")
    return typed_setting(key, value, code.settings[key][0], where)


def typed_setting(key: str, value: Any, default: Any, where: str) -> Any:
    """A setting's value of its default's type (an int where a float is wanted; a finite number)."""
    kind = type(default)
    if kind is float and type(value) is int:
        value = float(value)
    if type(value) is not kind:
        raise UserError(f"{where}: {key} must be {kind.__name__} (as its default {default!r}), got {value!r}")
    if kind is float and not math.isfinite(value):
        raise UserError(f"{where}: {key} must be a finite number, got {value!r}")
    return value


def stored_path(results: Path, entry: dict[str, Any]) -> Path:
    """Where a run's code file is kept in its results folder."""
    return Path(results) / CODE_FOLDER / entry["sha256"] / entry["file"]


def store_copy(results: Path, source: Path, entry: dict[str, Any]) -> Path:
    """Copy a code file and its own modules into the results folder's folder for their content:
    runs import the copies. Each file appears whole (written beside, then renamed); the same content
    under another file name is stored under that name too."""
    target = stored_path(results, entry)
    modules = tuple(entry.get("modules", ()))
    target.parent.mkdir(parents=True, exist_ok=True)
    for file in (source, *(source.parent / f"{m}.py" for m in modules)):
        kept = target.parent / file.name
        if not kept.exists():
            partial = kept.with_name(f".{kept.name}.partial")
            shutil.copyfile(file, partial)
            partial.replace(kept)
    if content_hash(target, modules) != entry["sha256"]:
        target.unlink()
        raise UserError(f"{source} (or a module of its own) changed while it was being stored: run the command again")
    return target


class _OwnModules(importlib.abc.MetaPathFinder):
    """Finds exactly a code file's own modules (by name, in its folder): nothing else, and nothing
    on sys.path."""

    def __init__(self, folder: Path, names: tuple[str, ...]):
        self.folder, self.names = folder, set(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname in self.names:
            return importlib.util.spec_from_file_location(fullname, self.folder / f"{fullname}.py")
        return None


def import_file(path: Path, sha256: str, modules: tuple[str, ...] = ()) -> ModuleType:
    """Run a code file as a module of its own name (harness_code_<sha256>), by path: nothing goes on
    sys.path, so a user's model.py or harness.py beside it is never imported in harness's place; its
    own `modules` are found beside it (a module of one of their names imported from elsewhere is
    refused). An error while it runs is one line naming the file and line."""
    name = f"harness_code_{sha256[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    for module in modules:  # one already imported (another intervention's copy of it) must be the same file
        loaded = getattr(sys.modules.get(module), "__file__", None)
        if module in sys.modules and (loaded is None or not _same_bytes(Path(loaded), path.parent / f"{module}.py")):
            raise UserError(f"{path}: imports its own module {module!r}, but another module of that name is already "
                            f"imported ({loaded or 'built in'}): rename {module}.py")
    if modules:
        sys.meta_path.insert(0, _OwnModules(path.parent, modules))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # classes defined there must be importable by name (torch.compile, pickling)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as err:
        del sys.modules[name]
        raise _line_error(path, err) from None
    except Exception as err:  # noqa: BLE001 - the user's code: any error is one line naming where
        del sys.modules[name]
        raise UserError(f"{where_in(path, err)}: importing the code intervention failed: "
                        f"{type(err).__name__}: {err}") from None
    return module


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def where_in(path: Path, err: BaseException) -> str:
    """file:line of the innermost frame of `err`'s traceback that is in `path` (else the file)."""
    line = None
    tb = err.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename) == Path(path):
            line = tb.tb_lineno
        tb = tb.tb_next
    return f"{path}:{line}" if line else str(path)
