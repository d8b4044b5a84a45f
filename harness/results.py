"""The results store: one Parquet row per run attempt, loss curves in their own table.

Layout of a results folder:
  runs.parquet    one row per run attempt (columns: RUN_SCHEMA)
  curves.parquet  loss curves (columns: CURVE_SCHEMA)
  manifest.json   sha256 and row count of both tables, with a checksum of its own
  runs/<run_id>/  a run's working folder: spec.json, log.txt, checkpoint/, result.json, and
                  attempts/<n>.json: every recorded attempt's row and curve (the journal)
  quarantine/     tables (and manifests) that failed verification, moved aside, never deleted
Every write happens under a file lock, goes to a temporary file that is fsynced and then
atomically renamed over the old one, so a crash leaves either the old or the new table, and two
sweep processes on one folder never lose or duplicate a row. (run_id, attempt) is the row key.

Integrity: a row is first written to its run's journal, then to the tables, then the manifest
records the tables' new checksums (while the tables are being swapped it accepts the old and the
new ones, so a crash in between is not mistaken for corruption). Every read verifies the table's
bytes against the manifest; a table that is torn, bit-flipped or missing is moved to quarantine/
with a warning naming its path and rebuilt from the journals, so no recorded row is lost. A write
that fails (full or read-only disk) leaves the previous files intact and raises WriteError, a
UserError the CLI prints as one line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from harness.errors import UserError

RUN_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("attempt", pa.int64()), ("sweep", pa.string()), ("arm", pa.string()),
    ("interventions", pa.string()), ("seed", pa.int64()), ("init_seed", pa.int64()),
    ("data_seed", pa.int64()), ("dropout_seed", pa.int64()), ("preset", pa.string()),
    ("config", pa.string()), ("config_hash", pa.string()), ("overrides", pa.string()),
    ("params", pa.int64()), ("planned_tokens", pa.int64()), ("tokens_seen", pa.int64()),
    ("steps", pa.int64()), ("tokens_per_step", pa.int64()), ("world_size", pa.int64()),
    ("device", pa.string()), ("dtype", pa.string()), ("versions", pa.string()),
    ("git_commit", pa.string()), ("status", pa.string()), ("reason", pa.string()),
    ("diverged_step", pa.int64()), ("test_loss", pa.float64()), ("test_tokens", pa.int64()),
    ("test_set_id", pa.string()), ("train_loss", pa.float64()), ("wall_time_s", pa.float64()),
    ("tokens_per_s", pa.float64()), ("started_at", pa.string()), ("finished_at", pa.string()),
    ("run_dir", pa.string()),
])
CURVE_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("attempt", pa.int64()), ("step", pa.int64()), ("tokens", pa.int64()),
    ("train_loss", pa.float64()), ("lr", pa.float64()),
])
STATUSES = ("completed", "diverged", "failed")
RUNS, CURVES, MANIFEST = "runs.parquet", "curves.parquet", "manifest.json"
FORMAT = "harness-results"
ATTEMPTS = "attempts"  # runs/<run_id>/attempts/<attempt>.json: the journal
QUARANTINE = "quarantine"
LOCK_TIMEOUT = 600.0
_ATTEMPT_FILE = re.compile(r"^(\d+)\.json$")


class WriteError(UserError, OSError):
    """A write that failed (disk full, read-only, permissions); the previous file is unchanged."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "write failed"


def write_error(path: Path, err: OSError, what: str = "") -> WriteError:
    reason = err.strerror or str(err) or type(err).__name__
    out = WriteError(f"cannot write {path}: {reason}; {what or f'the previous {Path(path).name} is unchanged'}")
    out.errno, out.filename = err.errno, str(path)
    return out


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write-to-temp, fsync, rename, fsync the folder: readers see the old file or the new one, never
    a torn one, and the new one survives a power cut once this returns.

    An OSError (ENOSPC, EROFS, EACCES ...) becomes WriteError, after removing the temporary file."""
    path = Path(path)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
        fsync_dir(path.parent)
    except BaseException as err:
        if tmp is not None:
            try:
                Path(tmp).unlink(missing_ok=True)
            except OSError:
                pass
        if isinstance(err, OSError) and not isinstance(err, WriteError):
            raise write_error(path, err) from err
        raise


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB chunks (checkpoints, shards and tables can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fsync_dir(path: Path) -> None:
    """Make a rename into `path` durable; directories cannot be opened for fsync on Windows."""
    if os.name == "posix":
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, json.dumps(payload, indent=1, sort_keys=True, default=str).encode())


def _table_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    atomic_write_bytes(path, _table_bytes(table))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _manifest_check(tables: dict[str, Any]) -> str:
    return _sha256(json.dumps(tables, sort_keys=True, separators=(",", ":")).encode())


def _parse(data: bytes, schema: pa.Schema) -> pa.Table:
    # use_threads=False: with pyarrow 26, a threaded read of an in-memory buffer makes about one
    # process in twenty abort at exit ("terminate called without an active exception")
    return pq.read_table(pa.BufferReader(data), use_threads=False).select(schema.names).cast(schema)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")


class ResultsStore:
    def __init__(self, root: Path, warn: Callable[[str], None] | None = None):
        """warn: where verification warnings go (default: a 'warning: ...' line on stderr)."""
        self.root = Path(root)
        self.warn = warn
        self.runs_path = self.root / RUNS
        self.curves_path = self.root / CURVES
        self.manifest_path = self.root / MANIFEST
        self.warnings: list[str] = []  # what verification found and did, in this process
        self._lock: FileLock | None = None

    def ensure_writable(self) -> None:
        """Fail early, before any training, when the folder cannot take results."""
        try:
            (self.root / "runs").mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=self.root):
                pass
        except OSError as err:
            raise UserError(f"results folder {self.root} is not writable ({err.strerror}); "
                            "choose another with --results") from None

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    @contextmanager
    def locked(self) -> Iterator[None]:
        """The folder's write lock (re-entrant within this store object)."""
        try:
            if self._lock is None:
                self.root.mkdir(parents=True, exist_ok=True)
                self._lock = FileLock(str(self.root / ".lock"), timeout=LOCK_TIMEOUT)
            self._lock.acquire()
        except Timeout:
            raise UserError(f"results folder {self.root} has been locked by another process for "
                            f"{LOCK_TIMEOUT:g} s; is a stuck harness process holding {self.root / '.lock'}?") from None
        except OSError as err:
            raise write_error(self.root / ".lock", err, "nothing was changed") from err
        try:
            yield
        finally:
            self._lock.release()

    # ------------------------------------------------------------------ verified reads

    def runs(self) -> pa.Table:
        return self._table(RUNS)

    def runs_frame(self):
        return self.runs().to_pandas()

    def curves(self) -> pa.Table:
        return self._table(CURVES)

    def check(self, repair: bool = True) -> list[str]:
        """Verify both tables against the manifest (quarantining and rebuilding what fails) and
        record journal entries that never reached the tables. Returns the warnings; never raises
        for a damaged store (a store that cannot be repaired because it is read-only is reported)."""
        before = len(self.warnings)
        try:
            for name in (RUNS, CURVES):
                self._table(name, repair=repair)
            if repair:
                self.replay()
        except WriteError as err:
            self._warn(f"results folder {self.root} could not be repaired: {err}")
        return self.warnings[before:]

    def _warn(self, message: str) -> None:
        self.warnings.append(message)
        if self.warn is not None:
            self.warn(message)
        else:
            print(f"warning: {message}", file=sys.stderr, flush=True)

    def _schema(self, name: str) -> pa.Schema:
        return RUN_SCHEMA if name == RUNS else CURVE_SCHEMA

    def _read_manifest(self) -> tuple[dict[str, Any] | None, str | None]:
        """(tables entry, problem): (None, None) when there is no manifest."""
        try:
            raw = self.manifest_path.read_bytes()
        except FileNotFoundError:
            return None, None
        except OSError as err:
            return None, f"unreadable ({err.strerror})"
        try:
            data = json.loads(raw)
            tables = data["tables"]
            if data.get("format") != FORMAT or data.get("check") != _manifest_check(tables):
                return None, "its own checksum does not match"
            for name in (RUNS, CURVES):
                for state in tables.get(name, []):
                    if not (isinstance(state["sha256"], str) and isinstance(state["rows"], int)):
                        raise TypeError("bad entry")
            return tables, None
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            return None, f"malformed ({type(err).__name__})"

    def _verify(self, name: str) -> tuple[pa.Table | None, str | None, bytes | None]:
        """(table, problem, raw bytes). table None and problem None: no table and none expected."""
        path = self.root / name
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            data = None
        except OSError as err:
            return None, f"{path} is unreadable ({err.strerror})", None
        tables, problem = self._read_manifest()
        if problem:
            return None, f"{self.manifest_path} is {problem}", data
        states = (tables or {}).get(name, [])
        if data is None:
            if states and not any(s["sha256"] == "" for s in states):
                return None, f"{path} is missing but {MANIFEST} lists {max(s['rows'] for s in states)} row(s)", None
            return None, None, None
        digest = _sha256(data)
        accepted = [s for s in states if s["sha256"] == digest]
        if tables is not None and name in tables and not accepted:
            return None, f"{path} does not match its sha256 in {MANIFEST} (torn or corrupted)", data
        try:
            table = _parse(data, self._schema(name))
        except Exception as err:  # noqa: BLE001 - any unparsable table is corrupt
            return None, f"{path} is not a readable results table ({type(err).__name__}: {str(err)[:120]})", data
        if accepted and table.num_rows != accepted[0]["rows"]:
            return None, f"{path} holds {table.num_rows} rows, {MANIFEST} says {accepted[0]['rows']}", data
        return table, None, data

    def _table(self, name: str, repair: bool = True) -> pa.Table:
        table, problem, data = self._verify(name)
        if problem is None:
            if table is None:
                return self._schema(name).empty_table()
            if self._untracked(name, data) and repair:
                self._adopt()
            return table
        if not repair:
            self._warn(f"not using {problem}")
            return self._schema(name).empty_table()
        with self.locked():  # a writer may have swapped files between our two reads: look again
            table, problem, data = self._verify(name)
            if problem is None:
                return table if table is not None else self._schema(name).empty_table()
            return self._repair(problem)[name]

    def _untracked(self, name: str, data: bytes | None) -> bool:
        tables, _ = self._read_manifest()
        return data is not None and (tables is None or name not in tables)

    def _adopt(self) -> None:
        """A folder written before manifests existed (or by hand): record its tables as they are."""
        try:
            with self.locked():
                tables, problem = self._read_manifest()
                if problem is None and (tables is None or any(n not in tables for n in (RUNS, CURVES))):
                    self._write_manifest({n: [self._state(n)] for n in (RUNS, CURVES)})
        except (WriteError, OSError):
            pass  # a read-only folder: verification simply stays off for it

    def _state(self, name: str, data: bytes | None = None) -> dict[str, Any]:
        if data is None:
            path = self.root / name
            if not path.exists():
                return {"sha256": "", "rows": 0}
            data = path.read_bytes()
        rows = pq.ParquetFile(pa.BufferReader(data)).metadata.num_rows
        return {"sha256": _sha256(data), "rows": int(rows)}

    def _write_manifest(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        atomic_write_json(self.manifest_path, {"format": FORMAT, "version": 1, "tables": tables,
                                               "check": _manifest_check(tables)})

    # ------------------------------------------------------------------ repair

    def quarantine(self, path: Path) -> Path:
        """Move a damaged file aside into quarantine/ (never deleted); returns its new path."""
        folder = self.root / QUARANTINE
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{path.name}.{_now()}"
        os.replace(path, target)
        return target

    def _repair(self, problem: str) -> dict[str, pa.Table]:
        """Under the lock: quarantine every table (and manifest) that fails verification and
        rebuild it from the journals in runs/*/attempts/. Returns both tables."""
        try:
            journal = self.journal()
            out: dict[str, pa.Table] = {}
            new_bytes: dict[str, bytes] = {}
            manifest_tables, manifest_problem = self._read_manifest()
            for name in (RUNS, CURVES):
                table, why, _ = self._verify(name)
                if why is None:
                    out[name] = table if table is not None else self._schema(name).empty_table()
                    continue
                path = self.root / name
                moved = self.quarantine(path) if path.exists() else None
                rebuilt = self._rebuild(name, journal)
                where = f"; the damaged file is kept as {moved}" if moved else ""
                self._warn(f"{why}: rebuilt it from {len(journal)} journal entr{'y' if len(journal) == 1 else 'ies'} "
                           f"in {self.root / 'runs'}/*/{ATTEMPTS}/{where}")
                if moved is not None:
                    self._warn_unrecoverable(moved, name, journal)
                out[name] = rebuilt
                new_bytes[name] = _table_bytes(rebuilt)
            if manifest_problem and self.manifest_path.exists():
                moved = self.quarantine(self.manifest_path)
                self._warn(f"{self.manifest_path} was {manifest_problem}; kept as {moved}")
            for name, data in new_bytes.items():
                atomic_write_bytes(self.root / name, data)
            self._write_manifest({n: [self._state(n, new_bytes.get(n))] for n in (RUNS, CURVES)})
            return out
        except OSError as err:
            if isinstance(err, WriteError):
                raise WriteError(f"{problem}, and repairing it failed: {err}") from err
            raise write_error(self.root, err, f"{problem}, and repairing it failed") from err

    def _warn_unrecoverable(self, moved: Path, name: str, journal: list[dict[str, Any]]) -> None:
        """Rows of a quarantined runs table that no journal holds (written before journals existed)."""
        if name != RUNS:
            return
        try:
            old = pq.read_table(moved, columns=["run_id", "attempt"], use_threads=False)
        except Exception:  # noqa: BLE001 - unreadable: nothing to compare
            return
        known = {(e["row"]["run_id"], e["row"]["attempt"]) for e in journal}
        lost = [k for k in zip(old.column("run_id").to_pylist(), old.column("attempt").to_pylist())
                if k not in known]
        if lost:
            self._warn(f"{len(lost)} row(s) of {moved} have no journal entry (e.g. run {lost[0][0]} attempt "
                       f"{lost[0][1]}) and were not restored; inspect that file by hand")

    def _rebuild(self, name: str, journal: list[dict[str, Any]]) -> pa.Table:
        if name == RUNS:
            rows = [{k: e["row"].get(k) for k in RUN_SCHEMA.names} for e in journal]
            return pa.Table.from_pylist(rows, schema=RUN_SCHEMA)
        points = [{"run_id": e["row"]["run_id"], "attempt": e["row"]["attempt"], **p}
                  for e in journal for p in e["curve"]]
        return pa.Table.from_pylist([{k: p.get(k) for k in CURVE_SCHEMA.names} for p in points], schema=CURVE_SCHEMA)

    # ------------------------------------------------------------------ the journal

    def journal_path(self, run_id: str, attempt: int) -> Path:
        return self.run_dir(run_id) / ATTEMPTS / f"{int(attempt)}.json"

    def journal(self, run_id: str | None = None) -> list[dict[str, Any]]:
        """Every intact journal entry ({row, curve, recorded_at}), oldest first. A damaged entry is
        quarantined with a warning (its row, if it reached the tables, is still there)."""
        entries = []
        folders = [self.run_dir(run_id)] if run_id else sorted((self.root / "runs").glob("*"))
        for folder in folders:
            for path in sorted((folder / ATTEMPTS).glob("*.json")):
                m = _ATTEMPT_FILE.match(path.name)
                if not m:
                    continue
                try:
                    entry = json.loads(path.read_text())
                    row, curve = entry["row"], entry["curve"]
                    body = json.dumps({"row": row, "curve": curve}, sort_keys=True, default=str)
                    if entry.get("sha256") != _sha256(body.encode()):
                        raise ValueError("checksum mismatch")
                    if row["attempt"] != int(m.group(1)) or row["run_id"] != folder.name:
                        raise ValueError("names another run or attempt")
                except (OSError, ValueError, KeyError, TypeError) as err:
                    try:
                        moved = self.quarantine(path)
                    except OSError:
                        moved = path
                    self._warn(f"journal entry {path} is damaged ({err}); not using it (kept as {moved})")
                    continue
                entries.append(entry)
        entries.sort(key=lambda e: (e.get("recorded_at", 0.0), e["row"]["run_id"], e["row"]["attempt"]))
        return entries

    def _write_journal(self, row: dict[str, Any], curve: list[dict[str, Any]]) -> None:
        path = self.journal_path(row["run_id"], row["attempt"])
        path.parent.mkdir(parents=True, exist_ok=True)
        row = {k: row.get(k) for k in RUN_SCHEMA.names}
        body = json.dumps({"row": row, "curve": curve}, sort_keys=True, default=str)
        atomic_write_json(path, {"row": row, "curve": curve, "recorded_at": time.time(),
                                 "sha256": _sha256(body.encode())})

    def attempts(self, run_id: str) -> int:
        """How many attempts of this run are recorded (in the tables or the journal)."""
        runs = self.runs()
        in_table = [a for r, a in zip(runs.column("run_id").to_pylist(), runs.column("attempt").to_pylist())
                    if r == run_id]
        folder = self.run_dir(run_id) / ATTEMPTS
        in_journal = [int(m.group(1)) for p in folder.glob("*.json") for m in [_ATTEMPT_FILE.match(p.name)] if m]
        return max(in_table + in_journal + [0])

    def replay(self, run_id: str | None = None) -> int:
        """Record journal entries that never reached the tables (a crash between the two); returns
        how many were added."""
        with self.locked():
            runs = self.runs()
            have = set(zip(runs.column("run_id").to_pylist(), runs.column("attempt").to_pylist()))
            folders = [self.run_dir(run_id)] if run_id else sorted((self.root / "runs").glob("*"))
            unrecorded = {folder.name for folder in folders for p in (folder / ATTEMPTS).glob("*.json")
                          for m in [_ATTEMPT_FILE.match(p.name)] if m and (folder.name, int(m.group(1))) not in have}
            if not unrecorded:  # the common case: no journal file needs reading
                return 0
            missing = [e for name in sorted(unrecorded) for e in self.journal(name)
                       if (e["row"]["run_id"], e["row"]["attempt"]) not in have]
            missing.sort(key=lambda e: (e.get("recorded_at", 0.0), e["row"]["run_id"], e["row"]["attempt"]))
            if missing:
                self._append_tables(runs, [(e["row"], e["curve"]) for e in missing])
            return len(missing)

    # ------------------------------------------------------------------ writes

    def append(self, row: dict[str, Any], curve: list[dict[str, Any]]) -> bool:
        """Add one run attempt and its curve; False (and nothing written) if it is already there."""
        with self.locked():
            runs = self.runs()
            key = (row["run_id"], row["attempt"])
            existing = set(zip(runs.column("run_id").to_pylist(), runs.column("attempt").to_pylist()))
            if key in existing:
                return False
            self._write_journal(row, curve)
            self._append_tables(runs, [(row, curve)])
            return True

    def _append_tables(self, runs: pa.Table, items: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
        """Under the lock: the tables plus `items`, committed curves first, then runs, then the manifest."""
        new_rows = pa.Table.from_pylist([{k: row.get(k) for k in RUN_SCHEMA.names} for row, _ in items],
                                        schema=RUN_SCHEMA)
        new_runs = pa.concat_tables([runs, new_rows])
        updates = {RUNS: _table_bytes(new_runs)}
        keys = [(row["run_id"], row["attempt"]) for row, curve in items if curve]
        if keys:  # drop a curve left by a crash between the two writes, then add ours
            old = self.curves()
            kept = old
            for run_id, attempt in keys:
                if kept.num_rows:
                    same = pc.and_(pc.equal(kept["run_id"], run_id), pc.equal(kept["attempt"], attempt))
                    kept = kept.filter(pc.invert(same))
            points = [{"run_id": row["run_id"], "attempt": row["attempt"], **{k: p.get(k) for k in CURVE_SCHEMA.names[2:]}}
                      for row, curve in items for p in curve]
            updates[CURVES] = _table_bytes(pa.concat_tables([kept, pa.Table.from_pylist(points, schema=CURVE_SCHEMA)]))
        self._commit(updates)

    def _commit(self, updates: dict[str, bytes]) -> None:
        """Swap in new table bytes so that a crash at any point leaves a verifiable store."""
        current = {n: self._state(n) for n in (RUNS, CURVES)}  # verified by the caller's read
        new = {n: self._state(n, data) for n, data in updates.items()}
        # 1. the manifest accepts the old and the new state of every table being replaced
        self._write_manifest({n: [current[n]] + ([new[n]] if n in new else []) for n in (RUNS, CURVES)})
        # 2. the tables, curves first: a runs row never exists without its curve
        for name in (CURVES, RUNS):
            if name in updates:
                atomic_write_bytes(self.root / name, updates[name])
        # 3. the manifest accepts only the new state
        self._write_manifest({n: [new.get(n, current[n])] for n in (RUNS, CURVES)})
