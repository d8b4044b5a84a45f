"""The results store under torn and corrupt files, crashes between its writes, full and read-only
disks, and concurrent writers: no recorded row is ever lost, duplicated or silently altered."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rich.console import Console

from conftest import flip_bit
from harness.core.errors import UserError
from harness.store.record import RunRow
from harness.store.results import CURVES, MANIFEST, RUNS, ResultsStore, WriteError


def make_row(i: int, attempt: int = 1, **kw) -> RunRow:
    arm = ("baseline", "qkv_bias")[i % 2]
    curve = [{"step": s, "tokens": 256 * s, "train_loss": 5.5 - s / 100, "lr": 2e-3} for s in range(1, 13)]
    return RunRow(**{
        "run_id": f"{arm}-s{i // 2}-abc{i:03d}", "attempt": attempt, "sweep": "micro-qkv_bias", "arm": arm,
        "interventions": "" if arm == "baseline" else arm, "seed": i // 2, "init_seed": 1, "data_seed": 2,
        "dropout_seed": 3, "preset": "micro", "config": {}, "overrides": {}, "params": 100,
        "status": "completed", "reason": "", "test_loss": 5.0 + i / 1000 + 1e-13, "planned_tokens": 3072,
        "tokens_per_step": 256, "tokens_seen": 3072, "steps": 12, "test_set_id": "abcd", "world_size": 1,
        "config_hash": "h", "finished_at": "2026-01-01T00:00:00+00:00", "curve": curve} | kw)


def filled(root: Path, n: int = 6) -> ResultsStore:
    store = ResultsStore(root, warn=lambda m: None)
    for i in range(n):
        assert store.append(make_row(i))
    return store


def fresh(root: Path) -> tuple[ResultsStore, list[str]]:
    said: list[str] = []
    return ResultsStore(root, warn=said.append), said


def keys(table: pa.Table) -> list[tuple[str, int]]:
    return list(zip(table.column("run_id").to_pylist(), table.column("attempt").to_pylist()))


def flip(path: Path, offset: int) -> None:
    flip_bit(path, offset, 0x10)


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),
    "bit-flip-start": lambda p: flip(p, 9),
    "bit-flip-middle": lambda p: flip(p, len(p.read_bytes()) // 2),
    "bit-flip-footer": lambda p: flip(p, -12),
    "empty": lambda p: p.write_bytes(b""),
    "deleted": lambda p: p.unlink(),
    "garbage": lambda p: p.write_bytes(os.urandom(3000)),
}


def test_append_journals_every_row_and_the_manifest_matches(tmp_path):
    store = filled(tmp_path)
    manifest = json.loads((tmp_path / MANIFEST).read_text())
    assert manifest["tables"][RUNS][0]["rows"] == 6 and manifest["tables"][CURVES][0]["rows"] == 72
    assert len(list(tmp_path.glob("runs/*/attempts/1.json"))) == 6
    assert not store.append(make_row(0))  # (run_id, attempt) is the key: no duplicate
    assert store.runs().num_rows == 6 and not store.warnings


@pytest.mark.parametrize("table", [RUNS, CURVES])
@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_damaged_table_is_quarantined_named_and_rebuilt_without_losing_a_row(tmp_path, table, damage):
    before = filled(tmp_path)
    runs, curves = before.runs(), before.curves()
    DAMAGE[damage](tmp_path / table)
    store, said = fresh(tmp_path)
    assert store.runs().equals(runs) and store.curves().equals(curves)
    assert any(str(tmp_path / table) in m for m in said), said
    quarantined = list((tmp_path / "quarantine").glob(f"{table}.*"))
    assert len(quarantined) == (0 if damage == "deleted" else 1)
    assert any(str(quarantined[0]) in m for m in said) if quarantined else True
    again, said_again = fresh(tmp_path)  # repaired for good: the next reader sees a clean store
    assert again.runs().equals(runs) and not said_again


def test_a_readable_but_altered_table_is_never_used(tmp_path):
    """Silent corruption that still parses (a changed test loss) fails its sha256 and is replaced."""
    store = filled(tmp_path)
    table = store.runs()
    losses = table.column("test_loss").to_pylist()
    altered = table.set_column(table.schema.get_field_index("test_loss"), "test_loss",
                               pa.array([x + 0.5 for x in losses]))
    pq.write_table(altered, tmp_path / RUNS)
    reader, said = fresh(tmp_path)
    assert reader.runs().column("test_loss").to_pylist() == losses
    assert said and "does not match its sha256" in said[0] and str(tmp_path / RUNS) in said[0]


def test_corrupt_manifest_and_corrupt_journal_entry(tmp_path):
    store = filled(tmp_path)
    runs = store.runs()
    (tmp_path / MANIFEST).write_text('{"format": "harness-results", "tables": {}, "check": "0"}')
    reader, said = fresh(tmp_path)
    assert reader.runs().equals(runs)
    assert any("manifest.json" in m for m in said)
    # a damaged journal entry is set aside; its row is still in the table
    entry = next(tmp_path.glob("runs/baseline-s0-*/attempts/1.json"))
    flip(entry, 40)
    reader, said = fresh(tmp_path)
    assert reader.check() == [] or all(str(entry) in m for m in reader.check())
    journal = reader.journal()
    assert len(journal) == 5 and reader.runs().num_rows == 6
    assert any(str(entry) in m for m in reader.warnings)


def test_folder_written_before_manifests_is_adopted(tmp_path):
    store = filled(tmp_path)
    runs = store.runs()
    (tmp_path / MANIFEST).unlink()
    reader, said = fresh(tmp_path)
    assert reader.runs().equals(runs) and not said
    assert (tmp_path / MANIFEST).exists()


def _replace_calls_in_one_append(tmp_path) -> int:
    store = filled(tmp_path / "count", 2)
    calls = []
    real = os.replace
    os.replace = lambda a, b: (calls.append(b), real(a, b))[1]
    try:
        store.append(make_row(9))
    finally:
        os.replace = real
    return len(calls)


class Crash(BaseException):
    """Stands for the process dying: nothing after it runs (not even `except Exception`)."""


def test_crash_between_any_two_writes_loses_and_duplicates_nothing(tmp_path, monkeypatch):
    n = _replace_calls_in_one_append(tmp_path)
    reference = filled(tmp_path / "reference", 4)
    assert n == 5  # journal, manifest (old+new), curves, runs, manifest (new)
    for k in range(n + 1):
        for before in (True, False):
            root = tmp_path / f"crash{k}{before}"
            store = filled(root, 3)
            real, count = os.replace, [0]

            def crashing(src, dst, real=real, count=count, k=k, before=before):
                count[0] += 1
                if count[0] == k and before:
                    raise Crash()
                real(src, dst)
                if count[0] == k:
                    raise Crash()

            monkeypatch.setattr(os, "replace", crashing)
            with pytest.raises(Crash) if k else pytest.raises(AssertionError):
                store.append(make_row(3))
                assert False, "no crash at k=0"
            monkeypatch.setattr(os, "replace", real)
            reader, said = fresh(root)
            assert not said, (k, before, said)  # a crash is never mistaken for corruption
            reader.replay()
            # before the journal entry is in place the row does not exist yet (launch records it again
            # from result.json); from then on it is there exactly once, with its curve
            n = 3 if (k, before) == (1, True) else 4
            assert sorted(keys(reader.runs())) == sorted(keys(reference.runs())[:n]), (k, before)
            assert len(keys(reader.curves())) == n * 12, (k, before)
            assert not list(root.glob(".*.tmp")) and not list(root.glob("runs/*/attempts/.*.tmp"))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EIO])
@pytest.mark.parametrize("fail_at", ["write", "fsync", "replace"])
def test_failed_write_leaves_the_previous_state_and_says_so(tmp_path, monkeypatch, code, fail_at):
    store = filled(tmp_path, 3)
    snapshot = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}

    def boom(*a, **kw):
        raise OSError(code, os.strerror(code))

    if fail_at == "write":  # the disk fills up while the new table is being written
        real_fdopen = os.fdopen

        class Full(io.RawIOBase):
            def __init__(self, fd, *a, **kw):
                self.f = real_fdopen(fd, *a, **kw)

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                boom()

            def close(self):
                self.f.close()
                super().close()

        monkeypatch.setattr(os, "fdopen", Full)
    else:
        monkeypatch.setattr(os, fail_at, boom)
    with pytest.raises(WriteError) as info:
        store.append(make_row(3))
    monkeypatch.undo()
    message = str(info.value)
    assert isinstance(info.value, UserError) and isinstance(info.value, OSError)
    assert os.strerror(code) in message and str(tmp_path) in message and "\n" not in message
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert after == snapshot  # nothing changed, no temporary file left behind
    reader, said = fresh(tmp_path)
    assert reader.runs().num_rows == 3 and not said
    assert reader.append(make_row(3))  # and once the disk is back, the write goes through


def test_repair_on_a_read_only_folder_reports_instead_of_crashing(tmp_path, monkeypatch):
    filled(tmp_path)
    flip(tmp_path / RUNS, 100)

    def boom(*a, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", boom)
    reader, said = fresh(tmp_path)
    problems = reader.check()
    assert problems and "could not be repaired" in problems[-1] and str(tmp_path / RUNS) in problems[-1]
    with pytest.raises(WriteError, match="Read-only file system"):
        reader.runs()


WRITER = """
import sys
from pathlib import Path
sys.path[:0] = [{here!r}, str(Path({here!r}).parent)]  # test_store, and the conftest it imports
from harness.store.results import ResultsStore
from test_store import make_row
store = ResultsStore(Path({root!r}), warn=print)
for i in range({start}, {start} + 15):
    store.append(make_row(i))
    store.append(make_row(i))  # the other writer, or a retry, appending the same row: ignored
"""


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    here = str(Path(__file__).parent)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER.format(here=here, root=str(tmp_path), start=s)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for s in (0, 10)]  # overlapping rows
    outputs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert not any(outputs), outputs  # and no warning: nothing looked corrupt to either writer
    reader, said = fresh(tmp_path)
    got = keys(reader.runs())
    assert len(got) == len(set(got)) == 25 and not said
    assert reader.curves().num_rows == 25 * 12


def test_report_never_crashes_on_damaged_tables(tmp_path):
    from harness.report.build import run_report

    for name, damage in sorted(DAMAGE.items()):
        root = tmp_path / name
        filled(root)
        damage(root / RUNS)
        for fmt in ("json", "markdown"):
            try:
                run_report(root, fmt=fmt, console=Console(file=io.StringIO()), reports_dir=tmp_path / "rep",
                           plots=False, stdout=io.StringIO(), n_resamples=0)
            except UserError:
                pass
        # after the store's check (what every sweep does on its first read) the report has every row
        reader, said = fresh(root)
        reader.check()
        out = io.StringIO()
        run_report(root, fmt="json", console=Console(file=io.StringIO()), plots=False, stdout=out, n_resamples=0)
        doc = json.loads(out.getvalue())
        assert len(doc["sweeps"][0]["runs"]) >= 1 and not doc["warnings"], name
        assert doc["results_files"][0]["rows"] == 6, name


@pytest.mark.parametrize("nth", [1, 2, 3, 4, 5])
def test_disk_full_at_any_write_of_an_append_keeps_the_tables_verifiable(tmp_path, monkeypatch, nth):
    store = filled(tmp_path, 3)
    before = {n: (tmp_path / n).read_bytes() for n in (RUNS, CURVES)}
    real, count = os.replace, [0]

    def full(src, dst):
        count[0] += 1
        if count[0] >= nth:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(src, dst)

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(WriteError, match="No space left on device"):
        store.append(make_row(3))
    monkeypatch.undo()
    reader, said = fresh(tmp_path)
    assert not said and not list(tmp_path.rglob(".*.tmp"))
    tables_now = {n: (tmp_path / n).read_bytes() for n in (RUNS, CURVES)}
    if nth <= 3:  # neither table was replaced yet
        assert tables_now == before
    # the row exists exactly once after recovery if its journal entry was written, else not at all
    reader.replay()
    assert reader.runs().num_rows == (3 if nth == 1 else 4)


def test_report_never_uses_an_altered_table(tmp_path):
    from harness.report.build import run_report

    store = filled(tmp_path)
    table = store.runs()
    altered = table.set_column(table.schema.get_field_index("test_loss"), "test_loss",
                               pa.array([9.0] * table.num_rows))
    pq.write_table(altered, tmp_path / RUNS)
    out = io.StringIO()
    run_report(tmp_path, fmt="json", console=Console(file=io.StringIO()), plots=False, stdout=out, n_resamples=0)
    doc = json.loads(out.getvalue())
    assert all(a["mean"] != 9.0 for s in doc["sweeps"] for a in s["arms"])
    assert any(str(tmp_path / RUNS) in w for w in doc["warnings"])
