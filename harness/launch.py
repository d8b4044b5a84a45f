"""Run one planned run under torchrun and record its outcome in the results store.

The parent never trains: it writes spec.json into the run's folder, starts torchrun with an
argument list (no shell), streams the workers' output into log.txt, forwards PROGRESS lines to a
callback, and appends the result row. A run folder is locked while a process runs it, so two
sweeps on one results folder never run the same run at once; a run whose workers finished but
whose row was never written (a crash in between) is recorded without training again.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock, Timeout

from harness.plan import RunSpec
from harness.results import ResultsStore, atomic_write_bytes
from harness.train import PROGRESS
from harness.versions import git_commit, versions


@dataclass(frozen=True)
class Launcher:
    """How to start torchrun: processes per node and the multi-node rendezvous, if any."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str = ""
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes

    @property
    def records(self) -> bool:
        """Only the first node's parent writes results (every node runs the same plan)."""
        return self.node_rank == 0

    def command(self, spec_path: Path, run_id: str) -> list[str]:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(self.nproc)]
        if self.nnodes == 1:
            cmd.append("--standalone")
        else:
            cmd += ["--nnodes", str(self.nnodes), "--node-rank", str(self.node_rank),
                    "--rdzv-backend", "c10d", "--rdzv-endpoint", self.rdzv_endpoint, "--rdzv-id", run_id]
        return cmd + ["-m", "harness.train", str(spec_path)]


def _die_with_parent() -> None:
    """Linux: the torchrun child gets SIGTERM if this process dies, so no orphan keeps training."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _failure_reason(log: Path, returncode: int) -> str:
    """The most telling line of the last attempt's log: the workers' exception, else their signal."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        text = ""
    lines = text[text.rfind("=== attempt"):].splitlines()
    exceptions = [ln.strip() for ln in lines if EXCEPTION_LINE.match(ln) and "elastic" not in ln]
    signals = [m.group(0) for ln in lines for m in [SIGNAL.search(ln)] if m]
    detail = exceptions[-1] if exceptions else signals[-1] if signals else "no error message in the log"
    return f"workers exited with code {returncode}: {detail[:300]}"


EXCEPTION_LINE = re.compile(r"^[\w.]*(Error|Exception|Interrupt)\b(:|$)")
SIGNAL = re.compile(r"Signal \d+ \(\w+\)")


@dataclass
class Outcome:
    row: dict[str, Any] | None  # None: nothing to do any more (another process finished it)
    log: Path
    recorded: bool


def execute(spec: RunSpec, store: ResultsStore, launcher: Launcher,
            on_progress: Callable[[dict[str, Any]], None] | None = None,
            on_output: Callable[[str], None] | None = None,
            should_run: Callable[[], bool] | None = None) -> Outcome | None:
    """Run (or resume) one run and record it; None when another process holds this run.

    `should_run` is asked again once the run's lock is held, so a run that another process
    finished in the meantime is not run (or recorded) twice."""
    run_dir = store.run_dir(spec.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / ".lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    try:
        if should_run is not None and not should_run():
            return Outcome(None, run_dir / "log.txt", False)
        return _execute_locked(spec, store, launcher, run_dir, on_progress, on_output)
    finally:
        lock.release()


def _execute_locked(spec, store, launcher, run_dir, on_progress, on_output) -> Outcome:
    spec_path, result_path, log = run_dir / "spec.json", run_dir / "result.json", run_dir / "log.txt"
    attempts = store.runs().to_pandas()
    attempt = int((attempts["run_id"] == spec.run_id).sum()) + 1
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    if not result_path.exists():
        atomic_write_bytes(spec_path, spec.to_json().encode())
        returncode = _launch(launcher.command(spec_path, spec.run_id), log, attempt, launcher.extra_env,
                             on_progress, on_output)
    else:
        returncode = 0
    if result_path.exists():
        result = json.loads(result_path.read_text())
    else:
        result = {"status": "failed", "reason": _failure_reason(log, returncode), "versions": versions(),
                  "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "curve": []}
    curve = result.pop("curve", [])
    row = {
        "run_id": spec.run_id, "attempt": attempt, "sweep": spec.sweep, "arm": spec.arm,
        "interventions": spec.interventions, "seed": spec.seed, "init_seed": spec.init_seed,
        "data_seed": spec.data_seed, "dropout_seed": spec.dropout_seed, "preset": spec.preset,
        "config": json.dumps(spec.config, sort_keys=True), "config_hash": spec.config_hash,
        "overrides": json.dumps(spec.overrides, sort_keys=True), "params": spec.params,
        "planned_tokens": spec.tokens, "tokens_per_step": spec.tokens_per_step,
        "world_size": spec.world_size, "git_commit": git_commit(), "started_at": started,
        "run_dir": str(run_dir), "steps": 0, "tokens_seen": 0,
    } | {k: v for k, v in result.items() if k not in ("train_time_s", "eval_time_s")}
    row["versions"] = json.dumps(row.get("versions", {}), sort_keys=True)
    recorded = store.append(row, curve) if launcher.records else False
    return Outcome(row, log, recorded)


def _launch(cmd: list[str], log: Path, attempt: int, extra_env: dict[str, str],
            on_progress, on_output) -> int:
    env = os.environ | {"PYTHONUNBUFFERED": "1"} | extra_env
    with log.open("a", encoding="utf-8") as out:
        out.write(f"=== attempt {attempt} at {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(cmd)}\n")
        out.flush()
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=env, preexec_fn=_die_with_parent, bufsize=1)
        try:
            for line in proc.stdout:
                out.write(line)
                if line.startswith(PROGRESS):
                    if on_progress:
                        on_progress(json.loads(line[len(PROGRESS):]))
                elif on_output:
                    on_output(line.rstrip("\n"))
            return proc.wait()
        except BaseException:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
