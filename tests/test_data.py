"""Tokenizers, corpora, caches and batch order: everything offline, every cache under tmp_path."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import warnings

import numpy as np
import pytest
import torch

from conftest import flip_bit
from harness.data import corpus as data
from harness.data.batches import BatchSampler, BatchShape, check_epochs, epochs_needed, eval_batches, n_windows
from harness.data.corpus import TEST_PLAYS, CacheWarning, load_corpus
from harness.core.errors import UserError
from harness.data.tokenizers import get_tokenizer

# ----------------------------------------------------------------------------- tokenizers


def test_gpt2_tokenizer_matches_the_book():
    tok = get_tokenizer("gpt2")
    assert tok.encode("Every effort moves you") == [6109, 3626, 6100, 345]
    assert (tok.name, tok.vocab_size, tok.eot_id) == ("gpt2", 50257, 50256)
    assert tok.decode([6109, 3626, 6100, 345]) == "Every effort moves you"
    assert tok.decode([tok.eot_id]) == "<|endoftext|>"
    assert get_tokenizer("gpt2") is tok


def test_gpt2_treats_endoftext_text_as_plain_text():
    tok = get_tokenizer("gpt2")
    ids = tok.encode("a<|endoftext|>b")
    assert tok.eot_id not in ids
    assert tok.decode(ids) == "a<|endoftext|>b"
    assert [list(a) for a in tok.encode_batch(["Every effort moves you", "x"])] == [
        [6109, 3626, 6100, 345],
        tok.encode("x"),
    ]


def test_bytes_tokenizer_round_trips_non_ascii():
    tok = get_tokenizer("bytes")
    assert (tok.vocab_size, tok.eot_id) == (257, 256)
    text = "Fair is foul — ça va? 日本語 🎭"
    ids = tok.encode(text)
    assert all(0 <= i < 256 for i in ids) and len(ids) == len(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.decode(ids + [256] + tok.encode("x")) == text + "<|endoftext|>x"
    assert list(tok.encode_batch([text])[0]) == ids


def test_unknown_tokenizer_lists_allowed_names():
    with pytest.raises(UserError, match="gpt2, bytes"):
        get_tokenizer("llama")


# ----------------------------------------------------------------------------- shakespeare


@pytest.fixture(scope="module")
def shakespeare_gpt2(tmp_path_factory):
    return load_corpus("shakespeare", "gpt2", cache_dir=tmp_path_factory.mktemp("cache"))


def test_shakespeare_loads_offline_with_documented_counts(shakespeare_gpt2):
    c = shakespeare_gpt2
    assert (c.tokenizer_name, c.vocab_size, c.source) == ("gpt2", 50257, "shakespeare")
    assert (len(c.train), len(c.test)) == (1_348_265, 151_901)
    assert c.train.dtype == np.uint16 and isinstance(c.train, np.memmap)
    assert 0.08 < len(c.test) / (len(c.train) + len(c.test)) < 0.12
    # whole plays joined by eot: 34 train plays and 4 test plays
    assert int((np.asarray(c.train) == 50256).sum()) == 33
    assert int((np.asarray(c.test) == 50256).sum()) == len(TEST_PLAYS) - 1
    assert int(np.asarray(c.train).max()) < 50257 and int(np.asarray(c.test).max()) < 50257
    for play in TEST_PLAYS:
        assert play in c.description


def test_shakespeare_markup_is_stripped(shakespeare_gpt2):
    tok = get_tokenizer("gpt2")
    text = tok.decode(shakespeare_gpt2.test)
    assert text.startswith("Twelfth Night\n\nACT I\n")
    assert "**" not in text and "_" not in text and "\\" not in text
    assert not any(line.startswith("#") for line in text.splitlines())
    assert not any(line.endswith(" ") for line in text.splitlines())
    assert "\nMACBETH\n" in text and "Macbeth" in text


def test_test_plays_are_fixed_and_whole():
    assert TEST_PLAYS == (
        "comedies/twelfth-night",
        "histories/henry-v",
        "romances/a-winter-s-tale",
        "tragedies/macbeth",
    )
    docs = data._shakespeare_source().documents()
    assert len(docs["train"]) + len(docs["test"]) == 38
    assert [label for label, _ in docs["test"]] == list(TEST_PLAYS)
    chars = {s: sum(len(t) for _, t in docs[s]) for s in docs}
    assert 0.09 < chars["test"] / (chars["train"] + chars["test"]) < 0.11


def test_test_set_id_is_deterministic(shakespeare_gpt2, tmp_path):
    again = load_corpus("shakespeare", "gpt2", cache_dir=tmp_path)
    assert again.test_set_id == shakespeare_gpt2.test_set_id
    assert again.test_set_id == hashlib.sha256(np.asarray(again.test).tobytes()).hexdigest()[:16]
    assert len(again.test_set_id) == 16
    other = load_corpus("shakespeare", "bytes", cache_dir=tmp_path)
    assert other.test_set_id != again.test_set_id
    assert (len(other.train), len(other.test)) == (4_451_187, 504_491)


# ----------------------------------------------------------------------------- cache


def _cache_entry(cache_dir):
    (entry,) = [p for p in (cache_dir / "corpora").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return entry


@pytest.fixture
def text_folder(tmp_path):
    root = tmp_path / "corpus"
    for i in range(12):
        sub = root / ("a" if i % 2 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        suffix = ".md" if i % 3 == 0 else ".txt"
        (sub / f"doc{i:02d}{suffix}").write_text("".join(f"file {i} line {j}\n" for j in range(20 + i)))
    (root / "notes.py").write_text("print('not a document')\n")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "secret.txt").write_text("hidden text\n")
    (root / "empty.txt").write_text("  \n")
    return root


def test_second_load_reuses_the_cache(text_folder, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_corpus(str(text_folder), "bytes", cache_dir=cache)
    entry = _cache_entry(cache)
    mtimes = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    monkeypatch.setattr(data, "_build", lambda *a, **k: pytest.fail("re-tokenized a valid cache"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = load_corpus(str(text_folder), "bytes", cache_dir=cache)
    assert {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == mtimes
    assert np.array_equal(first.train, second.train) and first.test_set_id == second.test_set_id
    manifest = json.loads((entry / "manifest.json").read_text())
    for split in ("train", "test"):
        shard = (entry / f"{split}.bin").read_bytes()
        assert manifest["shards"][split]["sha256"] == hashlib.sha256(shard).hexdigest()
        assert manifest["shards"][split]["tokens"] == len(shard) // 2


def _truncate(entry):
    path = entry / "train.bin"
    path.write_bytes(path.read_bytes()[:-2])


def _flip_byte(entry):
    path = entry / "test.bin"
    flip_bit(path, path.stat().st_size // 2)


def _delete_manifest(entry):
    (entry / "manifest.json").unlink()


def _garble_manifest(entry):
    (entry / "manifest.json").write_text('{"prep_version": 1, "key": ')


def _drop_shard_hash(entry):
    manifest = json.loads((entry / "manifest.json").read_text())
    del manifest["shards"]["train"]["sha256"]
    (entry / "manifest.json").write_text(json.dumps(manifest))


@pytest.mark.parametrize("damage", [_truncate, _flip_byte, _delete_manifest, _garble_manifest, _drop_shard_hash])
def test_corrupt_cache_is_rebuilt_with_a_warning(text_folder, tmp_path, damage):
    cache = tmp_path / "cache"
    original = load_corpus(str(text_folder), "bytes", cache_dir=cache)
    train, test = np.array(original.train), np.array(original.test)
    damage(_cache_entry(cache))
    with pytest.warns(CacheWarning, match="rebuilding"):
        rebuilt = load_corpus(str(text_folder), "bytes", cache_dir=cache)
    assert np.array_equal(rebuilt.train, train) and np.array_equal(rebuilt.test, test)
    assert rebuilt.test_set_id == original.test_set_id
    assert [p.name for p in (cache / "corpora").iterdir() if p.name.startswith(".")] == []


def test_changed_source_gets_a_new_cache_entry(text_folder, tmp_path):
    cache = tmp_path / "cache"
    before = load_corpus(str(text_folder), "bytes", cache_dir=cache)
    with open(text_folder / "b" / "doc00.md", "a") as f:
        f.write("one more line\n")
    after = load_corpus(str(text_folder), "bytes", cache_dir=cache)
    assert len(after.train) + len(after.test) == len(before.train) + len(before.test) + len("one more line\n")
    assert len([p for p in (cache / "corpora").iterdir() if p.is_dir()]) == 2


def test_default_cache_dir_follows_harness_cache(text_folder, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE", str(tmp_path / "envcache"))
    load_corpus(str(text_folder), "bytes")
    assert _cache_entry(tmp_path / "envcache").is_dir()


def _load_in_child(args):
    source, cache = args
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        corpus = load_corpus(source, "bytes", cache_dir=cache)
    return corpus.test_set_id, len(corpus.train), [str(w.message) for w in caught]


def test_concurrent_builds_are_safe(text_folder, tmp_path):
    ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
    with ctx.Pool(2) as pool:
        results = pool.map(_load_in_child, [(str(text_folder), str(tmp_path / "cache"))] * 4)
    assert len({(r[0], r[1]) for r in results}) == 1
    assert all(r[2] == [] for r in results)
    assert len([p for p in (tmp_path / "cache" / "corpora").iterdir() if p.is_dir()]) == 1


# ----------------------------------------------------------------------------- user text


def test_text_folder_splits_whole_files_by_path_hash(text_folder, tmp_path):
    corpus = load_corpus(str(text_folder), "bytes", cache_dir=tmp_path / "cache")
    tok = get_tokenizer("bytes")
    train_docs = tok.decode(corpus.train).split("<|endoftext|>")
    test_docs = tok.decode(corpus.test).split("<|endoftext|>")
    assert len(train_docs) + len(test_docs) == 12  # .py, hidden and empty files are skipped
    rels = sorted(p.relative_to(text_folder).as_posix() for p in text_folder.glob("[ab]/doc*"))
    expected_test = [r for r in rels if data._path_fraction(r) < 0.1] or [min(rels, key=data._path_fraction)]
    texts = {r: (text_folder / r).read_text() for r in rels}
    assert test_docs == [texts[r] for r in expected_test]
    assert train_docs == [texts[r] for r in rels if r not in expected_test]
    assert corpus.source == str(text_folder.resolve())


def test_single_text_file_splits_at_a_line_near_90_percent(tmp_path):
    text = "".join(f"line number {i}\n" for i in range(200))
    path = tmp_path / "book.txt"
    path.write_text(text)
    corpus = load_corpus(str(path), "bytes", cache_dir=tmp_path / "cache")
    tok = get_tokenizer("bytes")
    head, tail = tok.decode(corpus.train), tok.decode(corpus.test)
    assert head + "\n" + tail == text
    assert tail.startswith("line number ") and not head.endswith("\n")
    assert 0.08 < len(tail) / len(text) < 0.12


def test_text_without_newlines_is_split_at_90_percent():
    assert data.split_text_at_line("x" * 100) == ("x" * 90, "x" * 10)


# ----------------------------------------------------------------------------- nanoGPT shards


def _write_shards(folder, train, test, test_name="val.bin"):
    folder.mkdir(parents=True, exist_ok=True)
    np.asarray(train, dtype=np.uint16).tofile(folder / "train.bin")
    np.asarray(test, dtype=np.uint16).tofile(folder / test_name)


def test_nanogpt_shard_folder(tmp_path):
    rng = np.random.default_rng(0)
    train, val = rng.integers(0, 50257, 5000), rng.integers(0, 50257, 600)
    folder = tmp_path / "fineweb"
    _write_shards(folder, train, val)
    cache = tmp_path / "cache"
    corpus = load_corpus(str(folder), "gpt2", cache_dir=cache)
    assert np.array_equal(corpus.train, train) and np.array_equal(corpus.test, val)
    assert corpus.test_set_id == hashlib.sha256(np.asarray(val, dtype="<u2").tobytes()).hexdigest()[:16]
    (manifest_path,) = (cache / "shards").glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert manifest["shards"]["test"]["tokens"] == 600
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_corpus(str(folder), "gpt2", cache_dir=cache).test_set_id == corpus.test_set_id

    # a changed shard is noticed (size/mtime) and re-hashed
    val2 = val.copy()
    val2[0] = (val2[0] + 1) % 50257
    np.asarray(val2, dtype=np.uint16).tofile(folder / "val.bin")
    os.utime(folder / "val.bin", ns=(1, 1))
    with pytest.warns(CacheWarning, match="re-hashing"):
        changed = load_corpus(str(folder), "gpt2", cache_dir=cache)
    assert changed.test_set_id != corpus.test_set_id

    # test.bin wins over val.bin
    np.asarray(val[:100], dtype=np.uint16).tofile(folder / "test.bin")
    assert len(load_corpus(str(folder), "gpt2", cache_dir=cache).test) == 100


def test_garbled_shard_manifest_is_rehashed_with_a_warning(tmp_path):
    folder = tmp_path / "shards"
    _write_shards(folder, range(100), range(10))
    cache = tmp_path / "cache"
    first = load_corpus(str(folder), "bytes", cache_dir=cache)
    (manifest_path,) = (cache / "shards").glob("*/manifest.json")
    manifest_path.write_text("not json")
    with pytest.warns(CacheWarning, match="unreadable"):
        assert load_corpus(str(folder), "bytes", cache_dir=cache).test_set_id == first.test_set_id


def test_bad_shards_raise_user_errors(tmp_path):
    odd = tmp_path / "odd"
    _write_shards(odd, range(10), range(10))
    with open(odd / "train.bin", "ab") as f:
        f.write(b"\x00")
    with pytest.raises(UserError, match="even"):
        load_corpus(str(odd), "gpt2", cache_dir=tmp_path / "c")

    big = tmp_path / "big"
    _write_shards(big, [1, 2, 300], [1, 2])
    with pytest.raises(UserError, match="token id 300.*vocab_size 257"):
        load_corpus(str(big), "bytes", cache_dir=tmp_path / "c")

    lonely = tmp_path / "lonely"
    lonely.mkdir()
    np.arange(10, dtype=np.uint16).tofile(lonely / "train.bin")
    with pytest.raises(UserError, match="test.bin nor val.bin"):
        load_corpus(str(lonely), "gpt2", cache_dir=tmp_path / "c")
    with pytest.raises(UserError, match="single .bin file"):
        load_corpus(str(lonely / "train.bin"), "gpt2", cache_dir=tmp_path / "c")


# ----------------------------------------------------------------------------- bad inputs


def test_bad_sources_raise_user_errors(tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(UserError, match="does not exist.*shakespeare"):
        load_corpus(str(tmp_path / "nope"), "bytes", cache_dir=cache)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no non-empty text"):
        load_corpus(str(tmp_path / "empty"), "bytes", cache_dir=cache)
    (tmp_path / "blank.txt").write_text("\n\n   \n")
    with pytest.raises(UserError, match="no non-empty text"):
        load_corpus(str(tmp_path / "blank.txt"), "bytes", cache_dir=cache)
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1") * 20)
    with pytest.raises(UserError, match="not UTF-8"):
        load_corpus(str(tmp_path / "latin1.txt"), "bytes", cache_dir=cache)
    (tmp_path / "tiny.txt").write_text("x")
    with pytest.raises(UserError, match="too short"):
        load_corpus(str(tmp_path / "tiny.txt"), "bytes", cache_dir=cache)
    with pytest.raises(UserError, match="unknown tokenizer"):
        load_corpus("shakespeare", "sentencepiece", cache_dir=cache)


# ----------------------------------------------------------------------------- batch order


TOKENS = np.arange(10 * 8 + 3, dtype=np.uint16)  # 10 windows of T=8, plus a short tail


def _all_rows(sampler, step, global_batch, world_size, micro_batch):
    per_rank = global_batch // world_size
    xs = [
        sampler.batch(step, BatchShape.of(global_batch, world_size, micro_batch), rank, m)[0]
        for rank in range(world_size)
        for m in range(per_rank // micro_batch)
    ]
    return torch.cat(xs)


def test_batch_is_a_pure_function_of_seed_and_step():
    a, b = BatchSampler(TOKENS, 8, data_seed=3), BatchSampler(TOKENS, 8, data_seed=3)
    for _ in range(3):  # b jumps around; a goes in order: same answers
        b.batch(7, BatchShape.of(4, 1, 4), 0, 0)
    for step in (0, 5, 2):
        xa, ya = a.batch(step, BatchShape.of(4, 1, 2), 0, 1)
        xb, yb = b.batch(step, BatchShape.of(4, 1, 2), 0, 1)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    x, y = a.batch(0, BatchShape.of(4, 1, 4), 0, 0)
    assert x.dtype == torch.int64 and x.shape == (4, 8)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(x[:, 0] % 8, torch.zeros(4, dtype=torch.int64))
    c = BatchSampler(TOKENS, 8, data_seed=4)
    assert not all(torch.equal(a.batch(s, BatchShape.of(4, 1, 4), 0, 0)[0], c.batch(s, BatchShape.of(4, 1, 4), 0, 0)[0]) for s in range(3))


def test_unshuffled_order_is_the_fixed_sequential_order():
    s = BatchSampler(TOKENS, 8, data_seed=0, shuffle=False)
    x, y = s.batch(1, BatchShape.of(3, 1, 3), 0, 0)
    assert x[:, 0].tolist() == [24, 32, 40]
    assert torch.equal(y, x + 1)


def test_rank_and_micro_step_slicing_is_layout_independent():
    s = BatchSampler(TOKENS, 8, data_seed=11)
    for step in range(6):  # crosses epoch boundaries (10 windows, 4 per step)
        one_proc = _all_rows(s, step, 4, world_size=1, micro_batch=2)
        two_proc = _all_rows(s, step, 4, world_size=2, micro_batch=2)
        four_proc = _all_rows(s, step, 4, world_size=4, micro_batch=1)
        whole = s.batch(step, BatchShape.of(4, 1, 4), 0, 0)[0]
        assert torch.equal(one_proc, two_proc) and torch.equal(one_proc, four_proc)
        assert torch.equal(one_proc, whole)


def test_epochs_wrap_deterministically():
    s = BatchSampler(TOKENS, 8, data_seed=5)
    starts = torch.cat([s.batch(step, BatchShape.of(5, 1, 5), 0, 0)[0][:, 0] for step in range(6)]).tolist()
    epochs = [sorted(starts[i : i + 10]) for i in range(0, 30, 10)]
    assert all(e == list(range(0, 80, 8)) for e in epochs)  # each epoch visits every window once
    assert starts[:10] != starts[10:20]  # epochs are reshuffled
    fresh = BatchSampler(TOKENS, 8, data_seed=5)
    assert fresh.batch(4, BatchShape.of(5, 1, 5), 0, 0)[0][:, 0].tolist() == starts[20:25]
    across = BatchSampler(TOKENS, 8, data_seed=5).batch(2, BatchShape.of(4, 1, 4), 0, 0)[0][:, 0].tolist()
    assert across == starts[8:12]  # a batch straddling the epoch boundary


def test_batch_layout_errors():
    s = BatchSampler(TOKENS, 8, data_seed=0)
    with pytest.raises(UserError, match=r"6 sequences cannot be split evenly over 4 processes; valid process "
                                        r"counts \(--nproc x --nnodes\): 1, 2, 3, 6$"):
        BatchShape.of(6, 4, 1)
    assert BatchShape.of(6, 2, 2) == BatchShape(6, 2, 1)  # the micro-batch adapts to the share: 3 -> 1
    assert BatchShape.of(96, 1, 12).accum == 8 and BatchShape.of(96, 8, 12).accum == 1
    assert BatchShape.of(96, 3, 12).micro_batch == 8  # the largest divisor of 32 up to 12
    with pytest.raises(ValueError, match="micro_step"):
        s.batch(0, BatchShape.of(4, 1, 2), 0, 2)
    with pytest.raises(ValueError, match="rank"):
        s.batch(0, BatchShape.of(4, 2, 2), 2, 0)
    with pytest.raises(UserError, match="fewer than context_length"):
        BatchSampler(np.arange(8, dtype=np.uint16), 8, data_seed=0)


def test_epochs_needed_and_repeat_guard():
    assert n_windows(83, 8) == 10
    assert epochs_needed(80, 83, 8) == 1.0
    assert epochs_needed(200, 83, 8) == 2.5
    assert check_epochs(80, 83, 8, allow_repeat=False) == 1.0
    assert check_epochs(200, 83, 8, allow_repeat=True) == 2.5
    with pytest.raises(UserError, match=r"2\.50 epochs.*--set allow_repeat=true"):
        check_epochs(200, 83, 8, allow_repeat=False)


# ----------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize("length", [2, 9, 17, 83, 81])
def test_eval_batches_cover_every_target_once(length):
    tokens = np.arange(length, dtype=np.uint16)
    batches = list(eval_batches(tokens, 8, batch_size=3))
    ys = torch.cat([y.reshape(-1) for _, y in batches])
    xs = torch.cat([x.reshape(-1) for x, _ in batches])
    assert ys.tolist() == list(range(1, length))
    assert xs.tolist() == list(range(0, length - 1))
    full, tail = divmod(length - 1, 8)
    assert [tuple(x.shape) for x, _ in batches if x.shape[1] == 8] == [
        (min(3, full - i), 8) for i in range(0, full, 3)
    ]
    if tail:
        assert tuple(batches[-1][0].shape) == (1, tail)
    assert all(x.dtype == torch.int64 and x.shape == y.shape for x, y in batches)
