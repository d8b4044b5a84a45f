"""`harness data prepare`: tokenize a dataset into uint16 shards that training memory-maps.

Sources
  --hf NAME [--name CONFIG] [--split S]   a Hugging Face dataset, read with the `datasets` library
                                          in streaming mode (nothing is downloaded up front)
  PATH...                                 local files or folders: JSON lines (.jsonl/.json), Parquet
                                          (.parquet) or plain text (.txt/.md, one document per file),
                                          all of one kind. They go through the very same code:
                                          datasets.load_dataset("json"/"parquet"/"text", data_files=...,
                                          streaming=True). Without `datasets` installed, local files
                                          are read by equivalent plain readers (same documents, same
                                          order, same bytes out).
Every document is the string in --field (default "text"); empty documents are skipped.

Output folder (a "shard folder" that harness.data.corpus.load_corpus reads as is):
  test.bin    the held-out test set: the FIRST whole documents of the stream, taken until they
              hold at least --test-tokens tokens (default 19,660,800, as the seed author)
  train.bin   every later document (or until --train-tokens, whole documents)
  manifest.json  format "harness-prepared": token and document counts and sha256 of each shard,
              the tokenizer (name, vocab_size, eot_id), the source and the options
Both shards are little-endian uint16 arrays with the tokenizer's <|endoftext|> id between
consecutive documents of a split, as harness.data.corpus joins documents: those ids are the
document boundaries (the final evaluation's per-document sums find them there,
harness.data.batches.evaluation_units), so the manifest keeps the counts, not the offsets.

Resuming: while it runs, the shards grow as train.bin.partial/test.bin.partial beside
.prepare-state.json, which is rewritten (after an fsync of the shards) every minute and on
Ctrl-C with the documents consumed, the tokens written and the `datasets` stream position.
Running the same command again truncates the partial shards to the recorded lengths and goes on
from that position; the result is byte-identical to an uninterrupted preparation. The final
shards appear (renamed) only when the preparation is complete.

One module, on purpose: streaming, resumable shard writing and its progress display are one
pipeline with one resume state; the token-shard format itself is harness.data.shards.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from filelock import FileLock, Timeout
from rich.console import Console

from harness.core.errors import UserError
from harness.core.files import atomic_write_json, user_path
from harness.data.shards import MANIFEST, PREPARED_FORMAT, SHARD_DTYPE, open_shard, read_prepared_manifest
from harness.data.shards import digest as shard_digest
from harness.data.tokenizers import Tokenizer, get_tokenizer

FORMAT_VERSION = 1
DEFAULT_TEST_TOKENS = 19_660_800
STATE = ".prepare-state.json"
SPLITS = ("test", "train")  # the order the stream fills them in
BUILDERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".txt": "text", ".md": "text"}
BATCH_DOCS = 1024


@dataclass(frozen=True)
class Source:
    """Where documents come from: a Hugging Face dataset, or local files of one kind."""

    kind: str  # "hf" | "local"
    name: str = ""  # hub dataset id
    config: str | None = None
    split: str = "train"
    revision: str | None = None
    builder: str = ""  # local: json | parquet | text
    files: tuple[str, ...] = ()  # local: absolute paths, sorted
    field: str = "text"

    @classmethod
    def hub(cls, name: str, config: str | None = None, split: str = "train", revision: str | None = None,
            field: str = "text") -> "Source":
        if not name or name.startswith("/") or name.count("/") > 1:
            raise UserError(f"--hf {name!r}: expected a Hugging Face dataset id such as HuggingFaceFW/fineweb")
        return cls("hf", name=name, config=config, split=split, revision=revision, field=field)

    @classmethod
    def local(cls, paths: list[Path], field: str = "text") -> "Source":
        files: list[Path] = []
        for path in paths:
            path = user_path(path)
            if not path.exists():
                raise UserError(f"{str(path)!r} does not exist; give JSONL, Parquet or text files, "
                                "or folders holding them")
            if path.is_file():
                files.append(path.resolve())
                continue
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in BUILDERS
                           and not any(part.startswith(".") for part in p.relative_to(path).parts))
            if not found:
                raise UserError(f"folder {str(path)!r} holds no .jsonl/.json/.parquet/.txt/.md files")
            files += [p.resolve() for p in found]
        if not files:
            raise UserError("no input: give local files (PATH...) or a Hugging Face dataset (--hf NAME)")
        kinds = {}
        for f in files:
            builder = BUILDERS.get(f.suffix.lower())
            if builder is None:
                raise UserError(f"{str(f)!r}: unsupported file type {f.suffix!r}; use .jsonl/.json, "
                                ".parquet, or .txt/.md")
            kinds.setdefault(builder, f)
        if len(kinds) > 1:
            examples = ", ".join(f"{b} ({p.name})" for b, p in kinds.items())
            raise UserError(f"the input mixes file kinds: {examples}; prepare one kind at a time")
        builder = next(iter(kinds))
        if builder != "text":  # an empty text file is an empty document; an empty JSON or Parquet file is no input
            empty = [f for f in files if f.stat().st_size == 0]
            if empty:
                raise UserError(f"{str(empty[0])!r} is empty: it holds no {builder} records")
        unique = tuple(dict.fromkeys(str(f) for f in files))
        return cls("local", builder=builder, files=unique, field="text" if builder == "text" else field)

    def describe(self) -> str:
        if self.kind == "hf":
            return self.name + (f" ({self.config})" if self.config else "") + f" split {self.split}"
        first = Path(self.files[0]).name
        more = f" and {len(self.files) - 1} more" if len(self.files) > 1 else ""
        return f"{self.builder} files {first}{more}"

    def identity(self) -> dict[str, Any]:
        """What the output depends on (resume refuses a different one)."""
        ident = asdict(self)
        if self.kind == "local":
            ident["files"] = [[f, os.path.getsize(f)] for f in self.files]
        return ident


# ----------------------------------------------------------------------------- document streams


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return (text[0] if text else type(err).__name__)[:300]


def _import_datasets():
    try:
        import datasets
    except ImportError:
        return None
    return datasets


class DocumentStream:
    """Documents of a source, in a fixed order, resumable from `position()`."""

    def __init__(self, source: Source, use_datasets: bool | None = None):
        self.source = source
        self.datasets = _import_datasets() if use_datasets in (None, True) else None
        if use_datasets and self.datasets is None:
            raise UserError("reading datasets needs the `datasets` library: pip install 'harness[hf]'")
        if source.kind == "hf" and self.datasets is None:
            raise UserError("--hf needs the `datasets` library: pip install 'harness[hf]'")
        self._ds = None
        self._consumed = 0
        self.total_docs: int | None = None

    # -- through `datasets` (the hub and local files alike)
    def _open_dataset(self):
        ds_lib, src = self.datasets, self.source
        try:
            if src.kind == "hf":
                ds = ds_lib.load_dataset(src.name, src.config, split=src.split, streaming=True,
                                         revision=src.revision)
            else:
                extra = {"sample_by": "document"} if src.builder == "text" else {}
                ds = ds_lib.load_dataset(src.builder, data_files=list(src.files), split="train",
                                         streaming=True, **extra)
        except Exception as err:  # noqa: BLE001 - the library raises many kinds; each is bad input here
            raise UserError(f"cannot open dataset {src.describe()}: {_first_line(err)}") from None
        features = getattr(ds, "features", None)
        if features is not None and src.field not in features:
            raise UserError(f"dataset {src.describe()} has no field {src.field!r}; its fields are "
                            f"{', '.join(features) or 'none'}; choose one with --field")
        try:
            splits = ds.info.splits
            if splits and src.split in splits and splits[src.split].num_examples:
                self.total_docs = int(splits[src.split].num_examples)
        except (AttributeError, KeyError, TypeError):
            pass
        return ds

    def open(self, docs_done: int = 0, datasets_state: dict | None = None) -> Iterator[Any]:
        """Raw values of the text field, starting after `docs_done` documents."""
        self._consumed = docs_done
        if self.datasets is not None:
            ds = self._open_dataset()
            if datasets_state is not None:
                ds.load_state_dict(datasets_state)
            elif docs_done:
                ds = ds.skip(docs_done)
            self._ds = ds
            return self._wrap((row.get(self.source.field, _MISSING) if isinstance(row, dict) else _MISSING)
                              for row in ds)
        return self._wrap(itertools.islice(self._plain_values(), docs_done, None))

    def _wrap(self, values: Iterator[Any]) -> Iterator[Any]:
        try:
            for value in values:
                self._consumed += 1
                yield value
        except UserError:
            raise
        except Exception as err:  # noqa: BLE001
            raise UserError(f"reading {self.source.describe()} failed after {self._consumed:,} documents: "
                            f"{_first_line(err)}") from None

    def position(self) -> dict[str, Any] | None:
        """The `datasets` stream position right after the last document handed out."""
        if self._ds is None:
            return None
        try:
            return json.loads(json.dumps(self._ds.state_dict()))
        except (AttributeError, TypeError, ValueError):
            return None

    # -- the same documents without `datasets` (local files only)
    def _plain_values(self) -> Iterator[Any]:
        src = self.source
        for name in src.files:
            path = Path(name)
            if src.builder == "text":
                yield path.read_bytes().decode("utf-8")
            elif src.builder == "parquet":
                import pyarrow.parquet as pq

                pf = pq.ParquetFile(path)
                if src.field not in pf.schema_arrow.names:
                    raise UserError(f"dataset {src.describe()} has no field {src.field!r}; its fields are "
                                    f"{', '.join(pf.schema_arrow.names)}; choose one with --field")
                for batch in pf.iter_batches(columns=[src.field]):
                    yield from batch.column(0).to_pylist()
            else:
                yield from _json_values(path, src)


_MISSING = object()


def _json_values(path: Path, src: Source) -> Iterator[Any]:
    with path.open("r", encoding="utf-8") as f:
        head = f.read(1)
        while head and head.isspace():
            head = f.read(1)
        f.seek(0)
        if head == "[":
            rows = json.load(f)
        else:
            rows = (json.loads(line) for line in f if line.strip())
        for row in rows:
            yield row.get(src.field, _MISSING) if isinstance(row, dict) else _MISSING


# ----------------------------------------------------------------------------- preparation


@dataclass
class _State:
    options: dict[str, Any]
    docs: int = 0  # documents consumed from the stream
    skipped: int = 0  # empty documents among them
    tokens: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    documents: dict[str, int] = field(default_factory=lambda: {s: 0 for s in SPLITS})
    datasets_state: dict | None = None
    done: bool = False  # the stream ended or the train budget is reached

    def save(self, out: Path) -> None:
        atomic_write_json(out / STATE, asdict(self))

    @classmethod
    def load(cls, out: Path) -> "_State | None":
        try:
            return cls(**json.loads((out / STATE).read_text()))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as err:
            raise UserError(f"{out / STATE} is unreadable ({err}); start again with --overwrite") from None


def _partial(out: Path, split: str) -> Path:
    return out / f"{split}.bin.partial"


def _options(source: Source, tok: Tokenizer, test_tokens: int, train_tokens: int | None) -> dict[str, Any]:
    return {"source": source.identity(), "tokenizer": tok.name, "test_tokens": test_tokens,
            "train_tokens": train_tokens, "format_version": FORMAT_VERSION}


def prepare(source: Source, out: Path, tokenizer: str = "gpt2", test_tokens: int = DEFAULT_TEST_TOKENS,
            train_tokens: int | None = None, overwrite: bool = False, console: Console | None = None,
            use_datasets: bool | None = None, checkpoint_every_s: float = 60.0,
            stop_after_docs: int | None = None) -> dict[str, Any]:
    """Prepare (or resume, or confirm) the shard folder `out`; returns its manifest.

    stop_after_docs (for tests) raises KeyboardInterrupt once that many documents are consumed,
    exactly as Ctrl-C would, after saving the resume state."""
    console = console or Console(stderr=True)
    tok = get_tokenizer(tokenizer)
    if test_tokens < 2:
        raise UserError(f"--test-tokens must be >= 2, got {test_tokens}")
    if train_tokens is not None and train_tokens < 2:
        raise UserError(f"--train-tokens must be >= 2, got {train_tokens}")
    out = user_path(out)
    from harness.store.outputs import guard_destination

    guard_destination(out, "--out", {f"the input {Path(f).name}": Path(f) for f in source.files})
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a folder")
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {str(out)!r}: {err.strerror}") from None
    try:
        return _prepare(source, out, tok, test_tokens, train_tokens, overwrite, console, use_datasets,
                        checkpoint_every_s, stop_after_docs)
    except UserError:
        if created:  # a failed preparation leaves no folder it made (an interrupted one keeps its resume state)
            shutil.rmtree(out, ignore_errors=True)
        raise


def _prepare(source, out, tok, test_tokens, train_tokens, overwrite, console, use_datasets, checkpoint_every_s,
             stop_after_docs) -> dict[str, Any]:
    options = _options(source, tok, test_tokens, train_tokens)
    lock = FileLock(str(out / ".prepare.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise UserError(f"another `harness data prepare` is writing {str(out)!r}") from None
    try:
        manifest = read_prepared_manifest(out)
        if manifest is not None and not overwrite:
            if manifest.get("options") == options and all((out / f"{s}.bin").exists() for s in SPLITS):
                console.print(f"{out} is already prepared with these options (nothing to do)")
                return manifest
            raise UserError(f"{str(out)!r} already holds data prepared with other options; "
                            "use --overwrite to replace it, or another --out")
        if manifest is None and not overwrite and any((out / f).exists() for f in ("train.bin", "test.bin", "val.bin")):
            raise UserError(f"{str(out)!r} holds shards that `harness data prepare` did not make; "
                            "use another --out (or --overwrite to replace them)")
        state = None if overwrite else _State.load(out)
        if state is not None and state.options != options:
            raise UserError(f"{str(out)!r} holds an unfinished preparation with other options; run the "
                            "command that started it to resume, or pass --overwrite to start again")
        if overwrite:
            for name in (MANIFEST, STATE, "train.bin", "test.bin", *(p.name for p in out.glob("*.bin.partial"))):
                (out / name).unlink(missing_ok=True)
        resumed = state is not None
        if state is None:
            state = _State(options)
            for split in SPLITS:
                _partial(out, split).write_bytes(b"")
            state.save(out)
        elif state.docs:
            console.print(f"resuming {out}: {state.docs:,} documents, "
                          f"{sum(state.tokens.values()):,} tokens already prepared")
        if not state.done:
            _fill(source, out, tok, state, test_tokens, train_tokens, console, use_datasets,
                  checkpoint_every_s, stop_after_docs, resumed)
        return _finalize(source, out, tok, state, console)
    finally:
        lock.release()


def _fill(source, out, tok, state: _State, test_tokens, train_tokens, console, use_datasets,
          checkpoint_every_s, stop_after_docs, resumed) -> None:
    """Stream documents into the partial shards until the stream ends or the train budget is met.
    Eleven parameters and about 80 lines on purpose: one loop that owns the open shard files and
    checkpoints them with the state, so that a kill at any document resumes exactly there."""
    files = {}
    for split in SPLITS:
        path = _partial(out, split)
        want = state.tokens[split] * SHARD_DTYPE.itemsize
        have = path.stat().st_size if path.exists() else -1
        if have < want:
            raise UserError(f"{path} is shorter than its recorded {state.tokens[split]:,} tokens; "
                            "start again with --overwrite")
        files[split] = path.open("r+b")
        files[split].truncate(want)
        files[split].seek(want)
    stream = DocumentStream(source, use_datasets)
    values = stream.open(state.docs, state.datasets_state)
    eot = np.array([tok.eot_id], dtype=SHARD_DTYPE)
    committed = json.loads(json.dumps(asdict(state)))
    last_save = time.monotonic()
    progress = _Progress(console, test_tokens, train_tokens, state, source.describe())

    def checkpoint() -> None:
        for f in files.values():
            f.flush()
            os.fsync(f.fileno())
        _State(**committed).save(out)

    try:
        with progress:
            while not state.done:
                batch = list(itertools.islice(values, BATCH_DOCS))
                if stop_after_docs is not None and state.docs + len(batch) > stop_after_docs:
                    raise KeyboardInterrupt
                if not batch:
                    state.done = True
                else:
                    texts = []
                    for value in batch:
                        if value is _MISSING or value is None:  # never dropped silently
                            raise UserError(f"dataset {source.describe()} has no field {source.field!r} in document "
                                            f"{state.docs + len(texts) + 1:,} (missing or null); fix the record, or "
                                            "choose the text field with --field")
                        if value is not None and not isinstance(value, str):
                            raise UserError(f"field {source.field!r} of {source.describe()} holds "
                                            f"{type(value).__name__}, not text; choose a text field with --field")
                        texts.append(value or "")
                    state.docs += len(batch)
                    for ids in tok.encode_batch([t for t in texts if t]):
                        split = "test" if state.tokens["test"] < test_tokens else "train"
                        if split == "train" and train_tokens is not None and state.tokens["train"] >= train_tokens:
                            state.done = True
                            break
                        if state.documents[split]:
                            files[split].write(eot.tobytes())
                            state.tokens[split] += 1
                        files[split].write(ids.astype(SHARD_DTYPE, copy=False).tobytes())
                        state.tokens[split] += len(ids)
                        state.documents[split] += 1
                    state.skipped += sum(1 for t in texts if not t)
                    if train_tokens is not None and state.tokens["train"] >= train_tokens:
                        state.done = True
                state.datasets_state = stream.position()
                committed = json.loads(json.dumps(asdict(state)))
                progress.update(state)
                if state.done or time.monotonic() - last_save >= checkpoint_every_s:
                    checkpoint()
                    last_save = time.monotonic()
    except KeyboardInterrupt:
        checkpoint()
        for f in files.values():
            f.close()
        console.print(f"interrupted after {committed['docs']:,} documents; run the same command again to resume")
        raise
    except BaseException:
        for f in files.values():
            f.close()
        raise
    for f in files.values():
        f.close()
    if not resumed and state.docs == 0:
        raise UserError(f"dataset {source.describe()} holds no documents")


def _finalize(source: Source, out: Path, tok: Tokenizer, state: _State, console: Console) -> dict[str, Any]:
    """Check the splits, hash and rename the shards, write the manifest, drop the state."""
    if state.tokens["train"] < 2:
        wanted = state.options["test_tokens"]
        if state.tokens["test"] < wanted:
            raise UserError(f"{source.describe()} holds only {state.tokens['test']:,} tokens; it needs more than "
                            f"--test-tokens ({wanted:,}) to leave a train split")
        raise UserError(f"{source.describe()} ran out right after the test set ({state.tokens['test']:,} tokens); "
                        "lower --test-tokens or use a larger dataset")
    shards = {}
    for split in SPLITS:
        final, partial = out / f"{split}.bin", _partial(out, split)
        if partial.exists():
            os.replace(partial, final)
        digest, top = shard_digest(open_shard(final))
        if final.stat().st_size != state.tokens[split] * SHARD_DTYPE.itemsize:
            raise UserError(f"{final} does not hold its recorded {state.tokens[split]:,} tokens; "
                            "start again with --overwrite")
        shards[split] = {"file": f"{split}.bin", "tokens": state.tokens[split], "documents": state.documents[split],
                         "sha256": digest, "max_token": top}
    manifest = {
        "format": PREPARED_FORMAT, "format_version": FORMAT_VERSION,
        "tokenizer": {"name": tok.name, "vocab_size": tok.vocab_size, "eot_id": tok.eot_id},
        "dtype": "uint16 little-endian", "separator": "eot id between consecutive documents of a split",
        "source": source.identity() | {"description": source.describe()},
        "test_set": "the first whole documents of the stream, until at least test_tokens tokens",
        "shards": shards, "documents_read": state.docs, "empty_documents_skipped": state.skipped,
        "options": state.options, "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    atomic_write_json(out / MANIFEST, manifest)
    (out / STATE).unlink(missing_ok=True)
    console.print(f"prepared {out}: test {shards['test']['tokens']:,} tokens ({shards['test']['documents']:,} "
                  f"documents), train {shards['train']['tokens']:,} tokens ({shards['train']['documents']:,} "
                  f"documents), tokenizer {tok.name}")
    return manifest


class _Progress:
    """A rich bar on a terminal; a plain line every 10 s otherwise."""

    def __init__(self, console: Console, test_tokens: int, train_tokens: int | None, state: _State, label: str):
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.console, self.label = console, label
        self.total = test_tokens + train_tokens if train_tokens is not None else None
        self.live = console.is_terminal
        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[detail]}"),
                             TimeElapsedColumn(), console=console, disable=not self.live)
        self._task = self._bar.add_task(f"tokenizing {label}", total=self.total, detail="")
        self._t0, self._tok0, self._last = time.monotonic(), sum(state.tokens.values()), 0.0

    def __enter__(self):
        self._bar.__enter__()
        return self

    def __exit__(self, *exc):
        self._bar.__exit__(*exc)

    def update(self, state: _State) -> None:
        tokens = sum(state.tokens.values())
        rate = (tokens - self._tok0) / max(time.monotonic() - self._t0, 1e-9)
        detail = (f"{state.docs:,} docs  test {state.tokens['test']:,}  train {state.tokens['train']:,} tokens  "
                  f"{rate:,.0f} tok/s")
        self._bar.update(self._task, completed=tokens, detail=detail)
        now = time.monotonic()
        if not self.live and (now - self._last >= 10.0 or state.done):
            self._last = now
            self.console.print(f"[{time.strftime('%H:%M:%S')}] {self.label}: {detail}", highlight=False)


# ----------------------------------------------------------------------------- training-side check


def check_tokenizer(data: str, tokenizer: str) -> None:
    """UserError when `data` is a prepared folder made with another tokenizer, or unfinished."""
    path = user_path(data)
    if not path.is_dir():
        return
    if (path / STATE).exists() and not (path / "train.bin").exists():
        raise UserError(f"{str(path)!r} is an unfinished `harness data prepare`; run it again to finish")
    manifest = read_prepared_manifest(path)
    if manifest is None:
        return
    made_with = (manifest.get("tokenizer") or {}).get("name")
    if made_with != tokenizer:
        raise UserError(f"{str(path)!r} was prepared with tokenizer {made_with!r} but the run uses "
                        f"{tokenizer!r}; pass --set tokenizer={made_with} (and a matching vocab_size) or "
                        f"prepare the data again with --tokenizer {tokenizer}")

