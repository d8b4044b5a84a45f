"""harness as a user installs it: a wheel in a fresh virtual environment, run from a project folder
of the user's that holds a model.py, a harness.py and a sweeps/ folder of its own. The built-in
definitions ship in the wheel, the user's arm is found beside them, and nothing of the user's
shadows harness (or the other way round) in the CLI or in the training workers."""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Callable

import pandas as pd
import pytest

from conftest import REPO, add_keys
from test_upgrade import FIXTURES, LADDER, SWEEP

SHADOW = "raise SystemExit('the user\\'s {name} was imported instead of harness')\n"


def build_wheel(out: Path, change: Callable[[Path], None] | None = None) -> Path:
    """The wheel of a copy of the checkout's files that git tracks or would (no build folders left in
    the checkout), the copy first changed by `change` (a later version of harness)."""
    src = out / "src"
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, src / rel)
    if change is not None:
        change(src)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(src)], check=True, capture_output=True, text=True)
    return next(out.glob("harness-*.whl"))


def install(root: Path, change: Callable[[Path], None] | None = None) -> Path:
    """A fresh venv under `root` with the wheel (build_wheel) installed (its dependencies are this
    environment's, made visible by a .pth file, so nothing is downloaded); returns its bin folder."""
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("needs the git checkout to build the wheel from")
    wheel = build_wheel(root, change)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = Path(subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    deps = [p for p in site.getsitepackages() + [sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (purelib / "_test_dependencies.pth").write_text("\n".join(dict.fromkeys(deps)) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "-q", str(wheel)], check=True, capture_output=True, text=True)
    return venv / "bin"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    return install(tmp_path_factory.mktemp("install"))


@pytest.fixture
def project(tmp_path) -> Path:
    """A researcher's project folder: their own model.py and harness.py, and one intervention of theirs."""
    folder = tmp_path / "project"
    (folder / "sweeps" / "interventions").mkdir(parents=True)
    for name in ("model.py", "harness.py"):
        (folder / name).write_text(SHADOW.format(name=name))
    (folder / "sweeps" / "interventions" / "lr_2x.toml").write_text(
        'description = "Twice the book\'s learning rate."\n[set]\nlr = 8e-4\n')
    (folder / "sweeps" / "interventions" / "qkv_bias.toml").write_text(
        'description = "My own QKV bias."\n[set]\nqkv_bias = true\n')
    return folder


def harness(bin_dir: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HARNESS_SWEEPS")}
    env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run([str(bin_dir / "harness"), *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          env=env | {"COLUMNS": "250"})


def test_the_wheel_works_from_a_users_project_folder(installed, project, small_corpus):
    located = subprocess.run([str(installed / "python"), "-c", "import harness, harness.model, harness.sweeps; "
                              "print(harness.__file__); print(harness.model.__file__)"],
                             cwd=project.parent, capture_output=True, text=True, check=True).stdout
    assert str(REPO) not in located and "site-packages" in located  # the wheel, not the checkout

    listing = harness(installed, "list", cwd=project)
    assert listing.returncode == 0, listing.stderr
    for name in ("gpt2-small", "tiny", "micro", "no_dropout", "interventions_32.toml"):
        assert name in listing.stdout
    lr_2x = next(line for line in listing.stdout.splitlines() if "lr_2x" in line)
    assert "./sweeps" in lr_2x and "built-in" not in lr_2x
    qkv = next(line for line in listing.stdout.splitlines() if line.strip("│ ").startswith("qkv_bias"))
    assert "shadows built-in" in qkv

    budget = harness(installed, "chinchilla", "--preset", "gpt2-small", cwd=project)
    assert budget.returncode == 0 and "3,260,252,160" in budget.stdout, budget.stderr

    sweep = harness(installed, "sweep", "lr_2x", "--seeds", "2", "--preset", "micro", "--tokens", "2000", "--data",
                    str(small_corpus), "--results", "results", cwd=project)
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr
    assert sweep.stdout.count("test loss") == 4
    kernels = {json.loads(v).get("cpu_kernels") for v in pd.read_parquet(project / "results" / "runs.parquet")["versions"]}
    assert kernels == {"native"}  # the wheel ships the C kernels' source, built on first use
    report = harness(installed, "report", "--results", "results", "--out", "reports/", cwd=project)
    assert report.returncode == 0, report.stderr
    assert "lr\\_2x" in next((project / "reports").glob("*.md")).read_text()

    shadowed = harness(installed, "sweep", "qkv_bias", "--seeds", "1", "--preset", "micro", "--tokens", "2000",
                       "--data", str(small_corpus), "--results", "results", "--dry-run", cwd=project)
    assert "shadows the built-in one" in shadowed.stdout, shadowed.stdout + shadowed.stderr


@pytest.mark.slow  # CI time: the same continuation by a later version runs in the fast tier in-process (test_upgrade.py)
def test_a_later_wheel_continues_a_store_this_version_recorded(tmp_path):
    """A later release (this checkout with a model key and a training key added, off by default),
    installed from its wheel, continues tests/fixtures/store-v1's sweep and ladder without training,
    and reports them."""
    later = install(tmp_path / "later", lambda src: add_keys(src / "model" / "config.py",
                                                             src / "harness" / "core" / "config.py"))
    store = tmp_path / "store"
    shutil.copytree(FIXTURES / "store-v1", store)
    runs = pd.read_parquet(store / "runs.parquet")
    assert "qk_norm" in harness(later, "list", "--keys", cwd=tmp_path).stdout
    for args in (SWEEP, LADDER):
        done = harness(later, *args, "--results", str(store), cwd=tmp_path)
        assert done.returncode == 0, done.stderr
        assert "already in the store" in done.stdout and "step 1/" not in done.stdout, done.stdout
    assert pd.read_parquet(store / "runs.parquet").equals(runs)
    report = harness(later, "report", "--results", str(store), "--out", str(tmp_path / "reports"), cwd=tmp_path)
    assert report.returncode == 0 and "Mismatch" not in report.stdout, report.stderr


def readme_code_intervention() -> dict[str, str]:
    """The README's example of a code intervention: file name -> text."""
    section = (REPO / "README.md").read_text().split("## Your own change, in code", 1)[1].split("\n## ", 1)[0]
    toml, py = (section.split(f"```{kind}\n", 1)[1].split("```", 1)[0] for kind in ("toml", "python"))
    return {"gated_zloss.toml": toml, "gated_zloss.py": py}


def test_the_readmes_code_intervention_from_a_users_project_folder(installed, project, small_corpus):
    """A new user's first code intervention: the README's example in their sweeps/interventions/ (beside
    their own model.py), swept with 3 seeds and reported from the installed wheel, with its hash."""
    for name, text in readme_code_intervention().items():
        (project / "sweeps" / "interventions" / name).write_text(text)
    sweep = harness(installed, "sweep", "gated_zloss", "--seeds", "3", "--preset", "micro", "--tokens", "2000",
                    "--data", str(small_corpus), "--results", "results", cwd=project)
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr
    assert sweep.stdout.count("test loss") == 6
    rows = pd.read_parquet(project / "results" / "runs.parquet")
    sha = json.loads(rows[rows["arm"].eq("gated_zloss")]["config"].iloc[0])["code"][0]["sha256"]
    assert (project / "results" / "code" / sha / "gated_zloss.py").is_file()
    report = harness(installed, "report", "--results", "results", "--out", "reports/", cwd=project)
    assert report.returncode == 0, report.stderr
    assert f"gated\\_zloss.py {sha[:12]}" in (project / "reports" / "micro-gated_zloss.md").read_text()


def test_the_example_trainer_from_a_fresh_folder(installed, tmp_path):
    """A new user's own trainer: the example copied out of the installed package into an empty folder,
    swept with 3 seeds by the command the README gives, and reported."""
    copied = harness(installed, "example-trainer", "mytrainer", cwd=tmp_path)
    assert copied.returncode == 0, copied.stderr
    folder = tmp_path / "mytrainer"
    sweep = harness(installed, "sweep", "gpt2_script.toml", "--tokens", "2048", cwd=folder)
    assert sweep.returncode == 0, sweep.stdout[-2000:] + sweep.stderr
    assert sweep.stdout.count("test loss") == 9
    report = harness(installed, "report", "--out", "reports/", cwd=folder)
    assert report.returncode == 0, report.stderr
    assert "declared by the trainer" in (folder / "reports" / "gpt2_script.md").read_text()
