"""The Python API (harness.api): the README's notebook example as written, a sweep planned, run,
resumed and reported from Python with the same numbers as the command, the other designs
planned, and bad input raised as the command's one line."""

from __future__ import annotations

import json
import re

import pandas as pd
import pytest

from conftest import REPO, invoke
import harness.api as hx

MICRO = dict(preset="micro", tokens=4096)


def readme_example() -> str:
    section = (REPO / "README.md").read_text().split("## From Python: `harness.api`", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readmes_notebook_example_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(readme_example(), "README.md", "exec"), {"__name__": "__readme__"})
    assert (tmp_path / "forest.png").stat().st_size > 10_000
    assert (tmp_path / "results" / "runs.parquet").exists()


def test_a_sweep_from_python_is_the_commands_sweep(tmp_path, small_corpus):
    results = tmp_path / "r"
    planned = hx.plan_sweep(["qkv_bias"], seeds=2, data=str(small_corpus), results=results, **MICRO)
    assert planned.name == planned.plan.sweep and len(planned.plan.specs) == 4
    assert hx.run(planned, jobs=1) == 0
    runs = hx.open_results(results).runs_frame()
    assert len(runs) == 4 and set(runs["status"]) == {"completed"}
    assert hx.run(hx.plan_sweep(["qkv_bias"], seeds=2, data=str(small_corpus), results=results, **MICRO)) == 0
    assert len(hx.open_results(results).runs_frame()) == 4  # resumed: nothing trained twice

    report = hx.report(results)
    arms = report.arms()
    assert isinstance(arms, pd.DataFrame) and list(arms["arm"]) == ["baseline", "qkv_bias"]
    assert isinstance(report.worth(), pd.DataFrame) and isinstance(report.pairing(), pd.DataFrame)
    assert "qkv\\_bias" in report.markdown() and report.to_json()["sweeps"][0]["sweep"] == planned.name
    code, out, err = invoke("report", "--results", str(results), "--format", "json")
    assert code == 0, err
    command = json.loads(out)["sweeps"][0]
    assert command["arms"] == report.to_json()["sweeps"][0]["arms"]  # the same numbers as the command's
    assert report.forest_plot(tmp_path / "f.png").stat().st_size > 10_000


def test_the_other_designs_plan_from_python(tmp_path, small_corpus, capsys):
    common = dict(data=str(small_corpus), results=tmp_path / "r")
    adaptive = hx.plan_sweep(["qkv_bias"], adaptive=hx.Adaptive(max_seeds=6), **MICRO, **common)
    assert hx.run(adaptive, dry_run=True) == 0 and adaptive.plan.adaptive is not None
    noise = hx.plan_noise(preset="micro", tokens=4096, seeds=2, **common)
    assert hx.run(noise, dry_run=True) == 0 and noise.plan.noise
    ladder = hx.plan_ladder(["qkv_bias"], preset="micro", seeds=2, rungs=2, smallest=0.5, sets={"allow_repeat": True},
                            **common)
    assert hx.run(ladder, dry_run=True) == 0 and len(ladder.ladder.rungs) == 2
    nodes = hx.plan_sweep(["qkv_bias"], nproc=1, nnodes=2, node_rank=1, rdzv_endpoint="node0:29500", **MICRO,
                          **common)  # node 1 of a two-node sweep: the budgets are for a world of two
    assert nodes.processes.world_size == 2 and not nodes.processes.records
    assert all(spec.world_size == 2 for spec in nodes.plan.specs)
    assert not (tmp_path / "r" / "runs.parquet").exists()  # dry runs run nothing


@pytest.mark.parametrize("call, message", [
    (lambda: hx.plan_sweep(["no_such_arm"], **MICRO), "no_such_arm"),
    (lambda: hx.plan_sweep(["qkv_bias"], seeds=[1, 1], **MICRO), "seed"),
    (lambda: hx.plan_sweep(["qkv_bias"], sets={"lr": "fast"}, **MICRO), "lr"),
    (lambda: hx.run(hx.Planned(), jobs="many"), "--jobs"),
    (lambda: hx.report("/nonexistent/results"), "results"),
    (lambda: hx.plan_sweep(["qkv_bias"], nnodes=0, **MICRO), "--nnodes must be >= 1"),
])
def test_bad_input_raises_the_commands_one_line(call, message):
    with pytest.raises(hx.UserError, match=message) as err:
        call()
    assert "\n" not in str(err.value)
