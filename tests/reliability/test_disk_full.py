"""A really full disk: the results folder on a small tmpfs, filled at every stage of a sweep (from
before the plan is written to while the last checkpoint is swapped). Each level must end in exit 0
or in one error line with exit 2, never a traceback; and once there is space, the same command
finishes the sweep with no attempt counted as failed and nothing trained twice."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from relkit import corpus, rows, run, sweep_args

# tmpfs sizes in KiB: the micro sweep below needs about 1.2 MiB at its peak
CI_LEVELS = [400]  # mid-sweep: a checkpoint fails (on the old main, a failed attempt counted)
SLOW_LEVELS = [16, 64, 200, 700, 900, 1200]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return corpus(tmp_path_factory.mktemp("corpus"))


@pytest.fixture
def small_disk(tmp_path, request):
    """A tmpfs mounted at tmp_path/disk, of the size the test asks for; resized with .grow()."""
    mount = tmp_path / "disk"
    mount.mkdir()

    class Disk:
        path = mount

        def __init__(self, kib: int):
            done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mount)],
                                  capture_output=True, text=True)
            if done.returncode != 0:
                pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
            request.addfinalizer(lambda: subprocess.run(["umount", "-l", str(mount)], capture_output=True))

        def grow(self) -> None:
            subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)

    return Disk


def check_level(kib: int, small_disk, data) -> str:
    disk = small_disk(kib)
    results = disk.path / "results"
    args = sweep_args(results, data, extra=["--jobs", "1"])
    full = run(args)
    out = full.stdout + full.stderr
    assert "Traceback" not in out, out
    assert full.returncode in (0, 2), out
    if full.returncode == 2:
        errors = [ln for ln in full.stderr.splitlines() if ln.startswith("error:")]
        assert len(errors) == 1 and ("No space left" in errors[0] or "space" in errors[0]), full.stderr
    disk.grow()
    again = run(args)
    assert again.returncode == 0, again.stdout + again.stderr
    got = rows(results)
    assert sorted(r["arm"] for r in got) == ["baseline", "qkv_bias"], got
    assert all(r["status"] == "completed" and r["attempt"] == 1 for r in got), got  # nothing counted as failed
    return "exit 0" if full.returncode == 0 else "one line"


@pytest.mark.parametrize("kib", CI_LEVELS)
def test_a_full_disk_is_one_line_and_the_sweep_finishes_once_there_is_space(kib, small_disk, data):
    check_level(kib, small_disk, data)


@pytest.mark.slow
@pytest.mark.parametrize("kib", SLOW_LEVELS)
def test_more_fill_levels(kib, small_disk, data):
    check_level(kib, small_disk, data)
