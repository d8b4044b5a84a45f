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
with a warning naming its path and rebuilt from the journals, so no recorded row is lost. Without
a manifest (deleted by hand) the journals, which carry their own checksums, are the truth: a table
that is unreadable or disagrees with them is quarantined and rebuilt, one that lacks some of their
rows is completed. A write
that fails (full or read-only disk) leaves the previous files intact and raises WriteError, a
UserError the CLI prints as one line.

One module, on purpose: verification, repair, the journal and the queries all guard one
invariant (no recorded row lost, duplicated or silently altered) and share its lock. Where other
commands may write, given this layout, is harness.store.outputs.
"""

from __future__ import annotations

import json
import re
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock, Timeout

from harness.core.errors import UserError
from harness.core.files import WriteError, atomic_write_bytes, atomic_write_json, quarantine, sha256_bytes, write_error
from harness.store.record import CurvePoint, RunRow, arrow_schema, counted

RUN_SCHEMA = arrow_schema(RunRow)
CURVE_SCHEMA = arrow_schema(CurvePoint)
RUNS, CURVES, MANIFEST = "runs.parquet", "curves.parquet", "manifest.json"
FORMAT = "harness-results"
ATTEMPTS = "attempts"  # runs/<run_id>/attempts/<attempt>.json: the journal
LOCK_TIMEOUT = 600.0
_ATTEMPT_FILE = re.compile(r"^(\d+)\.json$")
IDENTITY_COLUMNS = ("run_id", "identity", "config", "planned_tokens", "tokens_per_step", "test_set_id", "seed", "vary",
                    "init_seed", "data_seed", "dropout_seed", "replica")


def _table_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue().to_pybytes()


def _manifest_check(tables: dict[str, Any]) -> str:
    return sha256_bytes(json.dumps(tables, sort_keys=True, separators=(",", ":")).encode())


def _parquet_file(data: bytes) -> pq.ParquetFile:
    """A Parquet file over a copy of `data` that Arrow owns. Over the Python bytes themselves, the
    last reference to them can end on one of Arrow's threads, which then needs the GIL: at
    interpreter exit that aborted about one `sweep --wait` in two with pyarrow 26 ("terminate
    called without an active exception"; read_table schedules its reads on Arrow's thread pool
    even with use_threads=False)."""
    sink = pa.BufferOutputStream()
    sink.write(data)
    return pq.ParquetFile(pa.BufferReader(sink.getvalue()))


def _parse(data: bytes, schema: pa.Schema) -> pa.Table:
    """A table in `schema`; columns a table written by an older harness lacks are filled with nulls
    (the automatic migration when a field is added to the run record)."""
    table = _parquet_file(data).read(use_threads=False)  # on this thread: no pool, no pre-buffering
    for f in schema:
        if f.name not in table.column_names:
            table = table.append_column(f.name, pa.nulls(table.num_rows, f.type))
    return table.select(schema.names).cast(schema)


def _disagreement(table: pa.Table | None, rebuilt: pa.Table, name: str) -> str | None:
    """How a table differs from its rebuild from the journals, beyond lacking some of their rows
    (a crash between journal and table): rows no journal holds, or rows that differ from theirs."""
    if table is None:
        return None
    keys = ["run_id", "attempt"] + (["step"] if name == CURVES else [])

    def by_key(t: pa.Table) -> dict[tuple, str]:
        return {tuple(r[k] for k in keys): json.dumps(r, sort_keys=True, default=str)
                for r in t.select(rebuilt.column_names).to_pylist()}

    have, want = by_key(table), by_key(rebuilt)
    extra = [k for k in have if k not in want]
    changed = [k for k in have if k in want and have[k] != want[k]]
    if extra:
        return f"holds {len(extra)} row(s) no journal entry has (e.g. run {extra[0][0]} attempt {extra[0][1]})"
    if changed:
        return f"holds {len(changed)} row(s) that differ from their journal entries (e.g. run {changed[0][0]})"
    return None


def _stat_key(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class RunHistory:
    """The recorded attempts of one run in one sweep, oldest first (rows as dicts)."""

    rows: list[dict[str, Any]]

    @property
    def statuses(self) -> list[str]:
        return [r["status"] for r in self.rows]

    @property
    def counted(self) -> dict[str, Any] | None:
        """The attempt that speaks for the run (harness.store.record.counted), None before it settled."""
        return counted(self.rows)


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
        # verified tables, keyed by the manifest's bytes and the table file's identity: a writer
        # replaces both (atomic rename), so a changed store is never served from the cache
        self._cache: dict[str, tuple[Any, pa.Table]] = {}
        self._index: tuple[pa.Table, dict[tuple[str, str], list[dict[str, Any]]]] | None = None
        self._identities: tuple[pa.Table, dict[str, str]] | None = None

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

    def runs_frame(self) -> pd.DataFrame:
        return self.runs().to_pandas(use_threads=False)

    def curves(self) -> pa.Table:
        return self._table(CURVES)

    # ------------------------------------------------------------------ queries (one verified read each)

    def _histories(self) -> dict[tuple[str, str], list[dict[str, Any]]]:
        """(sweep, run_id) -> that run's rows in the sweep, oldest attempt first; rebuilt only when
        the runs table changed."""
        runs = self.runs()
        if self._index is None or self._index[0] is not runs:
            index: dict[tuple[str, str], list[dict[str, Any]]] = {}
            for row in runs.to_pylist():
                index.setdefault((row["sweep"], row["run_id"]), []).append(row)
            for rows in index.values():
                rows.sort(key=lambda r: r["attempt"])
            self._index = (runs, index)
        return self._index[1]

    def history(self, sweep: str, run_id: str) -> RunHistory:
        """Every recorded attempt of a run in a sweep (see harness.store.record.RetryPolicy for what it means)."""
        return RunHistory(list(self._histories().get((sweep, run_id), [])))

    def sweep_frame(self, sweep: str) -> pd.DataFrame:
        """The rows of one sweep (every attempt)."""
        runs = self.runs()
        return runs.filter(pc.equal(runs["sweep"], sweep)).to_pandas(use_threads=False)

    def sweeps(self) -> list[str]:
        """Names of the sweeps with recorded rows, in order of first appearance."""
        return list(dict.fromkeys(s for s in self.runs().column("sweep").to_pylist() if s is not None))

    def run_row(self, run_id: str) -> dict[str, Any] | None:
        """The row that speaks for a run (in any sweep): its counted attempt (the one rule of
        harness.store.record.counted), else its latest attempt (a run that has not settled)."""
        runs = self.runs()
        rows = sorted(runs.filter(pc.equal(runs["run_id"], run_id)).to_pylist(), key=lambda r: r["attempt"])
        return counted(rows) or (rows[-1] if rows else None)

    def run_ids_by_identity(self) -> dict[str, str]:
        """identity -> run id of every run this store knows: recorded rows (the first run id that
        recorded an identity wins) and run folders that were started but never recorded. Rows older
        than identities are keyed by their legacy key (the automatic migration: harness.store.identity),
        so a sweep planned now finds their runs instead of training them again."""
        from harness.store.identity import identity_of

        runs = self.runs()
        if self._identities is not None and self._identities[0] is runs:
            return self._identities[1]
        found: dict[str, str] = {}
        for row in runs.select([c for c in IDENTITY_COLUMNS]).to_pylist():
            key = row["identity"] or identity_of(row)
            if key:
                found.setdefault(key, row["run_id"])
        recorded = set(runs.column("run_id").to_pylist())
        for spec_path in sorted((self.root / "runs").glob("*/spec.json")):  # started, not recorded
            if spec_path.parent.name in recorded:
                continue
            try:
                key = json.loads(spec_path.read_text()).get("identity")
            except (OSError, ValueError, AttributeError):
                continue
            if isinstance(key, str) and key:
                found.setdefault(key, spec_path.parent.name)
        self._identities = (runs, found)
        return found

    def table_state(self, name: str) -> dict[str, Any] | None:
        """The manifest's {sha256, rows} of a table as it is now (verified by the last read), or
        None when there is no such table."""
        tables, _ = self._read_manifest()
        states = [s for s in (tables or {}).get(name, []) if s["sha256"]]
        if not states or not (self.root / name).exists():
            return None
        return states[-1]

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
        digest = sha256_bytes(data)
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

    def _cache_key(self, name: str) -> tuple[Any, ...] | None:
        try:
            manifest = self.manifest_path.read_bytes()
        except FileNotFoundError:
            manifest = b""
        except OSError:
            return None
        table = _stat_key(self.root / name)
        return None if table is None or not manifest else (manifest, table)

    def _table(self, name: str, repair: bool = True) -> pa.Table:
        key = self._cache_key(name)
        cached = self._cache.get(name)
        if key is not None and cached is not None and cached[0] == key:
            return cached[1]
        if repair and not self.manifest_path.exists() and self._has_journal():
            self._adopt()  # no manifest: reconcile the tables with the journals before trusting them
        table, problem, data = self._verify(name)
        if problem is None:
            if table is None:
                return self._schema(name).empty_table()
            if self._untracked(name, data) and repair:
                self._adopt()
            if key is not None and key == self._cache_key(name):  # unchanged while we verified it
                self._cache[name] = (key, table)
            return table
        if not repair:
            self._warn(f"not using {problem}")
            return self._schema(name).empty_table()
        with self.locked():  # a writer may have swapped files between our two reads: look again
            table, problem, data = self._verify(name)
            if problem is None:
                return table if table is not None else self._schema(name).empty_table()
            return self._repair(problem)[name]

    def _has_journal(self) -> bool:
        return next((self.root / "runs").glob(f"*/{ATTEMPTS}/*.json"), None) is not None

    def _untracked(self, name: str, data: bytes | None) -> bool:
        tables, _ = self._read_manifest()
        return data is not None and (tables is None or name not in tables)

    def _adopt(self) -> None:
        """Tables without a manifest (deleted, or a folder written before manifests existed): where
        journals exist they are the truth (each entry carries its checksum), so a table that is
        unreadable or disagrees with them is quarantined and both are rebuilt from them; a table
        that only lacks some journal entries is completed from them. Then the manifest is written.
        A folder without journals (older than them) is recorded as it is."""
        try:
            with self.locked():
                tables, problem = self._read_manifest()
                if problem is not None or (tables is not None and all(n in tables for n in (RUNS, CURVES))):
                    return
                journal = self.journal()
                new_bytes = {}
                for name in (RUNS, CURVES):
                    path = self.root / name
                    current, why, _ = self._verify(name)
                    if why is None and not journal:
                        continue
                    rebuilt = self._rebuild(name, journal)
                    differs = _disagreement(current, rebuilt, name)
                    why = why or (f"{path} {differs}" if differs else None)
                    if why is None and current is not None and current.num_rows == rebuilt.num_rows:
                        continue
                    if why is not None and path.exists():
                        moved = self.quarantine(path)
                        self._warn(f"{why}; without a manifest the journals decide: rebuilt it from {len(journal)} "
                                   f"journal entr{'y' if len(journal) == 1 else 'ies'}; the file is kept as {moved}")
                        self._warn_unrecoverable(moved, name, journal)
                    new_bytes[name] = _table_bytes(rebuilt)
                for name, data in new_bytes.items():
                    atomic_write_bytes(self.root / name, data)
                self._write_manifest({n: [self._state(n, new_bytes.get(n))] for n in (RUNS, CURVES)})
        except (WriteError, OSError):
            pass  # a read-only folder: verification simply stays off for it

    def _state(self, name: str, data: bytes | None = None) -> dict[str, Any]:
        if data is None:
            path = self.root / name
            if not path.exists():
                return {"sha256": "", "rows": 0}
            data = path.read_bytes()
        rows = _parquet_file(data).metadata.num_rows
        return {"sha256": sha256_bytes(data), "rows": int(rows)}

    def _write_manifest(self, tables: dict[str, list[dict[str, Any]]]) -> None:
        atomic_write_json(self.manifest_path, {"format": FORMAT, "version": 1, "tables": tables,
                                               "check": _manifest_check(tables)})

    # ------------------------------------------------------------------ repair

    def quarantine(self, path: Path) -> Path:
        """Move a damaged file aside into quarantine/ (never deleted); returns its new path."""
        return quarantine(path, self.root)

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
            return _row_table([e["row"] for e in journal])
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
                    if entry.get("sha256") != sha256_bytes(body.encode()):
                        raise ValueError("checksum mismatch")
                    if row["attempt"] != int(m.group(1)) or row["run_id"] != folder.name:
                        raise ValueError("names another run or attempt")
                    _row_table([row])  # a row the tables cannot hold must not block every later replay
                except (OSError, ValueError, KeyError, TypeError, OverflowError, pa.ArrowException) as err:
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
                                 "sha256": sha256_bytes(body.encode())})

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

    def append(self, row: RunRow) -> bool:
        """Add one run attempt and its curve; False (and nothing written) if it is already there."""
        return bool(self.append_all([row]))

    def append_all(self, rows: list[RunRow]) -> list[RunRow]:
        """Add several run attempts at once, all or none: every row is checked before any is
        written, then those not already there are journaled and added in one write. Returns them."""
        items = [(row, row.columns(), list(row.curve)) for row in rows]
        for row, columns, _ in items:
            try:
                _row_table([columns])
            except (OverflowError, ValueError, TypeError, pa.ArrowException) as err:
                raise WriteError(f"run {row.run_id} attempt {row.attempt} cannot be recorded: {err}") from None
        with self.locked():
            runs = self.runs()
            existing = set(zip(runs.column("run_id").to_pylist(), runs.column("attempt").to_pylist()))
            new = [(row, columns, curve) for row, columns, curve in items if (row.run_id, row.attempt) not in existing]
            if not new:
                return []
            for _, columns, curve in new:
                self._write_journal(columns, curve)
            self._append_tables(runs, [(columns, curve) for _, columns, curve in new])
            return [row for row, _, _ in new]

    def _append_tables(self, runs: pa.Table, items: list[tuple[dict[str, Any], list[dict[str, Any]]]]) -> None:
        """Under the lock: the tables plus `items`, committed curves first, then runs, then the manifest."""
        new_rows = _row_table([row for row, _ in items])
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
            points = [{k: p.get(k) for k in CURVE_SCHEMA.names} | {"run_id": row["run_id"], "attempt": row["attempt"]}
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


def _row_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Rows as the runs table holds them (raises if a value does not fit its column)."""
    return pa.Table.from_pylist([{k: row.get(k) for k in RUN_SCHEMA.names} for row in rows], schema=RUN_SCHEMA)
