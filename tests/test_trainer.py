"""A researcher's own training script under harness (harness.planning.trainer, harness.store.contract):
sweeps of a script that harness drives through the contract, its refusals and failure classes, the
example trainers end to end (one process and two, adaptive rounds, a kill and a resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from conftest import REPO, invoke
from harness.store.contract import PASSED, RESULT_KEYS

# a trainer in plain Python (no torch: milliseconds): its loss depends on its settings and init seed,
# so arms differ by `better` and seeds pair; `mode` makes it break the contract in each way it can
FAKE = '''
import json, os, sys
env = os.environ
s = json.loads(env["HARNESS_SETTINGS"])
if env["HARNESS_PROBE"] == "1":
    open(env["HARNESS_RESULT"], "w").write(json.dumps({"params": 1000}))
    sys.exit(0)
noise = (int(env["HARNESS_INIT_SEED"]) % 1009) / 1009 * 0.05
loss = 3.0 + noise - 0.02 * s["better"] * (1 + (int(env["HARNESS_DROPOUT_SEED"]) % 7) / 70)
result = {"test_loss": loss, "tokens": int(env["HARNESS_TOKENS"]), "heldout": [{"tokens": 8, "loss": loss + 1}],
          "curve": [{"step": 1, "tokens": 8, "loss": loss + 2}], "version": "fake 1"}
mode = s["mode"]
print("resume: " + env["HARNESS_RESUME"], flush=True)
if mode == "crash" or (mode == "flaky" and env["HARNESS_RESUME"] != "1"):
    raise RuntimeError("the trainer broke")
if mode == "nan":
    result["test_loss"] = float("nan")
if mode == "short":
    result["tokens"] -= 8
if mode == "unknown":
    result["tokns"] = 1
print("PROGRESS " + json.dumps({"step": 1, "steps": 1, "loss": loss}), flush=True)
print("args: " + " ".join(sys.argv[1:]), flush=True)
if mode != "missing":
    open(env["HARNESS_RESULT"], "w").write("{not json" if mode == "malformed" else json.dumps(result))
'''

MODES = {"missing": "wrote no result", "malformed": "is not JSON", "nan": "test_loss is nan",
         "short": "fewer than the budget of 16", "unknown": "unknown key 'tokns'", "crash": "the trainer broke"}


def trainer_folder(tmp_path: Path, command: str = "{python} fake.py", tokens: str = "tokens = 16",
                   arms: str = '["better"]') -> Path:
    folder = tmp_path / "mine"
    (folder / "interventions").mkdir(parents=True)
    (folder / "fake.py").write_text(FAKE)
    (folder / "interventions" / "better.toml").write_text('[set]\nbetter = true\n')
    for mode in MODES:
        (folder / "interventions" / f"{mode}.toml").write_text(f'[set]\nmode = "{mode}"\n')
    (folder / "fake.toml").write_text(f'arms = {arms}\nseeds = 3\n{tokens}\n[trainer]\ncommand = "{command}"\n'
                                      'global_batch = 2\ncontext_length = 4\n'
                                      '[trainer.settings]\nbetter = false\nmode = "ok"\n')
    return folder


def sweep(folder: Path, *args: str) -> tuple[int, str, str]:
    return invoke("sweep", str(folder / "fake.toml"), "--sweeps", str(folder), "--results", str(folder / "results"),
                  *args)


def runs(folder: Path) -> pd.DataFrame:
    return pd.read_parquet(folder / "results" / "runs.parquet")


def test_a_script_is_swept_reported_and_its_pairing_measured(tmp_path):
    folder = trainer_folder(tmp_path)
    code, out, err = sweep(folder)
    assert code == 0, out + err
    rows = runs(folder)
    assert len(rows) == 6 and set(rows["status"]) == {"completed"}
    assert set(rows["planned_tokens"]) == {16} and set(rows["tokens_seen"]) == {16}
    assert json.loads(rows["versions"].iloc[0])["trainer"] == "fake 1"
    first = json.loads(rows["config"].iloc[0])["trainer"]
    sha = first["files"]["fake.py"]
    assert (folder / "results" / "code" / sha / "fake.py").read_text() == FAKE  # stored with the runs

    code, out, err = invoke("report", "--results", str(folder / "results"), "--out", f"{tmp_path}/rep/")
    assert code == 0, out + err
    assert "better" in out and "external trainer" in out
    md = next((tmp_path / "rep").glob("*.md")).read_text()
    assert "declared by the trainer, not verified by harness" in md
    assert "not known to be shorter runs" in md  # no compute multiplier from an external trainer's mid-run points
    code, out, err = invoke("report", "--results", str(folder / "results"), "--format", "json")
    assert code == 0, err
    swept = json.loads(out)["sweeps"][0]
    arm = next(a for a in swept["arms"] if a["arm"] == "better")
    assert arm["diff"] == pytest.approx(-0.02, abs=0.003)  # the same init seeds in both arms: pairing cancels the noise
    assert swept["pairing"] and "external trainer" in json.dumps(swept)


def test_the_run_gets_the_contract_and_resumes_from_the_store(tmp_path):
    folder = trainer_folder(tmp_path, command="{python} fake.py --seed {seed} --better {better} --result {result}")
    code, out, err = sweep(folder, "--seeds", "1")
    assert code == 0, out + err
    rows = runs(folder)
    base = rows[rows["arm"].eq("baseline")].iloc[0]
    log = (Path(base["run_dir"]) / "log.txt").read_text()
    assert f"args: --seed 0 --better false --result {base['run_dir']}/trainer-result.json" in log
    better = rows[rows["arm"].eq("better")].iloc[0]
    assert "--better true" in (Path(better["run_dir"]) / "log.txt").read_text()
    code, out, err = sweep(folder, "--seeds", "1")
    assert code == 0 and out.count("already in the store") == 2, out + err


def test_a_retried_attempt_is_told_to_resume(tmp_path):
    """An attempt that died is retried with HARNESS_RESUME=1, so a script with checkpoints continues
    (the example trainer's own checkpoint, killed midway, is the slow tier's)."""
    folder = trainer_folder(tmp_path, arms='["flaky"]')
    (folder / "interventions" / "flaky.toml").write_text('[set]\nmode = "flaky"\n')
    code, out, err = sweep(folder, "--seeds", "1", "--retries", "1")
    assert code == 0, out + err
    rows = runs(folder)
    flaky = rows[rows["arm"].eq("flaky")].sort_values("attempt")
    assert list(flaky["status"]) == ["failed", "completed"]
    log = (Path(flaky["run_dir"].iloc[-1]) / "log.txt").read_text()
    assert log.index("resume: 0") < log.index("the trainer broke") < log.index("resume: 1")
    assert "resume: 1" not in (Path(rows[rows["arm"].eq("baseline")]["run_dir"].iloc[0]) / "log.txt").read_text()


def test_each_broken_result_fails_its_run_with_one_line(tmp_path):
    folder = trainer_folder(tmp_path, arms=json.dumps(list(MODES)))
    code, out, err = sweep(folder, "--seeds", "1", "--retries", "0")
    assert code == 1, out + err
    rows = runs(folder).set_index("arm")
    assert rows.loc["baseline", "status"] == "completed"
    for mode, why in MODES.items():  # what would happen again is not retried; what may not is
        assert rows.loc[mode, "status"] == ("unrunnable" if mode in ("short", "unknown") else "failed"), mode
        assert why in rows.loc[mode, "reason"], (mode, rows.loc[mode, "reason"])
        assert (Path(rows.loc[mode, "run_dir"]) / "log.txt").exists()


def test_a_changed_script_is_refused_under_a_started_sweep(tmp_path):
    folder = trainer_folder(tmp_path)
    assert sweep(folder, "--seeds", "1")[0] == 0
    (folder / "fake.py").write_text(FAKE + "\n# changed\n")
    code, out, err = sweep(folder, "--seeds", "2")
    assert code != 0 and "trainer files fake.py" in err and "another experiment" in err, out + err
    assert len(runs(folder)) == 2

    import harness.api as hx  # changed between the plan and the run: refused before it starts

    (folder / "fake.py").write_text(FAKE)
    planned = hx.plan_sweep(str(folder / "fake.toml"), seeds=3, results=folder / "results", sweeps=[folder])
    (folder / "fake.py").write_text(FAKE + "\n# changed again\n")
    with pytest.raises(hx.UserError, match="fake.py in .* changed since sweep"):
        hx.run(planned, jobs=1)
    assert len(runs(folder)) == 2


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("{python} fake.py", "{python} fake.py {sed}"), "placeholder {sed} (did you mean {seed}?)"),
    (lambda t: t.replace("better = false", "betr = false"), "sets 'better', which the trainer does not declare"),
    (lambda t: t.replace('mode = "ok"', 'mode = "ok"\ntokens = 3'), "'tokens' is not a setting's name"),
    (lambda t: t.replace("global_batch = 2\n", ""), "no global_batch"),
    (lambda t: t.replace("{python} fake.py", "{python} elsewhere.py"), "names no file of"),
    (lambda t: "preset = \"tiny\"\n" + t, "runs its own script"),
    (lambda t: t.replace("{python} fake.py", "{python} fake.py --lr {better:.3f}"), "a placeholder is a bare name"),
    (lambda t: t.replace("{python} fake.py", "pythn fake.py"), "'pythn' is not a program here"),
    (lambda t: t.replace("[trainer]\n", "[trainer]\nfiles = [\"../x.txt\"]\n"), "give paths inside"),
    (lambda t: t.replace('mode = "ok"', 'mode = "ok"\nrate = nan'), "finite float"),
])
def test_careless_trainer_tables_are_refused_in_one_line(tmp_path, edit, message):
    folder = trainer_folder(tmp_path)
    (folder / "fake.toml").write_text(edit((folder / "fake.toml").read_text()))
    code, out, err = sweep(folder, "--dry-run")
    assert code != 0 and message in err and "Traceback" not in err, out + err


def test_options_for_harnesss_own_model_are_refused(tmp_path):
    folder = trainer_folder(tmp_path)
    code, out, err = sweep(folder, "--set", "lr=1e-3", "--dry-run")
    assert code != 0 and "--set is for harness's own model" in err, err
    (folder / "interventions" / "typed.toml").write_text('[set]\nbetter = 1\n')
    code, out, err = invoke("sweep", str(folder / "fake.toml"), "--sweeps", str(folder), "--dry-run")
    assert code == 0  # the file's arms only: typed is not in it
    (folder / "fake.toml").write_text((folder / "fake.toml").read_text().replace('["better"]', '["typed"]'))
    code, out, err = sweep(folder, "--dry-run")
    assert code != 0 and "better must be bool" in err, err


def test_without_tokens_the_probe_sets_the_chinchilla_budget(tmp_path):
    folder = trainer_folder(tmp_path, tokens="")
    code, out, err = sweep(folder, "--seeds", "1", "--dry-run")
    assert code == 0, out + err
    assert "20,000" in out and "2,500" in out  # 20 x 1,000 parameters, in steps of 2 x 4 tokens
    (folder / "fake.py").write_text(FAKE.replace('{"params": 1000}', '{"parameters": 1000}'))
    code, out, err = sweep(folder, "--seeds", "1", "--dry-run")
    assert code != 0 and "probe" in err and "params" in err, err


def test_adaptive_rounds_decide_an_external_arm(tmp_path):
    folder = trainer_folder(tmp_path)
    code, out, err = sweep(folder, "--until-decided", "--min-seeds", "2", "--max-seeds", "6")
    assert code == 0, out + err
    assert "round 1:" in out and "better: better at" in out, out
    assert len(runs(folder)) < 12


def test_the_contract_is_documented_in_the_readme():
    section = (REPO / "README.md").read_text().split("## Your own trainer", 1)[1].split("\n## ", 1)[0]
    for name in PASSED:
        assert f"HARNESS_{name.upper()}" in section, name
    for key in RESULT_KEYS:
        assert key in section, key


# ----------------------------------------------------------------------------- the example trainers


@pytest.fixture
def examples(tmp_path) -> Path:
    code, out, err = invoke("example-trainer", str(tmp_path / "ex"))
    assert code == 0, out + err
    for name in ("gpt2_script.toml", "gpt2_args.toml"):  # a micro sweep: 16 steps, one intervention
        path = tmp_path / "ex" / name
        path.write_text(path.read_text().replace("tokens = 32768", "tokens = 4096")
                        .replace('arms = ["qkv_bias", "no_dropout"]', 'arms = ["no_dropout"]'))
    return tmp_path / "ex"


@pytest.mark.parametrize("form, nproc", [
    ("gpt2_script", "1"), ("gpt2_script", "2"),
    # CI time: the placeholder form runs in the fast tier with the fake trainer (test_the_run_gets_the_contract...)
    pytest.param("gpt2_args", "1", marks=pytest.mark.slow)])
def test_the_example_trainers_sweep_and_report(examples, form, nproc):
    results = examples / "results"
    code, out, err = invoke("sweep", str(examples / f"{form}.toml"), "--seeds", "2", "--nproc", nproc,
                            "--results", str(results))
    assert code == 0, out + err
    rows = pd.read_parquet(results / "runs.parquet")
    assert set(rows["status"]) == {"completed"} and len(rows) == 4 and set(rows["world_size"]) == {int(nproc)}
    assert rows["unit_loss_sums"].str.len().gt(0).all()
    code, out, err = invoke("report", "--results", str(results), "--out", f"{examples}/rep/")
    assert code == 0 and "no_dropout" in out, out + err


@pytest.mark.slow  # CI time: test_a_retried_attempt_is_told_to_resume keeps the resume contract in the fast tier
def test_an_example_run_killed_midway_resumes_to_the_uninterrupted_loss(examples):
    args = [sys.executable, "-m", "harness", "sweep", str(examples / "gpt2_script.toml"), "--seeds", "1",
            "--jobs", "1", "--tokens", "16384"]
    killed = examples / "killed"
    proc = subprocess.Popen([*args, "--results", str(killed)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 120
    while not list(killed.glob("runs/*/checkpoint.pt")) and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = subprocess.run([*args, "--results", str(killed)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    logs = "".join(p.read_text() for p in killed.glob("runs/*/log.txt"))
    assert "resumed from step" in logs
    whole = subprocess.run([*args, "--results", str(examples / "whole")], capture_output=True, text=True, timeout=300)
    assert whole.returncode == 0, whole.stderr
    losses = [pd.read_parquet(r / "runs.parquet").set_index("arm")["test_loss"].sort_index()
              for r in (killed, examples / "whole")]
    assert losses[0].to_dict() == losses[1].to_dict()


def test_what_a_run_reads_is_its_identity(tmp_path):
    """The batch shape and a file that a setting names are part of what a run computes; an arm that
    sets what the baseline has is the baseline, planned once."""
    folder = trainer_folder(tmp_path, command="{python} fake.py --data {data}")
    toml = folder / "fake.toml"
    toml.write_text(toml.read_text().replace('mode = "ok"', 'mode = "ok"\ndata = "corpus.txt"'))
    (folder / "corpus.txt").write_text("one text")
    (folder / "interventions" / "same.toml").write_text('[set]\nbetter = false\n')
    toml.write_text(toml.read_text().replace('["better"]', '["better", "same"]'))
    code, out, err = sweep(folder, "--seeds", "1")
    assert code == 0 and "arm 'same' sets the trainer's settings as 'baseline' does" in out, out + err
    files = json.loads(runs(folder)["config"].iloc[0])["trainer"]["files"]
    assert set(files) == {"fake.py", "corpus.txt"}
    (folder / "corpus.txt").write_text("another text")
    code, out, err = sweep(folder, "--seeds", "2")
    assert code != 0 and "corpus.txt" in err and "another experiment" in err, err
    (folder / "corpus.txt").write_text("one text")
    toml.write_text(toml.read_text().replace("global_batch = 2\ncontext_length = 4", "global_batch = 4\ncontext_length = 2"))
    code, out, err = sweep(folder, "--seeds", "2")
    assert code != 0 and "global_batch 2 -> 4" in err, err
