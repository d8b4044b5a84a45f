"""What Slurm says: its partitions' GPUs, and the state of submitted jobs (squeue, then sacct).

Every question goes through one Slurm client command; a client that is missing, times out or
fails (no SLURM_CONF, the controller down) is one SlurmUnavailable with Slurm's own last line.
Accounting is optional: without it (accounting_storage/none, the common small-cluster setup)
a job that squeue no longer lists has ended, and Slurm cannot say how.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import dataclass

from harness.core.errors import UserError

CLIENT_TIMEOUT_S = 60
ACTIVE = frozenset({"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "REQUEUE_FED",
                    "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD"})
SLURM_JOB_ID = re.compile(r"\d+(?:_\d+)?")


class SlurmUnavailable(UserError):
    """A Slurm client command could not answer."""


@dataclass(frozen=True)
class JobState:
    state: str  # Slurm's word: PENDING, RUNNING, CANCELLED, ...
    reason: str = ""
    nodes: str = ""  # the nodes it runs on, as Slurm writes them (hnode[1-2]); empty while pending

    @property
    def active(self) -> bool:
        return self.state in ACTIVE

    def describe(self, job: str) -> str:
        reason = f" ({self.reason})" if self.reason and self.reason not in ("None", "(null)") else ""
        return f"Slurm job {job} {self.state.lower()}{reason}"


def _client(*cmd: str, ok_errors: tuple[str, ...] = ()) -> str:
    """A Slurm client's stdout; a failure is one line naming the command and Slurm's last word.
    Failures whose message contains one of `ok_errors` still return what was printed."""
    if shutil.which(cmd[0]) is None:
        raise SlurmUnavailable(f"{cmd[0]} is not on PATH: this machine is not a Slurm submit host")
    try:
        done = subprocess.run(list(cmd), capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise SlurmUnavailable(f"{cmd[0]} did not answer within {CLIENT_TIMEOUT_S} s (is slurmctld up?)") from None
    except OSError as err:
        raise SlurmUnavailable(f"{cmd[0]} could not be started: {err.strerror or err}") from None
    if done.returncode != 0 and not any(e in done.stderr for e in ok_errors):
        raise SlurmUnavailable(f"{cmd[0]} failed: {last_line(done.stderr) or f'exit code {done.returncode}'}")
    return done.stdout


def last_line(text: str) -> str:
    """Slurm's most telling line of an error: the last fatal/error line, else the last line."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    telling = [ln for ln in lines if re.search(r"\b(fatal|error)\b", ln, re.I)]
    return (telling or lines or [""])[-1]


def partition_gpus(partition: str | None) -> int:
    """GPUs per node of a partition (the default partition when None), from its nodes' GRES:
    the fewest any of its nodes has, 0 when a node has none."""
    out = _client("sinfo", "-h", "-o", "%P|%G", *(["-p", partition] if partition else []))
    rows = [ln.split("|", 1) for ln in out.splitlines() if "|" in ln]
    if partition is None:
        rows = [r for r in rows if r[0].endswith("*")]
        if not rows:
            raise SlurmUnavailable("this Slurm cluster has no default partition: give --partition")
    elif not rows:
        names = sorted({ln.split("|")[0].rstrip("*") for ln in _client("sinfo", "-h", "-o", "%P|").splitlines()})
        raise UserError(f"--partition {partition!r}: Slurm has no such partition (it has: {', '.join(names) or 'none'})")
    return min(_gpus(gres) for _, gres in rows)


def _gpus(gres: str) -> int:
    """GPUs in a node's GRES string, e.g. 'gpu:4', 'gpu:a100:8(S:0-1),shard:2', '(null)'."""
    total = 0
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).strip().split(":")
        if parts[0] == "gpu" and len(parts) >= 2 and parts[-1].isdigit():
            total += int(parts[-1])
    return total


def job_states(job_ids: list[str]) -> dict[str, JobState]:
    """State of each given Slurm job (array tasks as JOB_TASK) that Slurm still knows: squeue for
    jobs in the controller's memory, then sacct for the rest where accounting is on. Jobs that
    neither knows are left out."""
    ids = sorted({j for j in job_ids if SLURM_JOB_ID.fullmatch(j)})
    if not ids:
        return {}
    wanted = set(ids)
    out = _client("squeue", "-h", "-r", "-t", "all", "-o", "%i|%T|%r|%N", "-j", ",".join(sorted({i.split("_")[0] for i in ids})),
                  ok_errors=("Invalid job id",))
    states: dict[str, JobState] = {}
    for line in out.splitlines():
        job, state, reason, nodes = (line.strip().split("|") + ["", "", ""])[:4]
        if job in wanted and state:
            states[job] = JobState(state.split()[0], reason.strip(), nodes.strip() if state.startswith("RUNNING") else "")
    missing = [j for j in ids if j not in states]
    if missing and shutil.which("sacct") is not None:
        try:
            acct = _client("sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(missing))
        except SlurmUnavailable:
            return states  # accounting is off (or slurmdbd is down): squeue is all Slurm can say
        for line in acct.splitlines():
            job, _, state = line.strip().partition("|")
            if job in wanted and state:
                states.setdefault(job, JobState(state.split()[0]))
    return states
