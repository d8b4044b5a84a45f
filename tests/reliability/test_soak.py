"""Soak: a sweep of 51 micro runs (3 arms x 17 seeds) by two concurrent sweep processes on one
results folder completes with every run present exactly once, and both processes exit cleanly.
Slow (minutes): `python -m pytest -m slow tests/reliability/test_soak.py`."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from harness.store.results import ResultsStore
from relkit import slow_only  # noqa: F401 - a fixture
from relkit import corpus, kill_leftovers, processes_using, record_figure, rows, start, sweep_args, wait_for


@pytest.mark.slow
def test_two_sweeps_share_51_runs_without_losing_or_duplicating_one(slow_only, tmp_path):
    data = corpus(tmp_path)
    results = tmp_path / "results"
    args = sweep_args(results, data, seeds=17, arms=("qkv_bias", "no_dropout"))
    t0 = time.monotonic()
    procs = [start(args, output=subprocess.PIPE) for _ in range(2)]
    try:
        outputs = [p.communicate(timeout=3600)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        kill_leftovers(results)
    elapsed = time.monotonic() - t0
    assert [p.returncode for p in procs] == [0, 0], outputs
    got = rows(results)
    keys = [(r["arm"], r["seed"]) for r in got]
    expected = {(arm, seed) for arm in ("baseline", "qkv_bias", "no_dropout") for seed in range(17)}
    assert set(keys) == expected and len(keys) == len(expected) == 51
    assert all(r["status"] == "completed" for r in got)
    said: list[str] = []
    store = ResultsStore(results, warn=said.append)
    assert store.check() == [] and not said
    assert len(store.journal()) == 51 and store.curves().num_rows == 51 * 12
    launches = [(Path(r["run_dir"]) / "log.txt").read_text().count("=== attempt") for r in got]
    assert launches == [1] * 51, launches  # each run trained once, by one of the two processes
    assert wait_for(lambda: not processes_using(results), 10)
    record_figure("soak", runs=len(got), seconds=round(elapsed, 1),
                  lost=len(expected - set(keys)), duplicates=len(keys) - len(set(keys)))
