"""`harness sweep` end to end on the micro preset: plan, seed-major order, idempotence, resume
after SIGKILL, concurrent sweeps, failures and retries, bad arguments."""

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

from conftest import REPO, cli
from reliability.relkit import wait_for

SWEEP = ["sweep", "qkv_bias", "--seeds", "2", "--preset", "micro", "--tokens", "3000"]


def runs(results: Path) -> pd.DataFrame:
    return pd.read_parquet(results / "runs.parquet")


def losses(results: Path) -> dict[tuple[str, int], float]:
    df = runs(results)
    return {(r.arm, r.seed): r.test_loss for r in df.itertuples()}


def assert_exactly_once(results: Path, n: int) -> None:
    df = runs(results)
    assert len(df) == n, df[["arm", "seed", "status"]]
    assert not df.duplicated(["sweep", "arm", "seed"]).any()
    assert (df["status"] == "completed").all()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """One uninterrupted sweep, one run at a time: the yardstick for resumed and concurrent ones."""
    results = tmp_path_factory.mktemp("reference")
    out = cli(*SWEEP, "--jobs", "1", "--results", str(results), check=True)
    assert "harness report --sweep micro-qkv_bias" in out.stdout
    return results


def test_sweep_runs_every_arm_and_seed_in_seed_major_order(reference):
    df = runs(reference)
    assert_exactly_once(reference, 4)
    assert list(zip(df["arm"], df["seed"])) == [("baseline", 0), ("qkv_bias", 0), ("baseline", 1), ("qkv_bias", 1)]
    assert df["planned_tokens"].nunique() == 1 and (df["tokens_seen"] == df["planned_tokens"]).all()
    assert set(df["sweep"]) == {"micro-qkv_bias"}
    plan = (reference / "sweeps" / "micro-qkv_bias.json").read_text()
    assert "qkv_bias-s1-" in plan


def test_rerunning_a_finished_sweep_does_nothing(reference):
    before = runs(reference)
    out = cli(*SWEEP, "--results", str(reference), check=True)
    assert out.stdout.count("already in the store") == 4
    pd.testing.assert_frame_equal(before, runs(reference))


def test_baseline_budget_is_matched_and_own_budget_differs(tmp_path):
    plan = cli("sweep", "weight_tying", "--seeds", "1", "--preset", "tiny", "--dry-run", "--results", str(tmp_path), check=True)
    own = cli("sweep", "weight_tying", "--seeds", "1", "--preset", "tiny", "--budget", "own", "--dry-run",
              "--results", str(tmp_path), check=True)
    budgets = [line.split() for line in plan.stdout.splitlines() if line.startswith(("│ baseline", "│ weight_tying"))]
    assert budgets[0][5] == budgets[1][5]  # same tokens for both arms
    own_budgets = [line.split() for line in own.stdout.splitlines() if line.startswith(("│ baseline", "│ weight_tying"))]
    assert own_budgets[0][5] != own_budgets[1][5]
    assert "2 runs" in plan.stdout and not (tmp_path / "runs.parquet").exists()


@pytest.mark.slow  # CI time: concurrent runs of one sweep (below) and the store's locking (reliability/test_store.py) stay in the fast tier
def test_two_concurrent_sweeps_share_the_work(reference, tmp_path):
    procs = [subprocess.Popen([sys.executable, "-m", "harness", *SWEEP, "--results", str(tmp_path)], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert_exactly_once(tmp_path, 4)
    assert losses(tmp_path) == losses(reference)


def test_failed_run_is_retried_once_recorded_and_the_sweep_goes_on(tmp_path):
    # a sitecustomize on PYTHONPATH makes every training worker of the qkv_bias arm crash
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import os, sys\n"
        "if 'LOCAL_RANK' in os.environ and any('qkv_bias-' in a for a in sys.argv + [open('/proc/self/cmdline').read()]):\n"
        "    sys.stderr.write('RuntimeError: injected worker crash\\n'); os._exit(3)\n")
    env = os.environ | {"PYTHONPATH": str(hook), "HARNESS_WARM_WORKERS": "0"}  # the hook acts at a process's start
    proc = subprocess.run([sys.executable, "-m", "harness", "sweep", "qkv_bias", "--seeds", "1", "--preset", "micro",
                           "--tokens", "3000", "--results", str(tmp_path / "r")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    df = runs(tmp_path / "r")
    failed = df[df["arm"] == "qkv_bias"]
    assert list(failed["status"]) == ["failed", "failed"] and list(failed["attempt"]) == [1, 2]
    assert "injected worker crash" in failed["reason"].iloc[0]
    assert (df[df["arm"] == "baseline"]["status"] == "completed").all()
    assert "log.txt" in proc.stdout


def started(output: str) -> list[str]:
    """The runs a sweep started, in order, from its plain progress lines ('[12:00:00] start baseline seed 0 (...)')."""
    return [line.split("] start ", 1)[1].split(" (")[0] for line in output.splitlines() if "] start " in line]


AFFINITY_HOOK = ("import json, os, sys\n"
                 "if 'LOCAL_RANK' in os.environ and 'harness.training.worker' in sys.argv[0] + ' '.join(sys.orig_argv):\n"
                 "    path = os.path.join(os.environ['AFFINITY_LOG'], str(os.getpid()))\n"
                 "    open(path, 'w').write(json.dumps(sorted(os.sched_getaffinity(0))))\n")


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 cores")
def test_concurrent_runs_give_every_row_once_and_the_same_losses(reference, tmp_path):
    """--jobs 2: two runs at a time, each pinned to its own core, started seed-major; the same rows
    and bit-identical test losses as one run at a time."""
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(AFFINITY_HOOK)
    (tmp_path / "affinity").mkdir()
    out = cli(*SWEEP, "--jobs", "2", "--results", str(tmp_path / "r"), check=True,
              env={"PYTHONPATH": str(hook), "AFFINITY_LOG": str(tmp_path / "affinity"),
                   "HARNESS_WARM_WORKERS": "0"}).stdout  # the hook records a process's start (test_warm: forks)
    assert_exactly_once(tmp_path / "r", 4)
    assert losses(tmp_path / "r") == losses(reference)
    assert started(out) == ["baseline seed 0", "qkv_bias seed 0", "baseline seed 1", "qkv_bias seed 1"]
    cores = [tuple(json.loads(p.read_text())) for p in (tmp_path / "affinity").iterdir()]
    assert len(cores) == 4 and all(len(c) == 1 for c in cores) and len(set(cores)) == 2


@pytest.mark.slow  # CI time: the class stays covered by a shorter test in the fast tier
def test_killed_concurrent_sweep_loses_and_duplicates_nothing(reference, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "harness", *SWEEP, "--jobs", "2", "--results", str(tmp_path)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline and not (tmp_path / "runs.parquet").exists():
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the sweep and both runs' workers, mid-way
    proc.wait()
    cli(*SWEEP, "--jobs", "2", "--results", str(tmp_path), check=True)
    assert_exactly_once(tmp_path, 4)
    assert losses(tmp_path) == losses(reference)


@pytest.mark.parametrize("args, message", [
    (["sweep", "qkv_bais"], "did you mean 'qkv_bias'"),
    (["sweep", "qkv_bias", "--jobs", "0"], "--jobs '0': give a number of runs at once from 1 to 1024, or auto"),
    (["sweep", "qkv_bias", "--jobs", "many"], "--jobs 'many'"),
    (["sweep", "qkv_bias", "--preset", "micro", "--nproc", "3"],
     "a global batch of 8 sequences cannot be split evenly over 3 processes; valid process counts "
     "(--nproc x --nnodes): 1, 2, 4, 8"),
    (["sweep", "qkv_bias", "--launcher", "local", "--jobs", "2"], "--jobs is for runs on this machine"),
    (["sweep", "qkv_bias", "--nnodes", "2", "--rdzv-endpoint", "h:1", "--jobs", "2"], "--jobs above 1 is for runs on one node"),
    (["sweep", "qkv_bias", "--set", "grad_accum=2"], "grad_accum is no longer a key: gradient accumulation is derived"),
    (["sweep", "qkv_bias", "--seeds", "0"], "--seeds must be >= 1"),
    (["sweep", "qkv_bias", "--seed-list", "1,x"], "--seed-list"),
    (["sweep", "missing_sweep.toml"], "sweep file 'missing_sweep.toml': no such file"),
])
def test_bad_sweep_arguments(tmp_path, args, message):
    proc = cli(*args, "--results", str(tmp_path))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr


@pytest.mark.parametrize("args", [["sweep", "qkv_bias", "--jobs", "many"], ["sweep", "qkv_bias", "--until-decided",
                                   "--alpha", "2"], ["noise", "--replicates", "0"], ["run", "--seed", "-1"],
                                   ["ladder", "qkv_bias", "--jobs", "0"]])
def test_a_bad_option_is_refused_before_torch_or_scipy_loads(tmp_path, args):
    """The options are checked first, so a typo costs a fraction of a second, not torch's import."""
    probe = ("import sys, harness.__main__ as entry\n"
             f"sys.argv = ['harness', *{args!r}, '--results', {str(tmp_path)!r}]\n"
             "try:\n    entry.main()\nexcept SystemExit as exit:\n    code = exit.code\n"
             "print(code, sorted(m for m in ('torch', 'scipy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=tmp_path).stdout
    assert out.split("\n")[-2] == "2 []", out


def test_malformed_sweep_file_names_its_line(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text('arms = ["qkv_bias"]\nseeds = 2\npreset = tiny\n')
    proc = cli("sweep", str(bad), "--results", str(tmp_path))
    assert proc.returncode == 2 and "line 3" in proc.stderr and str(bad) in proc.stderr


def test_sweep_file_sets_arms_seeds_and_preset(tmp_path):
    sweep_file = tmp_path / "mine.toml"
    sweep_file.write_text('arms = ["no_dropout", "qkv_bias+no_dropout"]\nseed_list = [7, 11]\npreset = "micro"\n'
                          'tokens = 3000\n[set]\nlr = 1e-3\n')
    out = cli("sweep", str(sweep_file), "--dry-run", "--results", str(tmp_path), check=True).stdout
    assert "sweep mine" in out and "seeds 7,11" in out and "6 runs" in out
    assert "qkv_bias+no_dropout" in out


INTERRUPTED = (130, -signal.SIGINT)  # a shell shows both as 130; CPython 3.11 ends with the signal itself
# when a KeyboardInterrupt once escaped code run by exec() (say, a dataclass being built), even though
# the command caught it


def interactive_sigint() -> None:
    """As in a terminal: a CI runner started in the background may hand down SIGINT ignored."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_cleanly_with_a_summary_and_the_sweep_continues(reference, tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "harness", *SWEEP, "--results", str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=interactive_sigint)
    deadline = time.time() + 180
    while time.time() < deadline and not list(tmp_path.glob("runs/*/spec.json")):
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode in INTERRUPTED
    assert "stopped:" in out and "continue with: harness sweep qkv_bias" in out and "Traceback" not in out
    if (tmp_path / "runs.parquet").exists():  # an interrupted run is not recorded as a failure
        assert (runs(tmp_path)["status"] == "completed").all()
    cli(*SWEEP, "--results", str(tmp_path), check=True)
    assert_exactly_once(tmp_path, 4)
    assert losses(tmp_path) == losses(reference)


def wait_until_loading_typer(pid: int, timeout: float = 30.0) -> None:
    """Until the child maps _json's extension, which Typer loads early on: the moment the command
    line starts loading, however slow the machine is today. Python's own startup before that
    (site, .pth files) ends in Python's traceback, which no program can prevent. Where _json is
    built into the interpreter, a fixed 0.2 s stands in."""
    import _json
    marker = Path(getattr(_json, "__file__", "") or "").name
    if not marker:
        time.sleep(0.2)
        return

    def loaded() -> bool:
        try:
            return marker in Path(f"/proc/{pid}/maps").read_text()
        except OSError:
            return True  # already gone: the assertions below say why

    assert wait_for(loaded, timeout, interval=0.002), f"{marker} never loaded in {timeout:g} s"


@pytest.mark.parametrize("delay", [0.0, 1.0])
def test_ctrl_c_while_the_command_line_loads_is_quiet(tmp_path, delay):
    """Before the sweep starts (Typer, then torch still importing): exit 130, no traceback."""
    proc = subprocess.Popen([sys.executable, "-m", "harness", *SWEEP, "--results", str(tmp_path)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            preexec_fn=interactive_sigint)
    wait_until_loading_typer(proc.pid)
    time.sleep(delay)
    os.killpg(proc.pid, signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode in INTERRUPTED and "Traceback" not in out and "Exception ignored" not in out, out


BROKEN_BY_CTRL_C = """
import os, signal, sys, time
import harness.cli
import harness.__main__ as entry

def cut_short_import():  # as numpy does when Ctrl-C lands inside its lazy import of numpy.linalg
    try:
        if PRESS:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    except KeyboardInterrupt:
        pass  # swallowed on the way, the library's state left broken
    raise RecursionError("maximum recursion depth exceeded")

harness.cli.app = cut_short_import
sys.argv = ["harness"]
entry.main()
"""


@pytest.mark.parametrize("pressed", [True, False])
def test_an_error_that_a_ctrl_c_caused_ends_as_the_interrupt(pressed):
    """The CI's rare failure above, made certain: the error after a press exits 130 quietly; the
    same error without a press is a bug and keeps its traceback."""
    proc = subprocess.run([sys.executable, "-c", f"PRESS = {pressed}\n{BROKEN_BY_CTRL_C}"], cwd=REPO, capture_output=True, text=True, timeout=60,
                          preexec_fn=interactive_sigint)
    if pressed:
        assert proc.returncode == 130 and "Traceback" not in proc.stderr, proc.stderr
    else:
        assert proc.returncode == 1 and "RecursionError" in proc.stderr


def test_report_command_on_a_real_sweep(reference, tmp_path):
    out = cli("report", "--results", str(reference), "--out", str(tmp_path / "qkv.md"), check=True)
    assert "qkv_bias" in out.stdout and (tmp_path / "qkv.md").exists() and (tmp_path / "qkv_forest.png").exists()
    data = json.loads(cli("report", "--results", str(reference), "--format", "json", check=True).stdout)
    arms = {a["arm"]: a for a in data["sweeps"][0]["arms"]}
    assert {"arm", "n", "mean", "sd", "diff", "ci_low", "ci_high", "p", "p_holm", "verdict"} <= set(arms["qkv_bias"])
    assert arms["qkv_bias"]["n"] == 2
    bad = cli("report", "--results", str(reference), "--baseline", "nope_arm")
    assert bad.returncode == 2 and "nope_arm" in bad.stderr and "Traceback" not in bad.stderr
    empty = cli("report", "--results", str(tmp_path / "nothing"))
    assert empty.returncode == 2 and len(empty.stderr.strip().splitlines()) == 1
