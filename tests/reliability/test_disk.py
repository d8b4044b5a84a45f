"""Full or read-only disk, end to end: a write that fails leaves the previous state intact and the
CLI prints one clear line (no traceback); once there is space again nothing is trained twice.
The failures are injected by faulthook/sitecustomize.py (os.replace raising ENOSPC/EROFS), since
the tests run as root, for whom a chmod'ed folder is no obstacle."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from harness.store.results import ResultsStore
from relkit import MICRO, corpus, env, rows, run


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return corpus(tmp_path_factory.mktemp("corpus"))


def run_args(results: Path, data: Path, seed: int) -> list[str]:
    return ["run", "--seed", str(seed), *MICRO, "--set", f"data={data}", "--results", str(results)]


def one_error_line(proc) -> str:
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_disk_full_while_recording_keeps_the_table_and_nothing_is_trained_twice(tmp_path, data):
    results = tmp_path / "r"
    assert run(run_args(results, data, 0)).returncode == 0
    before = (results / "runs.parquet").read_bytes()

    fault = {"role": "parent", "point": "runs:before", "action": "enospc", "log": str(tmp_path / "f.jsonl")}
    proc = run(run_args(results, data, 1), env(fault))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc)
    assert f"cannot write {results / 'runs.parquet'}: No space left on device" in line
    assert "unchanged" in line and "run the same command again" in line
    assert (results / "runs.parquet").read_bytes() == before  # the previous table, intact
    said: list[str] = []
    assert ResultsStore(results, warn=said.append).runs().num_rows == 1 and not said

    again = run(run_args(results, data, 1))  # space again: recorded from the journal, not retrained
    assert again.returncode == 0, again.stdout + again.stderr
    got = rows(results)
    assert [(r["seed"], r["status"]) for r in got] == [(0, "completed"), (1, "completed")]
    log = (Path(got[1]["run_dir"]) / "log.txt").read_text()
    assert log.count("=== attempt") == 1


def test_read_only_results_folder_is_one_clear_line(tmp_path, data):
    results = tmp_path / "r"
    fault = {"role": "parent", "point": "spec:before", "action": "erofs"}
    proc = run(run_args(results, data, 0), env(fault))
    assert proc.returncode == 2
    line = one_error_line(proc)
    assert "Read-only file system" in line and "spec.json" in line
    assert not (results / "runs.parquet").exists()


def test_disk_full_while_checkpointing_is_not_the_runs_failure_and_the_run_resumes(tmp_path, data):
    """ENOSPC in the worker is the machine's failure: one line, exit 2, no failed attempt counted,
    the last complete checkpoint kept; with space again the same command resumes from it."""
    results = tmp_path / "r"
    fault = {"role": "worker", "point": "ckpt-meta:before", "nth": 4, "action": "enospc"}
    proc = run(run_args(results, data, 0), env(fault))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    line = one_error_line(proc)
    assert "No space left on device" in line and "meta.json" in line and "resumes" in line
    assert not (results / "runs.parquet").exists()  # nothing recorded: no attempt was spent
    run_dir = next((results / "runs").iterdir())
    from harness.training import checkpoint

    assert checkpoint.latest(run_dir, quarantine_bad=True)[1]["step"] == 3  # the last complete checkpoint
    assert not (run_dir / "quarantine").exists()

    again = run(run_args(results, data, 0))  # space again (default --retries): it resumes and completes
    assert again.returncode == 0, again.stdout + again.stderr
    got = rows(results)
    assert [(r["status"], r["attempt"]) for r in got] == [("completed", 1)]
    resumed = (run_dir / "log.txt").read_text().split("=== attempt")[-1]
    assert json.loads(next(ln for ln in resumed.splitlines() if ln.startswith("PROGRESS "))[9:])["step"] > 3


@pytest.mark.slow  # CI time: the checkpoint write's own failures stay in the fast tier beside it
def test_a_slow_checkpoint_write_is_neither_training_time_nor_in_the_progress_rate(tmp_path, data):
    """A checkpoint write (2 GB at gpt2-small) is timed apart, like the held-out points: in the
    wall time, not in train_time_s / tokens_per_s, nor in the rate of the progress window after it
    (which showed a 20x slower training on a GPU before)."""
    results = tmp_path / "r"
    fault = {"role": "worker", "point": "ckpt-commit:before", "nth": 1, "action": "sleep", "seconds": 2.0}
    proc = run(run_args(results, data, 0), env(fault))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    row = rows(results)[0]
    outside = row["wall_time_s"] - row["train_time_s"] - row["heldout_time_s"] - row["eval_time_s"]
    assert outside >= 2.0
    assert row["tokens_per_s"] == pytest.approx(row["tokens_seen"] / row["train_time_s"])
    import pandas as pd

    curve = pd.read_parquet(results / "curves.parquet").set_index("step")
    assert curve.index.min() == 1 and 2 in curve.index  # a checkpoint after step 1, a point after step 2
    after = curve.loc[2]
    window_s = (after["tokens"] - curve.loc[1]["tokens"]) / after["tokens_per_s"]
    assert window_s < 1.5, window_s  # the 2 s write is not in it
