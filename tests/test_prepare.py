"""`harness data prepare`: local JSONL/Parquet/text through `datasets` (the hub's code path),
the same bytes without it, the held-out test documents, resuming, bad input, and training on it."""

from __future__ import annotations

import hashlib
import json
import os
import random

import numpy as np
import pandas as pd
import pytest
from rich.console import Console

from conftest import cli, invoke
from harness.data import prepare as prep
from harness.data.corpus import load_corpus
from harness.core.errors import UserError
from harness.data.prepare import Source, check_tokenizer, prepare
from harness.data.tokenizers import get_tokenizer

try:
    import datasets  # noqa: F401
    HAVE_DATASETS = True
except ImportError:
    HAVE_DATASETS = False
needs_datasets = pytest.mark.skipif(not HAVE_DATASETS, reason="needs the datasets library (harness[hf])")
BOTH = [pytest.param(True, id="datasets", marks=needs_datasets), pytest.param(False, id="plain")]

WORDS = "the of and to in is was that for on it with as by at from whence thou art".split()


def make_docs(n: int = 120, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    docs = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 40))) for _ in range(n)]
    docs[5] = ""  # an empty record is skipped
    docs[7] = "naïve café — 日本語"
    return docs


@pytest.fixture(scope="module")
def jsonl(tmp_path_factory):
    path = tmp_path_factory.mktemp("src") / "docs.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for i, d in enumerate(make_docs()):
            f.write(json.dumps({"id": i, "text": d, "body": i}) + "\n")
    return path


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"))


def shard(folder, split) -> np.ndarray:
    return np.fromfile(folder / f"{split}.bin", dtype="<u2")


def expected_splits(docs: list[str], tokenizer: str, test_tokens: int) -> dict[str, np.ndarray]:
    """The spec: whole documents in order, eot between documents, test first until >= test_tokens."""
    tok = get_tokenizer(tokenizer)
    out: dict[str, list[int]] = {"test": [], "train": []}
    for d in docs:
        if not d:
            continue
        split = "test" if len(out["test"]) < test_tokens else "train"
        if out[split]:
            out[split].append(tok.eot_id)
        out[split] += tok.encode(d)
    return {k: np.array(v, dtype=np.uint16) for k, v in out.items()}


@pytest.mark.parametrize("use_datasets", BOTH)
def test_jsonl_shards_manifest_and_test_documents(tmp_path, jsonl, use_datasets):
    out = tmp_path / "out"
    manifest = prepare(Source.local([jsonl]), out, "gpt2", test_tokens=300, console=quiet(), use_datasets=use_datasets)
    want = expected_splits(make_docs(), "gpt2", 300)
    for split in ("test", "train"):
        got = shard(out, split)
        assert np.array_equal(got, want[split])
        info = manifest["shards"][split]
        assert info["tokens"] == len(got) and info["sha256"] == hashlib.sha256(got.tobytes()).hexdigest()
    assert manifest["shards"]["test"]["tokens"] >= 300
    assert manifest["shards"]["test"]["documents"] + manifest["shards"]["train"]["documents"] == 119
    assert manifest["empty_documents_skipped"] == 1 and manifest["documents_read"] == 120
    assert manifest["tokenizer"] == {"name": "gpt2", "vocab_size": 50257, "eot_id": 50256}
    assert json.loads((out / "manifest.json").read_text()) == manifest
    assert not (out / ".prepare-state.json").exists() and not list(out.glob("*.partial"))
    corpus = load_corpus(str(out), "gpt2")  # the shard folder trains as is
    assert np.array_equal(corpus.test, want["test"]) and len(corpus.train) == len(want["train"])
    again = prepare(Source.local([jsonl]), out, "gpt2", test_tokens=300, console=quiet(), use_datasets=use_datasets)
    assert again == manifest  # same options: nothing to do


@needs_datasets
def test_parquet_text_and_a_train_budget(tmp_path):
    docs = [d for d in make_docs(60, seed=1) if d]
    pd.DataFrame({"content": docs, "n": range(len(docs))}).to_parquet(tmp_path / "part-0.parquet")
    a = prepare(Source.local([tmp_path / "part-0.parquet"], field="content"), tmp_path / "pq", "bytes",
                test_tokens=200, train_tokens=500, console=quiet())
    b = prepare(Source.local([tmp_path / "part-0.parquet"], field="content"), tmp_path / "pq-plain", "bytes",
                test_tokens=200, train_tokens=500, console=quiet(), use_datasets=False)
    assert a["shards"] == b["shards"]
    assert 500 <= a["shards"]["train"]["tokens"] < 500 + 300  # whole documents past the budget
    assert shard(tmp_path / "pq", "test").max() == 256 and a["tokenizer"]["eot_id"] == 256
    texts = tmp_path / "texts"
    (texts / "sub").mkdir(parents=True)
    for i, d in enumerate(docs[:30]):
        (texts / "sub" / f"{i:03d}.txt").write_text(d + "\n", encoding="utf-8")
    (texts / ".hidden.txt").write_text("never read")
    m = prepare(Source.local([texts]), tmp_path / "tx", "bytes", test_tokens=100, console=quiet())
    assert m["shards"]["test"]["documents"] + m["shards"]["train"]["documents"] == 30
    plain = prepare(Source.local([texts]), tmp_path / "tx-plain", "bytes", test_tokens=100, console=quiet(),
                    use_datasets=False)
    assert plain["shards"] == m["shards"]


@pytest.mark.parametrize("use_datasets", BOTH)
def test_an_interrupted_preparation_resumes_to_identical_shards(tmp_path, jsonl, monkeypatch, use_datasets):
    monkeypatch.setattr(prep, "BATCH_DOCS", 8)
    straight = prepare(Source.local([jsonl]), tmp_path / "straight", "gpt2", test_tokens=300, console=quiet(),
                       use_datasets=use_datasets)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        prepare(Source.local([jsonl]), out, "gpt2", test_tokens=300, console=quiet(), use_datasets=use_datasets,
                checkpoint_every_s=0, stop_after_docs=61)
    state = json.loads((out / ".prepare-state.json").read_text())
    assert state["docs"] == 56 and not (out / "train.bin").exists()
    check = pytest.raises(UserError, match="unfinished")
    with check:
        check_tokenizer(str(out), "gpt2")
    with (out / "train.bin.partial").open("ab") as f:  # a crash after the last state save leaves extra bytes
        f.write(b"\x01\x02\x03\x04")
    resumed = prepare(Source.local([jsonl]), out, "gpt2", test_tokens=300, console=quiet(), use_datasets=use_datasets)
    assert resumed["shards"] == straight["shards"]
    for split in ("test", "train"):
        assert (out / f"{split}.bin").read_bytes() == (tmp_path / "straight" / f"{split}.bin").read_bytes()


@needs_datasets
def test_bad_local_input_is_a_user_error(tmp_path, jsonl):
    with pytest.raises(UserError, match="has no field 'content'.*id, text, body"):
        prepare(Source.local([jsonl], field="content"), tmp_path / "a", "gpt2", test_tokens=10, console=quiet())
    with pytest.raises(UserError, match="has no field 'content'"):
        prepare(Source.local([jsonl], field="content"), tmp_path / "b", "gpt2", test_tokens=10, console=quiet(),
                use_datasets=False)
    with pytest.raises(UserError, match="holds int, not text"):
        prepare(Source.local([jsonl], field="body"), tmp_path / "c", "gpt2", test_tokens=10, console=quiet())
    with pytest.raises(UserError, match="does not exist"):
        Source.local([tmp_path / "nope.jsonl"])
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.txt").write_text("x")
    (tmp_path / "mixed" / "b.jsonl").write_text('{"text": "y"}\n')
    with pytest.raises(UserError, match="mixes file kinds"):
        Source.local([tmp_path / "mixed"])
    with pytest.raises(UserError, match="needs more than --test-tokens"):
        prepare(Source.local([jsonl]), tmp_path / "d", "gpt2", test_tokens=10**7, console=quiet())
    prepare(Source.local([jsonl]), tmp_path / "e", "gpt2", test_tokens=100, console=quiet())
    with pytest.raises(UserError, match="other options; use --overwrite"):
        prepare(Source.local([jsonl]), tmp_path / "e", "gpt2", test_tokens=200, console=quiet())
    m = prepare(Source.local([jsonl]), tmp_path / "e", "gpt2", test_tokens=200, console=quiet(), overwrite=True)
    assert m["options"]["test_tokens"] == 200


def test_tokenizer_mismatch_is_caught(tmp_path, jsonl):
    prepare(Source.local([jsonl]), tmp_path / "b", "bytes", test_tokens=300, console=quiet())
    check_tokenizer(str(tmp_path / "b"), "bytes")
    check_tokenizer("shakespeare", "gpt2")  # anything else is load_corpus's business
    with pytest.raises(UserError, match="prepared with tokenizer 'bytes' but the run uses 'gpt2'"):
        check_tokenizer(str(tmp_path / "b"), "gpt2")


def test_cli_prepares_and_trains_on_the_shards(tmp_path, jsonl):
    data = tmp_path / "prepared"
    out = cli("data", "prepare", str(jsonl), "--tokenizer", "bytes", "--test-tokens", "1000", "--out", str(data),
              check=True)
    assert "prepared" in out.stdout and (data / "manifest.json").exists()
    manifest = json.loads((data / "manifest.json").read_text())
    results = tmp_path / "results"
    cli("run", "--preset", "micro", "--tokens", "1500", "--data", str(data), "--results", str(results), check=True)
    row = pd.read_parquet(results / "runs.parquet").iloc[0]
    assert row["status"] == "completed" and json.loads(row["config"])["train"]["data"] == str(data)
    assert row["test_tokens"] == manifest["shards"]["test"]["tokens"] - 1
    bad = cli("run", "--preset", "micro", "--set", "tokenizer=gpt2", "--set", "vocab_size=50257", "--data", str(data),
              "--results", str(results))
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "prepared with tokenizer 'bytes' but the run uses 'gpt2'" in bad.stderr



@pytest.mark.parametrize("args, message", [
    (["{jsonl}", "--field", "content"], "has no field 'content'"),
    (["{jsonl}"], "give the output folder with --out"),
    (["{jsonl}", "--hf", "x/y", "--out", "{out}"], "not both"),
    (["{jsonl}", "--tokenizer", "nope", "--out", "{out}"], "unknown tokenizer 'nope'"),
    (["{jsonl}", "--test-tokens", "1", "--out", "{out}"], "--test-tokens must be >= 2"),
])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, jsonl, args, message):
    args = [a.format(jsonl=jsonl, out=tmp_path / "o") for a in args]
    if "--out" not in args and "give the output" not in message:
        args += ["--out", str(tmp_path / "o")]
    code, _, err = invoke("data", "prepare", *args)
    assert code == 2 and message in err and err.count("\n") == 1, err


@needs_datasets
def test_cli_a_dataset_that_does_not_exist_is_one_line_and_exit_2(tmp_path):
    env = os.environ.copy()
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")  # no hub here: fail at once, not after retries
    try:
        proc = cli("data", "prepare", "--hf", "no-such-org/no-such-dataset", "--name", "sample-10BT",
                   "--out", str(tmp_path / "o"), timeout=120)
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "cannot open dataset no-such-org/no-such-dataset (sample-10BT)" in proc.stderr
