"""Checkpoints that resume a run bit-identically and never execute a pickle.

A checkpoint is a folder: model.safetensors (weights), optimizer.pt (tensors and numbers only,
read back with torch.load(weights_only=True)) and meta.json (step, loss curve so far, elapsed
time, and the sha256 of every other file). No random state: the worker seeds dropout afresh for
every micro-step (harness.training.worker.dropout_seed_for), so a resumed run needs none. It is
written into a temporary folder and renamed into place, so a crash leaves the previous
checkpoint; a checkpoint whose checksums do not match is refused with a warning, never used.
`latest(run_dir, quarantine=True)` (the launching parent) also moves a damaged checkpoint to
run_dir/quarantine/ and probes every .pt file with torch.load(weights_only=True): a file that
would need real unpickling (code execution) is refused and quarantined, never loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from harness.core.files import atomic_write_json, fsync_dir, quarantine, sha256_file

META = "meta.json"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: damaged, or holding a pickle that is not plain tensors."""


def commit(run_dir: Path, model: torch.nn.Module, optim_state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Rank 0: write weights, optimizer and meta (with checksums) into a fresh staging folder, then swap it in."""
    stage = run_dir / "checkpoint.tmp"  # a crash leaves it behind: the next commit starts it afresh
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    save_model(model, str(stage / "model.safetensors"))
    torch.save(optim_state, stage / "optimizer.pt")
    files = sorted(p.name for p in stage.iterdir() if p.name != META)
    for name in files:
        with (stage / name).open("rb") as f:
            os.fsync(f.fileno())
    atomic_write_json(stage / META, meta | {"sha256": {n: sha256_file(stage / n) for n in files}})
    fsync_dir(stage)
    final, old = run_dir / "checkpoint", run_dir / "checkpoint.old"
    if final.exists():  # else checkpoint.old (if any) is the newest intact one: keep it until the swap
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
    stage.rename(final)
    fsync_dir(run_dir)
    shutil.rmtree(old, ignore_errors=True)


def verified(folder: Path, probe: bool = False) -> dict[str, Any] | None:
    """The checkpoint's meta if every file matches its recorded checksum, else None (with a warning).

    probe: also open every .pt file with torch.load(weights_only=True, mmap=True) (cheap: tensors
    are mapped, not read), so one that holds anything but tensors and plain containers is refused."""
    why = problem(folder, probe)
    if why:
        warnings.warn(f"checkpoint {folder} {why}; not using it")
        return None
    return json.loads((folder / META).read_text())


def problem(folder: Path, probe: bool = False) -> str | None:
    """Why the checkpoint in `folder` must not be used, or None when it is intact."""
    try:
        meta = json.loads((folder / META).read_text())
        recorded = meta["sha256"]
        if not isinstance(recorded, dict) or not isinstance(meta["step"], int):
            raise TypeError("meta.json is malformed")
        if "model.safetensors" not in recorded:
            raise KeyError("model.safetensors is not listed in meta.json")
        bad = [n for n, digest in recorded.items() if Path(n).name != n or sha256_file(folder / n) != digest]
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        return f"is unreadable ({type(err).__name__}: {err})"
    if bad:
        return f"failed its checksum ({', '.join(bad)})"
    if probe:
        for path in sorted(folder.glob("*.pt")):
            try:
                torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except Exception as err:  # noqa: BLE001 - anything torch refuses to load is unusable
                first = (str(err).strip().splitlines() or [type(err).__name__])[0]
                return f"holds {path.name}, which torch.load(weights_only=True) refuses ({first[:200]})"
    return None


def latest(run_dir: Path, quarantine_bad: bool = False) -> tuple[Path, dict[str, Any]] | None:
    """The newest intact checkpoint (a crash mid-swap can leave only checkpoint.old).

    quarantine_bad (the launching parent, before any worker starts): move each damaged or unsafe
    checkpoint to run_dir/quarantine/ with a warning naming both paths, and probe .pt files."""
    for name in ("checkpoint", "checkpoint.old"):
        folder = run_dir / name
        if not folder.is_dir():
            continue
        if not quarantine_bad:
            meta = verified(folder)
            if meta is not None:
                return folder, meta
            continue
        why = problem(folder, probe=True)
        if why is None:
            return folder, json.loads((folder / META).read_text())
        moved = quarantine(folder, run_dir)
        warnings.warn(f"checkpoint {folder} {why}; moved it to {moved} and not using it")
    return None


def _safe_load(path: Path, **kwargs: Any) -> Any:
    """torch.load with weights_only=True: tensors and plain containers only, never arbitrary code."""
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError ...
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"refusing to load {path}: torch.load(weights_only=True) failed "
                              f"({type(err).__name__}: {first[:200]})") from None


def load(folder: Path, model: torch.nn.Module, device: torch.device) -> dict[str, Any]:
    """Load weights into `model`; return the optimizer state."""
    load_model(model, str(folder / "model.safetensors"), device=str(device))
    return _safe_load(folder / "optimizer.pt", map_location=device)
