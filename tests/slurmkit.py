"""A throw-away single-node Slurm cluster for tests: munged, slurmctld and slurmd under one folder.

Debian's Slurm (22.05 on bookworm) is installed when missing. The cluster runs as root without
cgroups or accounting (the common small-cluster setup), with its own munge socket and key, and
is stopped by its daemons' PIDs after its jobs are cancelled (job processes outlive slurmd).
GPUs are faked with character devices (/dev/null's numbers) listed in gres.conf, so a GPU
partition schedules GPUs while the jobs themselves run on the CPU.

Usage: `with SlurmCluster(tmp, gpus=2) as cluster: subprocess.run([...], env=cluster.env)`.
Run this file (`python tests/slurmkit.py`) to time a start and stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue")


class ClusterUnavailable(RuntimeError):
    """This machine cannot run a test cluster (not root, no apt, the daemons do not start)."""


def install() -> None:
    """Install Debian's Slurm and munge when missing (root and apt needed)."""
    if all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS):
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable("Slurm is not installed and installing it needs root")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable("Slurm is not installed and this machine has no apt-get")
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr.strip()[-300:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _daemon(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """One node (this machine, `cpus` CPUs, `gpus` fake GPUs) in one partition, `gpu` or `cpu`."""

    def __init__(self, root: Path, gpus: int = 0, cpus: int | None = None):
        self.root, self.gpus = Path(root), gpus
        self.cpus = cpus or os.cpu_count() or 1
        self.partition = "gpu" if gpus else "cpu"
        self.conf = self.root / "etc" / "slurm.conf"
        self.env = os.environ | {"SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []
        self.started_s: float | None = None

    # ------------------------------------------------------------------ setup

    def _configure(self) -> None:
        r = self.root
        r.mkdir(parents=True, exist_ok=True)
        r.chmod(0o755)  # munged wants every folder above its socket searchable
        for sub, mode in (("munge-run", 0o755), ("munge-key", 0o700), ("etc", 0o755), ("state", 0o755),
                          ("spool", 0o755), ("log", 0o755), ("dev", 0o755)):
            (r / sub).mkdir(parents=True, exist_ok=True)
            (r / sub).chmod(mode)
        key = r / "munge-key" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.munge_socket = r / "munge-run" / "munge.socket.2"
        host = socket.gethostname().split(".")[0]
        gres = ""
        if self.gpus:
            for i in range(self.gpus):
                dev = r / "dev" / f"gpu{i}"
                if not dev.exists():
                    os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null
            (r / "etc" / "gres.conf").write_text(
                "".join(f"NodeName={host} Name=gpu File={r / 'dev' / f'gpu{i}'}\n" for i in range(self.gpus)))
            gres = f" Gres=gpu:{self.gpus}"
        self.conf.write_text(f"""\
ClusterName=harness-test
SlurmctldHost={host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerParameters=sched_interval=2
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=300
{'GresTypes=gpu' if self.gpus else ''}
NodeName={host} NodeAddr=127.0.0.1 CPUs={self.cpus}{gres} State=UNKNOWN
PartitionName={self.partition} Nodes={host} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout: float = 60) -> "SlurmCluster":
        install()
        if os.geteuid() != 0:
            raise ClusterUnavailable("the test cluster's daemons run as root (SlurmUser=root)")
        t0 = time.monotonic()
        self._configure()
        r = self.root
        self._spawn([_daemon("munged"), "-F", "-f", f"--socket={self.munge_socket}",
                     f"--key-file={r / 'munge-key' / 'munge.key'}", f"--pid-file={r / 'munge-run' / 'munged.pid'}",
                     f"--seed-file={r / 'munge-run' / 'munged.seed'}", f"--log-file={r / 'log' / 'munged.log'}"],
                    "munged")
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged did not open its socket")
        self._spawn([_daemon("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)], "slurmctld")
        self._spawn([_daemon("slurmd"), "-D", "-f", str(self.conf)], "slurmd")
        self._wait(self._idle, timeout, "the node did not become idle")
        self.started_s = time.monotonic() - t0
        return self

    def _spawn(self, cmd: list[str], name: str) -> None:
        log = (self.root / "log" / f"{name}.out").open("w")
        self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                           start_new_session=True))

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                logs = "\n".join(f"--- {p.name}\n{p.read_text()[-1500:]}" for p in (self.root / "log").glob("*")
                                 if p.is_file())
                self.stop()
                raise ClusterUnavailable(f"{what}{' (a daemon exited)' if dead else ''}\n{logs}")
            time.sleep(0.1)

    def _idle(self) -> bool:
        out = self.run("sinfo", "-h", "-o", "%T", check=False)
        return out.returncode == 0 and out.stdout.strip().startswith("idle")

    # ------------------------------------------------------------------ use

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        return subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, check=check, timeout=60)

    def jobs(self) -> dict[str, str]:
        """Job id (array tasks as JOB_TASK) -> state, for every job Slurm still knows."""
        out = self.run("squeue", "-h", "-r", "-o", "%i %T").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def wait_empty(self, timeout: float = 300) -> None:
        """Until no job is pending or running."""
        deadline = time.monotonic() + timeout
        while any(s in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED") for s in self.jobs().values()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"jobs still queued after {timeout:g} s: {self.jobs()}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Cancel every job, wait for its processes to go, then stop the daemons."""
        if any(p.poll() is None for p in self.procs):
            self.run("scancel", "--user=root", check=False)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and self.run("squeue", "-h", check=False).stdout.strip():
                time.sleep(0.3)
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    import tempfile

    for gpus in (0, 2):
        with tempfile.TemporaryDirectory() as tmp, SlurmCluster(Path(tmp), gpus=gpus) as cluster:
            t0 = time.monotonic()
            job = cluster.run("sbatch", "--parsable", "--wrap", "hostname; echo $CUDA_VISIBLE_DEVICES",
                              *(["--gpus-per-node=1"] if gpus else []), f"--output={tmp}/out.txt").stdout.strip()
            cluster.wait_empty()
            print(f"{cluster.partition} cluster: started in {cluster.started_s:.2f} s; job {job} ran in "
                  f"{time.monotonic() - t0:.2f} s: {Path(tmp, 'out.txt').read_text().split()}")
