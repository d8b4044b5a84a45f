"""The results store: one Parquet row per run attempt, loss curves in their own table.

Layout of a results folder:
  runs.parquet    one row per run attempt (columns: RUN_SCHEMA)
  curves.parquet  loss curves (columns: CURVE_SCHEMA)
  runs/<run_id>/  a run's working folder: spec.json, log.txt, checkpoint/, result.json
Every write happens under a file lock, goes to a temporary file that is fsynced and then
atomically renamed over the old one, so a crash leaves either the old or the new table, and two
sweep processes on one folder never lose or duplicate a row. (run_id, attempt) is the row key.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from filelock import FileLock

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


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write-to-temp, fsync, rename: readers see the old file or the new one, never a torn one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, payload: Any) -> None:
    atomic_write_bytes(path, json.dumps(payload, indent=1, sort_keys=True, default=str).encode())


def _atomic_write_table(table: pa.Table, path: Path) -> None:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    atomic_write_bytes(path, sink.getvalue().to_pybytes())


class ResultsStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.runs_path = self.root / "runs.parquet"
        self.curves_path = self.root / "curves.parquet"

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
        with FileLock(str(self.root / ".lock"), timeout=600):
            yield

    def _read(self, path: Path, schema: pa.Schema) -> pa.Table:
        if not path.exists():
            return schema.empty_table()
        return pq.read_table(path).select(schema.names).cast(schema)

    def runs(self) -> pa.Table:
        return self._read(self.runs_path, RUN_SCHEMA)

    def runs_frame(self):
        return self.runs().to_pandas()

    def curves(self) -> pa.Table:
        return self._read(self.curves_path, CURVE_SCHEMA)

    def append(self, row: dict[str, Any], curve: list[dict[str, Any]]) -> bool:
        """Add one run attempt and its curve; False (and nothing written) if it is already there."""
        with self.locked():
            runs = self.runs()
            key = (row["run_id"], row["attempt"])
            existing = set(zip(runs.column("run_id").to_pylist(), runs.column("attempt").to_pylist()))
            if key in existing:
                return False
            if curve:  # drop a curve left by a crash between the two writes, then add ours
                old = self.curves()
                same = pc.and_(pc.equal(old["run_id"], row["run_id"]), pc.equal(old["attempt"], row["attempt"]))
                points = [{"run_id": row["run_id"], "attempt": row["attempt"], **p} for p in curve]
                new_curve = pa.Table.from_pylist(points, schema=CURVE_SCHEMA)
                kept = old.filter(pc.invert(same)) if old.num_rows else old
                _atomic_write_table(pa.concat_tables([kept, new_curve]), self.curves_path)
            new_row = pa.Table.from_pylist([{k: row.get(k) for k in RUN_SCHEMA.names}], schema=RUN_SCHEMA)
            _atomic_write_table(pa.concat_tables([runs, new_row]), self.runs_path)
            return True
