"""Torn and corrupt token shards: a truncated or bit-flipped cached shard is detected by the sha256
in its manifest, reported with its path and rebuilt (to the same tokens); a damaged shard in a
user's folder, which cannot be rebuilt, is refused with its path or re-verified."""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from harness.data import corpus as datamod
from harness.core.errors import UserError
from conftest import flip_bit as flip
from relkit import corpus


def load(source: Path, cache: Path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = datamod.load_corpus(str(source), "bytes", cache_dir=cache)
    return c, [str(w.message) for w in caught]


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "delete", "manifest"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_damaged_cached_shard_is_reported_and_rebuilt_to_the_same_tokens(tmp_path, damage, split):
    text = corpus(tmp_path)
    first, said = load(text, tmp_path / "cache")
    train, test = np.array(first.train), np.array(first.test)
    entry = next((tmp_path / "cache" / "corpora").glob("corpus-bytes-*/"))
    shard = entry / f"{split}.bin"
    if damage == "truncate":
        shard.write_bytes(shard.read_bytes()[:-10])
    elif damage == "flip":
        flip(shard, len(shard.read_bytes()) // 3)
    elif damage == "empty":
        shard.write_bytes(b"")
    elif damage == "delete":
        shard.unlink()
    else:
        (entry / "manifest.json").write_text("{")
    del first
    again, said = load(text, tmp_path / "cache")
    assert any(str(entry) in m and "rebuilding" in m for m in said), said
    assert np.array_equal(np.array(again.train), train) and np.array_equal(np.array(again.test), test)
    _, said = load(text, tmp_path / "cache")
    assert not said  # rebuilt for good


def shard_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "shards"
    folder.mkdir()
    rng = np.random.default_rng(0)
    rng.integers(0, 256, 20000, dtype=np.uint16).tofile(folder / "train.bin")
    rng.integers(0, 256, 3000, dtype=np.uint16).tofile(folder / "test.bin")
    return folder


def test_truncated_user_shard_is_refused_with_its_path(tmp_path):
    folder = shard_folder(tmp_path)
    load(folder, tmp_path / "cache")
    (folder / "train.bin").write_bytes((folder / "train.bin").read_bytes()[:-1])  # a torn copy: odd size
    with pytest.raises(UserError, match=str(folder / "train.bin")):
        load(folder, tmp_path / "cache")


def test_changed_user_shard_is_rehashed_with_a_warning_naming_it(tmp_path):
    folder = shard_folder(tmp_path)
    first, _ = load(folder, tmp_path / "cache")
    flip(folder / "test.bin", 100)
    again, said = load(folder, tmp_path / "cache")
    assert any(str(folder / "test.bin") in m for m in said), said
    assert again.test_set_id != first.test_set_id  # a different test set can never be compared silently


def test_bit_rot_in_a_user_shard_with_its_mtime_kept_is_detected(tmp_path):
    folder = shard_folder(tmp_path)
    load(folder, tmp_path / "cache")
    shard = folder / "train.bin"
    st = shard.stat()
    flip(shard, 5000)
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            datamod.load_corpus(str(folder), "bytes", cache_dir=tmp_path / "cache")
        except UserError as err:
            assert str(shard) in str(err)
            return
    assert any(str(shard) in str(w.message) for w in caught)


def test_corrupt_prepared_shard_is_refused_against_its_manifest(tmp_path):
    folder = shard_folder(tmp_path)
    import hashlib

    manifest = {"format": "harness-prepared", "tokenizer": {"name": "bytes"},
                "shards": {s: {"sha256": hashlib.sha256((folder / f"{s}.bin").read_bytes()).hexdigest()}
                           for s in ("train", "test")}}
    (folder / "manifest.json").write_text(json.dumps(manifest))
    flip(folder / "train.bin", 778)  # the low byte of a token: still a valid id
    with pytest.raises(UserError, match=str(folder / "train.bin")):
        load(folder, tmp_path / "cache")
