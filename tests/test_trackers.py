"""--log mlflow,wandb,trackio and `harness track` against the real trackers: a real `mlflow server`
(SQLite backend, a free localhost port) read back through MLflow's client; W&B offline, its run
files read back with W&B's own record schema (and `wandb sync --dry-run`); trackio's local store
read back through trackio. Then a tracker that is down and one that accepts connections and never
answers: the sweep completes, says in one line what did not get there, and waits a bounded time."""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import cli, free_port

pytest.importorskip("mlflow")
pytest.importorskip("wandb")
pytest.importorskip("trackio")

SWEEP = ["sweep", "qkv_bias", "--seeds", "2", "--preset", "micro", "--tokens", "3000"]
NAME = "micro-qkv_bias"


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """`mlflow server` with a SQLite backend store on a free localhost port, stopped afterwards."""
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
                             "--default-artifact-root", str(folder / "artifacts"), "--workers", "1"],
                            stdout=open(folder / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True,
                            # no job runner and its seven queue consumers (MLflow's server-side jobs, which
                            # tracking does not use): the server starts in half the time, in 2 processes, not 10
                            env=os.environ | {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"mlflow server did not start:\n{(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    yield uri
    os.killpg(proc.pid, 15)
    proc.wait(timeout=30)


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (run-ID.wandb): W&B's framing (a 7-byte header, then 32 KiB
    blocks of records with a 7-byte header each, LevelDB's log format) parsed into W&B's own
    protobuf Record."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, pending, pos, block = [], b"", 7, 32768
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 0 and length == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(pending)
            records.append(record)
    return records


def wandb_runs(folder: Path) -> dict[str, dict]:
    """display name -> config, history (step -> metrics), summary, group, job type of every offline run."""
    runs = {}
    for path in sorted(folder.glob("wandb/offline-run-*/run-*.wandb")):
        run = {"history": {}, "summary": {}, "config": {}}
        for r in wandb_records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                run |= {"name": r.run.display_name, "group": r.run.run_group, "job_type": r.run.job_type,
                        "id": r.run.run_id, "tags": list(r.run.tags)}
                run["config"] |= {i.key: json.loads(i.value_json) for i in r.run.config.update}
            elif kind == "config":
                run["config"] |= {i.key: json.loads(i.value_json) for i in r.config.update}
            elif kind == "history":
                values = {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
                run["history"][int(values.pop("_step"))] = values
            elif kind == "summary":
                run["summary"] |= {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.summary.update}
        runs[run["name"]] = run
    return runs


def store_runs(results: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    return pd.read_parquet(results / "runs.parquet"), pd.read_parquet(results / "curves.parquet")


@pytest.fixture(scope="module")
def published(tmp_path_factory, mlflow_server, small_corpus):
    """One micro sweep logged to all three trackers as it runs."""
    root = tmp_path_factory.mktemp("trackers")
    env = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "harness-test", "WANDB_MODE": "offline",
           "WANDB_DIR": str(root / "wb"), "WANDB_PROJECT": "harness-test", "TRACKIO_DIR": str(root / "trackio"),
           "TRACKIO_PROJECT": "harness-test"}
    (root / "wb").mkdir()
    results = root / "results"
    proc = cli(*SWEEP, "--data", str(small_corpus), "--results", str(results), "--log", "mlflow,wandb",
               "--log", "trackio", env=env, check=True)
    return results, env, proc.stdout


def mlflow_runs(uri: str):
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("harness-test")
    return client, client.search_runs([experiment.experiment_id], max_results=1000)


def test_mlflow_holds_the_sweep_as_a_parent_with_one_nested_run_per_attempt_and_the_store_values(published):
    results, env, out = published
    assert "mlflow: 4 runs and 1 summary published" in out
    runs, curves = store_runs(results)
    client, found = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    parents = [r for r in found if r.data.tags.get("harness.kind") == "sweep"]
    assert len(parents) == 1 and parents[0].info.run_name == NAME
    parent = parents[0].info.run_id
    children = {r.data.tags["harness.run_id"]: r for r in found if r.data.tags.get("harness.kind") == "run"}
    assert set(children) == set(runs["run_id"])
    for row in runs.itertuples():
        child = children[row.run_id]
        tags = child.data.tags
        assert tags["mlflow.parentRunId"] == parent
        assert (tags["harness.arm"], tags["harness.seed"], tags["harness.attempt"]) == (row.arm, str(row.seed), "1")
        assert tags["harness.config_hash"] == row.config_hash and tags["harness.counted"] == "true"
        assert tags["harness.pair"] == f"{NAME}/seed {row.seed}" and tags["harness.preset"] == "micro"
        assert child.data.metrics["test/loss"] == row.test_loss  # exactly the store's float64
        assert child.data.params["model.n_layers"] == str(json.loads(row.config)["model"]["n_layers"])
        history = client.get_metric_history(child.info.run_id, "train/loss")
        mine = curves[curves["run_id"] == row.run_id].sort_values("step")
        assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == \
            list(zip(mine["step"].tolist(), mine["train_loss"].tolist()))
        assert len(client.get_metric_history(child.info.run_id, "train/tokens_per_s")) == len(mine)
    summary = [r for r in found if r.data.tags.get("harness.kind") == "summary"]
    assert len(summary) == 1 and summary[0].data.tags["mlflow.parentRunId"] == parent


def test_the_paired_difference_curve_and_the_verdicts_equal_the_report(published):
    results, env, _ = published
    report = json.loads(cli("report", "--results", str(results), "--format", "json", check=True).stdout)
    section = report["sweeps"][0]
    arm = next(a for a in section["arms"] if a["arm"] == "qkv_bias")
    paired = section["worth"]["paired_curves"]["qkv_bias"]
    client, found = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    summary = next(r for r in found if r.data.tags.get("harness.kind") == "summary")
    assert summary.data.metrics["verdict/qkv_bias/diff"] == arm["diff"]
    assert summary.data.metrics["verdict/qkv_bias/p_holm"] == arm["p_holm"]
    assert summary.data.tags["harness.verdict.qkv_bias"] == arm["verdict"]
    mean = client.get_metric_history(summary.info.run_id, "paired_diff/qkv_bias/mean")
    assert sorted((m.step, m.value) for m in mean) == [(int(p["tokens"]), p["mean"]) for p in paired]
    wb = wandb_runs(Path(env["WANDB_DIR"]))
    wb_summary = next(r for r in wb.values() if r["job_type"] == "summary")
    assert {s: v["paired_diff/qkv_bias/mean"] for s, v in wb_summary["history"].items()} == \
        {int(p["tokens"]): p["mean"] for p in paired}
    assert wb_summary["summary"]["verdict/qkv_bias/diff"] == arm["diff"]


def test_wandb_offline_runs_are_grouped_by_sweep_with_the_store_values(published):
    results, env, out = published
    assert "wandb: 4 runs and 1 summary published" in out
    runs, curves = store_runs(results)
    wb = wandb_runs(Path(env["WANDB_DIR"]))
    assert len(wb) == 5 and {r["group"] for r in wb.values()} == {NAME}
    for row in runs.itertuples():
        run = wb[f"{row.arm} seed {row.seed}"]
        assert run["job_type"] == "run" and run["config"]["harness"]["harness.run_id"] == row.run_id
        assert f"arm:{row.arm}" in run["tags"] and run["summary"]["test/loss"] == row.test_loss
        mine = curves[curves["run_id"] == row.run_id]
        assert {s: v["train/loss"] for s, v in run["history"].items()} == dict(zip(mine["step"], mine["train_loss"]))
    listed = subprocess.run([sys.executable, "-m", "wandb", "sync", "--dry-run"], cwd=env["WANDB_DIR"],
                            capture_output=True, text=True, env=os.environ | env)
    assert "Would sync 5 run(s)" in listed.stdout + listed.stderr


def test_trackio_runs_are_grouped_by_sweep_with_the_store_values(published):
    results, env, out = published
    assert "trackio: 4 runs and 1 summary published" in out
    code = ("import json, sys\nfrom trackio.sqlite_storage import SQLiteStorage as S\n"
            "p = 'harness-test'\nprint(json.dumps({n: [S.get_run_config(p, n), S.get_logs(p, n)] "
            "for n in S.get_runs(p)}))")
    read = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ | env, check=True)
    held = json.loads(read.stdout.strip().splitlines()[-1])
    assert len(held) == 5
    runs, curves = store_runs(results)
    for row in runs.itertuples():
        config, logs = held[f"{NAME}/{row.arm} seed {row.seed}"]
        assert config["harness.run_id"] == row.run_id and config["_Group"] == NAME
        assert [entry["test/loss"] for entry in logs if "test/loss" in entry] == [row.test_loss]
        mine = curves[curves["run_id"] == row.run_id]
        assert [(e["step"], e["train/loss"]) for e in logs if "train/loss" in e] == \
            list(zip(mine["step"], mine["train_loss"]))


def test_the_api_publishes_a_store_as_harness_track_does(published, tmp_path, monkeypatch):
    """harness.api.track: the store's runs and its report to a tracker, from Python; again, nothing new."""
    import io

    from rich.console import Console

    import harness.api as hx

    results, env, _ = published
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    monkeypatch.setenv("TRACKIO_PROJECT", "harness-api")
    said = io.StringIO()
    assert hx.track("trackio", results, console=Console(file=said, width=200)) is True
    assert "trackio: 4 runs and 1 summary published" in said.getvalue()
    said.truncate(0)
    assert hx.track(["trackio"], results, sweep=NAME, console=Console(file=said, width=200)) is True
    assert "trackio: 4 runs and 1 summary already there" in said.getvalue()
    with pytest.raises(hx.UserError, match="--to tensorboard: TensorBoard is written as runs record"):
        hx.track("tensorboard", results)


@pytest.mark.slow  # CI time: four trackers tests stay in the fast tier, `harness track` after a tracker was down among them
def test_publishing_again_adds_nothing_and_a_resumed_sweep_continues_the_same_runs(published, small_corpus):
    results, env, _ = published
    again = cli("track", "--to", "mlflow,wandb,trackio", "--results", str(results), env=env, check=True)
    for name in ("mlflow", "wandb", "trackio"):
        assert f"{name}: 4 runs and 1 summary already there" in again.stdout
    rerun = cli(*SWEEP, "--data", str(small_corpus), "--results", str(results), "--log", "mlflow,wandb,trackio",
                env=env, check=True)
    assert "mlflow: nothing new" in rerun.stdout
    _, found = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    assert len(found) == 6  # parent, 4 runs, 1 summary
    assert len(wandb_runs(Path(env["WANDB_DIR"]))) == 5
    more = cli("sweep", "qkv_bias", "--seed-list", "0,1,2", "--preset", "micro", "--tokens", "3000", "--data",
               str(small_corpus), "--results", str(results), "--log", "mlflow", env=env, check=True)
    assert "mlflow: 2 runs and 1 summary published" in more.stdout
    _, found = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    assert sum(r.data.tags.get("harness.kind") == "sweep" for r in found) == 1  # the same parent continues
    assert sum(r.data.tags.get("harness.kind") == "summary" for r in found) == 2  # a new state of the report


def test_a_report_that_now_refuses_the_sweep_takes_the_verdicts_off_the_mlflow_parent(published, tmp_path,
                                                                                        small_corpus):
    """The parent shows the latest verdicts: once the report refuses the sweep (here seeds recorded
    into it with another weight decay, as a folder merged by hand would hold them), it shows the
    refusal and no verdict, not the last one it had."""
    from harness.planning.plan import build_plan
    from harness.planning.request import SweepRequest
    from harness.store.record import RunResult, RunRow
    from harness.store.results import ResultsStore

    results, env, _ = published
    copy = tmp_path / "results"
    shutil.copytree(results, copy)
    plan = build_plan(SweepRequest(("qkv_bias",), seeds=(7,), preset="micro", tokens=3000, name=NAME,
                                   sets={"data": str(small_corpus), "weight_decay": 0.0}).check(), 1, False, copy)
    store = ResultsStore(copy)
    for spec in plan.specs:
        done = RunResult(status="completed", test_loss=5.0, test_tokens=100, test_set_id=plan.data[spec.arm].test_set_id,
                         tokens_seen=spec.tokens, steps=spec.steps)
        store.append(RunRow.of(spec, 1, done, run_dir=str(store.run_dir(spec.run_id))))
    client, found = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    parent = next(r for r in found if r.data.tags.get("harness.kind") == "sweep")
    assert parent.data.tags["harness.verdict.qkv_bias"] and "harness.refused" not in parent.data.tags
    out = cli("track", "--to", "mlflow", "--results", str(copy), env=env, check=True).stdout
    assert "mlflow: 2 runs and 1 summary published" in out and "the report refuses it" in out, out
    parent = client.get_run(parent.info.run_id)
    assert "harness.verdict.qkv_bias" not in parent.data.tags
    assert "weight_decay differs across seeds" in parent.data.tags["harness.refused"]
    assert math.isnan(parent.data.metrics["verdict/qkv_bias/diff"])  # the latest value: no verdict now
    _, found = mlflow_runs(env["MLFLOW_TRACKING_URI"])
    refused = [r for r in found if "harness.refused" in r.data.tags and r.data.tags.get("harness.kind") == "summary"]
    assert len(refused) == 1 and not any(k.startswith("verdict/") for k in refused[0].data.metrics)


def test_only_a_refusal_of_unlike_arms_is_a_summary_state(tmp_path, small_corpus):
    """An ad-hoc run without a baseline, or a sweep with nothing completed, has no summary (None);
    arms not trained alike is a refused state, and a refusal of other rows is another state."""
    from harness.planning.plan import build_plan
    from harness.planning.request import SweepRequest
    from harness.store.record import RunResult, RunRow
    from harness.store.results import ResultsStore
    from harness.trackers.records import REFUSED, sweep_record

    def record(results, arms, seeds, status="completed", include_baseline=True, **sets):
        plan = build_plan(SweepRequest(arms, seeds=seeds, preset="micro", tokens=3000, name="s",
                                       sets={"data": str(small_corpus)} | sets, include_baseline=include_baseline).check(),
                          1, False, results)
        store = ResultsStore(results)
        for spec in plan.specs:
            done = RunResult(status=status, test_loss=5.0 + spec.seed * 0.01 if status == "completed" else float("nan"),
                             test_tokens=100, test_set_id=plan.data[spec.arm].test_set_id, tokens_seen=spec.tokens,
                             steps=spec.steps, reason="" if status == "completed" else "OOM")
            store.append(RunRow.of(spec, store.attempts(spec.run_id) + 1, done, run_dir=str(store.run_dir(spec.run_id))))

    record(tmp_path / "adhoc", ("qkv_bias",), (0,), include_baseline=False)
    assert sweep_record(tmp_path / "adhoc", "s")[0] is None
    record(tmp_path / "failed", ("qkv_bias",), (0, 1), status="failed")
    got, why = sweep_record(tmp_path / "failed", "s")
    assert got is None and "nothing to compare" in why
    record(tmp_path / "unlike", ("qkv_bias",), (0, 1))
    record(tmp_path / "unlike", ("qkv_bias",), (2,), weight_decay=0.0)
    first = sweep_record(tmp_path / "unlike", "s")[0]
    assert "weight_decay differs across seeds" in first.tags[REFUSED] and not first.metrics
    record(tmp_path / "unlike", ("qkv_bias",), (3,), weight_decay=0.0)
    second = sweep_record(tmp_path / "unlike", "s")[0]
    assert REFUSED in second.tags and second.state != first.state  # the refusal of other rows


def test_a_tracker_that_is_down_costs_nothing_and_says_how_to_publish_later(tmp_path, small_corpus, mlflow_server):
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}"}  # nothing listens there
    proc = cli(*SWEEP, "--data", str(small_corpus), "--results", str(tmp_path), "--log", "mlflow", env=env)
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_parquet(tmp_path / "runs.parquet")) == 4
    line = next(l for l in proc.stdout.splitlines() if l.startswith("mlflow:"))
    command = f"harness track --to mlflow --results {tmp_path} --sweep {NAME}"
    assert "did not reach" in line and command in line
    # the remedy it prints, followed once the tracker is up, publishes the sweep's runs
    later = {"MLFLOW_TRACKING_URI": mlflow_server, "MLFLOW_EXPERIMENT_NAME": "published-later"}
    cli(*command.split()[1:], env=later, check=True)
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server)
    runs = client.search_runs([client.get_experiment_by_name("published-later").experiment_id], max_results=100)
    assert sorted(r.data.tags.get("harness.run_id", "") for r in runs if "harness.run_id" in r.data.tags) == \
        sorted(pd.read_parquet(tmp_path / "runs.parquet")["run_id"])


# slow tier: two sweeps and a timeout; a tracker that is down is in CI (the test above)
@pytest.mark.slow
def test_a_tracker_that_never_answers_delays_the_sweep_by_at_most_the_timeout(tmp_path, small_corpus):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept_and_say_nothing():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept_and_say_nothing, daemon=True).start()
    env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{server.getsockname()[1]}", "HARNESS_TRACKER_TIMEOUT": "3"}
    try:
        start = time.monotonic()
        proc = cli(*SWEEP, "--data", str(small_corpus), "--results", str(tmp_path / "hung"), "--log", "mlflow", env=env)
        hung = time.monotonic() - start
        start = time.monotonic()
        cli(*SWEEP, "--data", str(small_corpus), "--results", str(tmp_path / "plain"), check=True)
        plain = time.monotonic() - start
    finally:
        stop.set()
        server.close()
        for conn in held:
            conn.close()
    assert proc.returncode == 0, proc.stderr
    assert len(pd.read_parquet(tmp_path / "hung" / "runs.parquet")) == 4
    line = next(l for l in proc.stdout.splitlines() if l.startswith("mlflow:"))
    assert "no answer within 3 s" in line and "harness track --to mlflow" in line
    print(f"hanging tracker: sweep {hung:.1f} s, without a tracker {plain:.1f} s")
    assert hung - plain < 3 + 10  # the timeout, plus the agent's start and a noisy machine's spread


def test_log_refuses_an_unknown_tracker_before_anything_runs(tmp_path):
    proc = cli(*SWEEP, "--results", str(tmp_path), "--log", "mlflow,comet")
    assert proc.returncode == 2 and "--log 'comet'" in proc.stderr and "mlflow" in proc.stderr
    assert not (tmp_path / "runs.parquet").exists()
    proc = cli("track", "--to", "wandb", "--results", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and "holds no results store" in proc.stderr
    for given, says in (("mlflow,tensorboardx", "--to 'tensorboardx': allowed"), ("wandb,tensorboard", "--log tensorboard"),
                        ("none", "--to 'none': allowed: mlflow, wandb, trackio"), (" , ", "--to: give one of")):
        proc = cli("track", "--to", given, "--results", str(tmp_path))
        assert proc.returncode == 2 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_a_tracker_that_is_not_installed_is_one_line_and_no_agent(monkeypatch, tmp_path):
    import io

    from rich.console import Console

    from harness.trackers import publish

    monkeypatch.setattr(publish, "installed", lambda name: name != "wandb")
    out = io.StringIO()
    publisher = publish.Publisher(("tensorboard", "wandb"), tmp_path, Console(file=out, width=300))
    assert publisher.agents == [] and publisher.finish()
    text = out.getvalue()
    assert "wandb: not installed (pip install 'harness[wandb]')" in text
    assert f"harness track --to wandb --results {tmp_path}" in text
