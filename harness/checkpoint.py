"""Checkpoints that resume a run bit-identically and never execute a pickle.

A checkpoint is a folder: model.safetensors (weights), optimizer.pt (tensors and numbers only,
read back with torch.load(weights_only=True)), rng_rank<R>.pt (each process's random state) and
meta.json (step, loss curve so far, elapsed time, and the sha256 of every other file). It is
written into a temporary folder and renamed into place, so a crash leaves the previous
checkpoint; a checkpoint whose checksums do not match is refused with a warning, never used.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model, save_model

from harness.results import atomic_write_json

META = "meta.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def staging_dir(run_dir: Path) -> Path:
    return run_dir / "checkpoint.tmp"


def save_rng(stage: Path, rank: int) -> None:
    """Every process writes its own random state into the staging folder (before rank 0 commits)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    torch.save(state, stage / f"rng_rank{rank}.pt")


def commit(run_dir: Path, model: torch.nn.Module, optim_state: dict[str, Any], meta: dict[str, Any]) -> None:
    """Rank 0: add weights, optimizer and meta (with checksums) to the staging folder, then swap it in."""
    stage = staging_dir(run_dir)
    save_model(model, str(stage / "model.safetensors"))
    torch.save(optim_state, stage / "optimizer.pt")
    files = sorted(p.name for p in stage.iterdir() if p.name != META)
    for name in files:
        with (stage / name).open("rb") as f:
            os.fsync(f.fileno())
    atomic_write_json(stage / META, meta | {"sha256": {n: _sha256(stage / n) for n in files}})
    _fsync_dir(stage)
    final, old = run_dir / "checkpoint", run_dir / "checkpoint.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    stage.rename(final)
    _fsync_dir(run_dir)
    shutil.rmtree(old, ignore_errors=True)


def prepare_staging(run_dir: Path) -> Path:
    stage = staging_dir(run_dir)
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    return stage


def verified(folder: Path) -> dict[str, Any] | None:
    """The checkpoint's meta if every file matches its recorded checksum, else None (with a warning)."""
    try:
        meta = json.loads((folder / META).read_text())
        recorded = meta["sha256"]
        bad = [n for n, digest in recorded.items() if _sha256(folder / n) != digest]
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(f"checkpoint {folder} is unreadable ({err}); not using it")
        return None
    if bad:
        warnings.warn(f"checkpoint {folder} failed its checksum ({', '.join(bad)}); not using it")
        return None
    return meta


def latest(run_dir: Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest intact checkpoint (a crash mid-swap can leave only checkpoint.old)."""
    for name in ("checkpoint", "checkpoint.old"):
        folder = run_dir / name
        if folder.is_dir():
            meta = verified(folder)
            if meta is not None:
                return folder, meta
    return None


def load(folder: Path, model: torch.nn.Module, rank: int, device: torch.device) -> dict[str, Any]:
    """Load weights into `model` and this rank's random state; return the optimizer state."""
    load_model(model, str(folder / "model.safetensors"), device=str(device))
    rng = torch.load(folder / f"rng_rank{rank}.pt", weights_only=True)
    torch.set_rng_state(rng["cpu"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return torch.load(folder / "optimizer.pt", map_location=device, weights_only=True)
