"""Checkpoints: a crash at any point of a commit leaves an intact one; a torn or bit-flipped one is
quarantined, never used; a pickle that would run code is refused and never executed."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import warnings
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.filterwarnings("ignore:Detected pickle protocol")

from conftest import flip_bit
from harness.training import checkpoint


def save(run_dir: Path, step: int, model: torch.nn.Module | None = None) -> None:
    torch.manual_seed(step)
    model = model or torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    checkpoint.commit(run_dir, model, {"optimizer": opt.state_dict()}, {"step": step, "curve": [], "elapsed_s": 1.0})


def rehash(folder: Path) -> None:
    """Make meta.json vouch for whatever the folder now holds (an attacker can do that too)."""
    meta = json.loads((folder / "meta.json").read_text())
    meta["sha256"] = {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in meta["sha256"]}
    (folder / "meta.json").write_text(json.dumps(meta))


class Crash(BaseException):
    pass


@pytest.mark.parametrize("after", [False, True])
@pytest.mark.parametrize("crash_at", [1, 2, 3])  # meta.json into the stage, checkpoint -> .old, stage -> checkpoint
def test_a_crash_at_any_rename_of_a_commit_leaves_an_intact_checkpoint(tmp_path, monkeypatch, crash_at, after):
    """Just before or after each rename of the second commit: afterwards the newest intact
    checkpoint is step 1 or step 2, never nothing; a third commit then works from that state."""
    save(tmp_path, 1)
    calls = [0]
    real_rename, real_replace = os.rename, os.replace

    def crashing(real):
        def inner(a, b):
            calls[0] += 1
            if calls[0] == crash_at and not after:
                raise Crash()
            out = real(a, b)
            if calls[0] == crash_at:
                raise Crash()
            return out
        return inner

    monkeypatch.setattr(os, "rename", crashing(real_rename))
    monkeypatch.setattr(os, "replace", crashing(real_replace))
    with pytest.raises(Crash):
        save(tmp_path, 2)
    monkeypatch.undo()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a crash is never reported as corruption
        found = checkpoint.latest(tmp_path, quarantine_bad=True)
    assert found is not None and found[1]["step"] in (1, 2), crash_at
    save(tmp_path, 3)  # and the next commit works from whatever the crash left
    assert checkpoint.latest(tmp_path)[1]["step"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def test_a_crash_while_removing_the_old_checkpoint_is_not_corruption(tmp_path):
    """Killed inside the commit's last step (removing checkpoint.old, file by file): the half-removed
    folder is ignored, not reported or quarantined, and the next commit clears it."""
    save(tmp_path, 1)
    save(tmp_path, 2)
    shutil.copytree(tmp_path / "checkpoint", tmp_path / "checkpoint.old")
    (tmp_path / "checkpoint.old" / "model.safetensors").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = checkpoint.latest(tmp_path, quarantine_bad=True)
    assert found is not None and found[1]["step"] == 2
    save(tmp_path, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


def _damage_truncate(folder):
    p = folder / "model.safetensors"
    p.write_bytes(p.read_bytes()[:40])


def _damage_flip(folder):
    p = folder / "optimizer.pt"
    flip_bit(p, p.stat().st_size // 2)


def _damage_meta(folder):
    (folder / "meta.json").write_text('{"step": 3, "sha2')


def _damage_missing(folder):
    (folder / "optimizer.pt").unlink()


def _damage_traversal(folder):
    meta = json.loads((folder / "meta.json").read_text())
    meta["sha256"]["../../outside"] = "0" * 64
    (folder / "meta.json").write_text(json.dumps(meta))


@pytest.mark.parametrize("damage", [_damage_truncate, _damage_flip, _damage_meta, _damage_missing, _damage_traversal])
def test_damaged_checkpoint_is_quarantined_with_its_path_and_the_older_one_used(tmp_path, damage):
    save(tmp_path, 1)
    shutil.copytree(tmp_path / "checkpoint", tmp_path / "keep")
    save(tmp_path, 2)
    (tmp_path / "keep").rename(tmp_path / "checkpoint.old")  # step 1, as a crash mid-swap leaves it
    damage(tmp_path / "checkpoint")
    with pytest.warns(UserWarning) as caught:
        found = checkpoint.latest(tmp_path, quarantine_bad=True)
    assert found is not None and found[1]["step"] == 1
    quarantined = list((tmp_path / "quarantine").iterdir())
    assert len(quarantined) == 1 and quarantined[0].name.startswith("checkpoint.")
    message = str(caught[0].message)
    assert str(tmp_path / "checkpoint") in message and str(quarantined[0]) in message
    assert checkpoint.latest(tmp_path)[1]["step"] == 1  # workers now find the intact one


class Payload:
    """Unpickling this runs a shell command: what a malicious download would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("name", ["optimizer.pt", "rng_rank0.pt"])  # rng_rank0.pt: left by an older version
@pytest.mark.parametrize("container", ["torch-zip", "raw-pickle"])
def test_malicious_pickle_in_a_checkpoint_is_refused_and_never_executed(tmp_path, name, container):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    save(run_dir, 5)
    folder = run_dir / "checkpoint"
    marker = tmp_path / "pwned"
    evil = {"optimizer": Payload(marker), "cpu": Payload(marker)}
    if container == "torch-zip":
        torch.save(evil, folder / name)
    else:
        (folder / name).write_bytes(pickle.dumps(evil))
    rehash(folder)  # checksums match: only the loader stands between the file and the shell

    # the payload is live: an unsafe loader would run it (shown on a copy, in a throwaway folder)
    probe = tmp_path / "probe.pt"
    probe.write_bytes((folder / name).read_bytes())
    if container == "torch-zip":
        torch.load(probe, weights_only=False)
    else:
        pickle.loads(probe.read_bytes())
    assert marker.exists()
    marker.unlink()

    # the worker's loader refuses it with a clear error (it never opens a stray file such as an older
    # version's rng_rank0.pt at all)
    if name == "optimizer.pt":
        with pytest.raises(checkpoint.CheckpointError, match=f"refusing to load .*{name}.*weights_only=True"):
            checkpoint.load(folder, torch.nn.Linear(4, 3), torch.device("cpu"))
    assert not marker.exists()
    # the launching parent refuses it before any worker starts, and moves it aside
    with pytest.warns(UserWarning, match=f"{name}, which torch.load\\(weights_only=True\\) refuses"):
        assert checkpoint.latest(run_dir, quarantine_bad=True) is None
    assert not folder.exists() and len(list((run_dir / "quarantine").iterdir())) == 1
    assert not marker.exists()


def test_weights_are_safetensors_and_other_state_loads_with_weights_only(tmp_path):
    save(tmp_path, 1)
    folder = tmp_path / "checkpoint"
    assert (folder / "model.safetensors").read_bytes()[8:9] == b"{"  # safetensors: u64 header size + JSON
    for pt in folder.glob("*.pt"):
        torch.load(pt, weights_only=True)
    json.loads((folder / "meta.json").read_text())
