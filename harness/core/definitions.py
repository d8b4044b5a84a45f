"""Where presets, interventions and sweep files come from: the built-ins and the user's folders.

A definitions folder holds `presets/NAME.toml`, `interventions/NAME.toml` and sweep files
`NAME.toml` at its top, the layout of the checkout's sweeps/ folder. The built-in one ships inside
the installed package (harness.sweeps, read as package resources), so a wheel installed anywhere
has them. The user's folders come first, in this order:

  --sweeps DIR       given to a command (repeatable; the first given wins)
  $HARNESS_SWEEPS    folders separated by ':' (os.pathsep)
  ./sweeps           in the working directory, when it exists
  built-in           harness.sweeps

A name found in two folders is taken from the first; `harness list` names every definition's
folder and what it shadows, and a plan says when an arm uses a user file in place of a built-in.
A folder that is the built-in one (the checkout's own sweeps/ in an editable install) is not
listed twice.
"""

from __future__ import annotations

import difflib
import importlib.resources
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from harness.core.errors import UserError, shown

BASELINE = "baseline"  # the arm of no intervention, which every other arm is compared with
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+,=-]{0,199}")  # a sweep's (or ladder's) name: it names files
SWEEP_NAME_RULE = "letters, digits and . _ + , = - (it names files), starting with a letter or digit"
from harness.core.files import user_path

ENV = "HARNESS_SWEEPS"
BUILTIN = "built-in"
KINDS = {"preset": "presets", "intervention": "interventions", "sweep file": "."}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a preset's or an intervention's name: a file name, not a path
NAME_RULE = "letters, digits and _ . - (at most 64, starting with a letter or digit)"


def builtin_folder() -> Path:
    """The installed package's definitions folder (the checkout's sweeps/ in an editable install)."""
    return Path(str(importlib.resources.files("harness.sweeps")))


@dataclass(frozen=True)
class Folder:
    """One definitions folder and how the user gave it (shown in listings and notes)."""

    path: Path
    origin: str  # "--sweeps", "$HARNESS_SWEEPS", "./sweeps" or "built-in"

    @property
    def label(self) -> str:
        return self.origin if self.origin in (BUILTIN, "./sweeps") else f"{self.path} ({self.origin})"


@dataclass(frozen=True)
class Definition:
    kind: str  # preset, intervention or sweep file
    name: str
    path: Path
    folder: Folder
    shadows: tuple[Folder, ...] = ()  # later folders that hold the same name (not used)

    @property
    def builtin(self) -> bool:
        return self.folder.origin == BUILTIN


def _regular_toml(folder: Path) -> dict[str, Path]:
    """name -> path of the folder's regular .toml files (not FIFOs, not dangling or looping links)."""
    found = {}
    try:
        candidates = sorted(folder.glob("*.toml"))
    except OSError:
        return found
    for p in candidates:
        try:
            regular = stat.S_ISREG(p.stat().st_mode)
        except OSError:
            regular = False
        if regular and NAME.fullmatch(p.stem):
            found[p.stem] = p
    return found


class Library:
    """The definitions a command sees: its folders, highest priority first, the built-in last."""

    def __init__(self, folders: Sequence[Folder]):
        self.folders = tuple(folders)

    @classmethod
    def from_environment(cls, extra: Sequence[Path | str] = (), cwd: Path | None = None) -> "Library":
        """--sweeps folders (`extra`), then $HARNESS_SWEEPS, then ./sweeps, then the built-in."""
        builtin = builtin_folder()
        folders: list[Folder] = []
        given = [(p, "--sweeps") for p in extra]
        given += [(p, f"${ENV}") for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]
        for raw, origin in given:
            path = user_path(raw) if isinstance(raw, str) else Path(raw)
            if not path.is_dir():
                what = "does not exist" if not path.exists() else "is not a folder"
                raise UserError(f"{origin} {shown(str(raw))!r} {what}: give a folder holding presets/ and/or "
                                "interventions/ (see `harness list`)")
            folders.append(Folder(path, origin))
        local = (cwd or Path.cwd()) / "sweeps"
        if local.is_dir():
            folders.append(Folder(local, "./sweeps"))
        unique: list[Folder] = []
        seen = {_same(builtin)}
        for f in folders:
            if _same(f.path) not in seen:
                seen.add(_same(f.path))
                unique.append(f)
        return cls([*unique, Folder(builtin, BUILTIN)])

    def _tables(self, kind: str) -> list[tuple[Folder, dict[str, Path]]]:
        sub = KINDS[kind]
        return [(f, _regular_toml(f.path / sub if sub != "." else f.path)) for f in self.folders]

    def names(self, kind: str) -> list[str]:
        return sorted({name for _, found in self._tables(kind) for name in found})

    def listing(self, kind: str) -> list[Definition]:
        """Every name of this kind, from the folder that wins, with the folders it shadows."""
        tables = self._tables(kind)
        out = []
        for name in self.names(kind):
            holders = [(f, found[name]) for f, found in tables if name in found]
            (folder, path), rest = holders[0], holders[1:]
            out.append(Definition(kind, name, path, folder, tuple(f for f, _ in rest)))
        return out

    def find(self, kind: str, name: str) -> Definition:
        """The definition `name` of this kind (a name, never a path), or one clear error."""
        if not NAME.fullmatch(name):
            raise UserError(f"bad {kind} name {shown(name)!r}: use {NAME_RULE}; {kind}s are TOML files "
                            f"(see `harness list`)")
        tables = self._tables(kind)
        holders = [(f, found[name]) for f, found in tables if name in found]
        if not holders:
            for f, _ in tables:  # a file that exists but is not a regular file: say so
                sub = KINDS[kind]
                path = (f.path / sub if sub != "." else f.path) / f"{name}.toml"
                if os.path.lexists(path):
                    try:
                        path.stat()
                    except OSError as err:
                        raise UserError(f"cannot read {kind} {name!r} ({path}): {err.strerror or err}") from None
                    raise UserError(f"{kind} {name!r} ({path}) is not a regular file")
            match = difflib.get_close_matches(name, self.names(kind), n=1)
            hint = f" (did you mean {match[0]!r}?)" if match else ""
            known = ", ".join(self.names(kind)) if kind == "preset" else "run `harness list` to see them"
            raise UserError(f"unknown {kind} {name!r}{hint}; {'available: ' if kind == 'preset' else ''}{known}")
        (folder, path), rest = holders[0], holders[1:]
        return Definition(kind, name, path, folder, tuple(f for f, _ in rest))

    def user_folders(self) -> list[Path]:
        return [f.path for f in self.folders if f.origin != BUILTIN]

    def all_folders(self) -> list[Path]:
        return [f.path for f in self.folders]


def shadow_note(d: Definition) -> str | None:
    """A plan's note when a definition comes from a user folder in place of a built-in one."""
    if d.builtin or not any(f.origin == BUILTIN for f in d.shadows):
        return None
    return f"{d.kind} {d.name!r} comes from {d.path}, which shadows the built-in one"


def _same(path: Path) -> Path:
    try:
        return path.resolve()
    except OSError:
        return path
