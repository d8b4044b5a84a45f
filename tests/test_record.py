"""The run record (harness.store.record) and the results store's queries: the schema is derived from the
record, older tables migrate automatically, one retry policy, the PROGRESS format, and a cache that
reads and verifies a table once per change."""

from __future__ import annotations

import dataclasses
import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from harness.report.outcomes import load_store
from harness.store.record import (FAILED, PROGRESS, RetryPolicy, RunResult, RunRow, RunSpec, column_names, parse_progress,
                            progress_line)
from harness.store.results import CURVE_SCHEMA, RUN_SCHEMA, ResultsStore


def spec(seed: int = 0, sweep: str = "sw", arm: str = "qkv_bias") -> RunSpec:
    return RunSpec(run_id=f"{arm}-s{seed}-abc", sweep=sweep, arm=arm, seed=seed, init_seed=1, data_seed=2,
                   dropout_seed=3, preset="micro", config={"model": {}, "train": {}}, overrides={"qkv_bias": True},
                   config_hash="abc", params=100, tokens=1000, steps=10, tokens_per_step=100, world_size=1)


def result(status: str = "completed", loss: float = 3.5, **kw) -> RunResult:
    curve = [{"step": 5, "tokens": 500, "train_loss": 4.0, "lr": 1e-3}, {"step": 10, "tokens": 1000,
                                                                       "train_loss": 3.6, "lr": 1e-3}]
    return RunResult(status=status, test_loss=loss, tokens_seen=1000, steps=10, curve=curve, **kw)


def test_every_result_field_but_the_curve_is_a_column_of_the_row_and_the_schema():
    measured = {f.name for f in dataclasses.fields(RunResult)} - {"curve"}
    assert measured <= set(RUN_SCHEMA.names) and "curve" not in RUN_SCHEMA.names
    assert set(RUN_SCHEMA.names) == set(column_names(RunRow))
    assert CURVE_SCHEMA.names == ["run_id", "attempt", "step", "tokens", "train_loss", "lr", "heldout_loss", "tokens_per_s"]
    row = RunRow.of(spec(), 2, result(peak_memory_bytes=123), run_dir="x")
    cells = row.columns()
    assert set(cells) == set(RUN_SCHEMA.names)
    assert cells["planned_tokens"] == 1000 and cells["interventions"] == "qkv_bias" and cells["attempt"] == 2
    assert json.loads(cells["overrides"]) == {"qkv_bias": True} and cells["peak_memory_bytes"] == 123
    pa.Table.from_pylist([cells], schema=RUN_SCHEMA)  # every cell fits its column's type


def test_a_result_json_from_another_version_loads_without_its_unknown_keys(tmp_path):
    path = tmp_path / "result.json"
    path.write_text(json.dumps(result().to_dict() | {"world_size": 1, "from_the_future": 7}))
    assert RunResult.load(path) == result()
    path.write_text(json.dumps({"status": "running"}))
    with pytest.raises(ValueError):
        RunResult.load(path)


def test_an_older_table_without_new_columns_migrates_to_nulls(tmp_path):
    store = ResultsStore(tmp_path, warn=lambda m: None)
    assert store.append(RunRow.of(spec(0), 1, result(), run_dir="x"))
    old_schema = pa.schema([f for f in RUN_SCHEMA if f.name not in ("peak_memory_bytes", "train_time_s")])
    old = store.runs().select(old_schema.names)
    (tmp_path / "manifest.json").unlink()  # as written by a harness before manifests and these columns
    pq.write_table(old, tmp_path / "runs.parquet")
    again = ResultsStore(tmp_path, warn=lambda m: None)
    rows = again.runs().to_pylist()
    assert rows[0]["peak_memory_bytes"] is None and rows[0]["train_time_s"] is None
    assert again.append(RunRow.of(spec(1), 1, result(peak_memory_bytes=5), run_dir="x"))
    assert [r["peak_memory_bytes"] for r in again.runs().to_pylist()] == [None, 5]
    frame = load_store(tmp_path).runs
    assert math.isnan(frame["peak_memory_bytes"].iloc[0]) and frame["peak_memory_bytes"].iloc[1] == 5


@pytest.mark.parametrize("statuses, retries, settled", [
    ([], 1, None), (["failed"], 1, None), (["failed", "failed"], 1, FAILED), (["failed"], 0, FAILED),
    (["failed", "completed"], 0, "completed"), (["diverged"], 3, "diverged"),
    (["failed", "failed", "failed"], 3, None)])
def test_one_retry_policy(statuses, retries, settled):
    assert RetryPolicy(retries).settled(statuses) == settled


def test_progress_lines_round_trip_and_other_lines_are_not_progress():
    line = progress_line(3, 10, 300, 4.25, 1e4)
    assert line.startswith(PROGRESS) and parse_progress(line) == {"step": 3, "steps": 10, "tokens": 300,
                                                                   "loss": 4.25, "tokens_per_s": 1e4}
    for other in ("PROGRESS {not json", "PROGRESS [1, 2]", "PROGRESS {\"step\": 1}", "some output", ""):
        assert parse_progress(other) is None


def test_queries_read_and_verify_a_table_once_per_change(tmp_path, monkeypatch):
    writer = ResultsStore(tmp_path, warn=lambda m: None)
    for seed in range(3):
        writer.append(RunRow.of(spec(seed), 1, result(FAILED if seed == 2 else "completed"), run_dir="x"))
    reader = ResultsStore(tmp_path, warn=lambda m: None)
    verified = []
    real = reader._verify
    monkeypatch.setattr(reader, "_verify", lambda name: verified.append(name) or real(name))
    for _ in range(50):
        assert reader.history("sw", spec(0).run_id).statuses == ["completed"]
        assert reader.history("sw", spec(2).run_id).statuses == [FAILED]
    assert verified == ["runs.parquet"]
    writer.append(RunRow.of(spec(2), 2, result(), run_dir="x"))  # another process records a row
    assert reader.history("sw", spec(2).run_id).statuses == [FAILED, "completed"]
    assert verified == ["runs.parquet", "runs.parquet"]
    assert reader.sweeps() == ["sw"] and len(reader.sweep_frame("sw")) == 4 and reader.sweep_frame("other").empty
    assert reader.run_row(spec(2).run_id)["attempt"] == 2


def test_an_attempts_part_of_a_log_is_cut_at_its_own_header():
    from harness.store.record import attempt_header, attempt_part

    log = ("old output\n" + attempt_header(1, "2026-12-04 10:00:00", "", "python -m worker") + "step 1\n"
           + attempt_header(2, "2026-12-04 10:05:00", " on node 1 (hnode2)", "torchrun ...") + "step 9\n")
    assert attempt_part(log).startswith("=== attempt 2 at 2026-12-04 10:05:00 on node 1 (hnode2): torchrun")
    assert attempt_part(log, 1) == "=== attempt 1 at 2026-12-04 10:00:00: python -m worker\nstep 1\n"
    assert attempt_part(log, 2).endswith("step 9\n") and attempt_part(log, 3) == ""
    assert attempt_part("output before any attempt\n") == ""
