"""Benchmark: what Slurm costs per run. Starts a throw-away single-node cluster (tests/slurmkit.py),
then runs the same micro sweep (baseline + qkv_bias, one seed, two runs) on this machine
(`--jobs 2`) and as a Slurm job array (`--launcher slurm --wait`), interleaved, each time into a
fresh results folder, and prints the wall times, their difference per run and their ratio.

    python tests/bench/slurm.py [--repeats 3] [--tokens 1500]

Needs root (the cluster's daemons); prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/
from slurmkit import SlurmCluster  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def timed(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=1500)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cluster = SlurmCluster(Path(tmp) / "cluster").start()
        print(f"test cluster: started (node idle) in {time.perf_counter() - t0:.2f} s")
        try:
            sweep = [sys.executable, "-m", "harness", "sweep", "qkv_bias", "--seeds", "1", "--preset", "micro",
                     "--tokens", str(args.tokens)]
            times: dict[str, list[float]] = {"local": [], "slurm": []}
            for i in range(args.repeats):
                for where in ("local", "slurm"):  # interleaved: the machine's noise hits both alike
                    extra = ["--jobs", "2"] if where == "local" else ["--launcher", "slurm", "--wait"]
                    results = Path(tmp) / f"{where}{i}"
                    times[where].append(timed(sweep + extra + ["--results", str(results)], cluster.env))
                    print(f"  {where:5s} #{i + 1}: {times[where][-1]:.2f} s", flush=True)
        finally:
            cluster.stop()
    local, slurm = statistics.median(times["local"]), statistics.median(times["slurm"])
    print(f"median of {args.repeats}: local {local:.2f} s, Slurm {slurm:.2f} s for the same 2-run sweep; "
          f"Slurm adds {(slurm - local) / 2:.2f} s per run (ratio {slurm / local:.2f})")


if __name__ == "__main__":
    main()
