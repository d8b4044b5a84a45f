"""The token-shard format, shared by the corpus cache (harness.data.corpus) and `harness data prepare`.

A shard is a raw little-endian uint16 array of token ids (nanoGPT's train.bin / test.bin /
val.bin). It is identified by the sha256 of its bytes, hashed in chunks so that shards larger
than memory are read through a memory map. A folder made by `harness data prepare` also holds a
manifest.json of format "harness-prepared" that records each shard's token count, sha256 and
largest id; training verifies the shards against it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

SHARD_DTYPE = np.dtype("<u2")
HASH_CHUNK = 1 << 24  # tokens per hashing step
PREPARED_FORMAT = "harness-prepared"
MANIFEST = "manifest.json"


def digest(tokens: np.ndarray) -> tuple[str, int]:
    """(sha256 of the shard's bytes, its largest token id; 0 when empty)."""
    h, top = hashlib.sha256(), 0
    for start in range(0, len(tokens), HASH_CHUNK):
        chunk = np.ascontiguousarray(tokens[start: start + HASH_CHUNK])
        h.update(chunk)
        top = max(top, int(chunk.max()))
    return h.hexdigest(), top


def open_shard(path: Path) -> np.ndarray:
    """A read-only memory map of a shard file (an empty array for an empty file)."""
    if Path(path).stat().st_size == 0:
        return np.zeros(0, SHARD_DTYPE)
    return np.memmap(path, dtype=SHARD_DTYPE, mode="r")


def read_prepared_manifest(folder: Path) -> dict[str, Any] | None:
    """The manifest of a folder made by `harness data prepare`, or None when it has none (any
    other shard folder) or an unreadable one."""
    try:
        manifest = json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == PREPARED_FORMAT else None
