"""Throw-away Slurm clusters for tests: munged, slurmctld and slurmd under one folder.

Debian's Slurm (22.05 on bookworm) is installed when missing. The cluster runs as root without
cgroups or accounting (the common small-cluster setup), with its own munge socket and key, and
is stopped by its daemons' PIDs after its jobs are cancelled (job processes outlive slurmd).
GPUs are faked with character devices (/dev/null's numbers) listed in gres.conf, so a GPU
partition schedules GPUs while the jobs themselves run on the CPU.

A cluster of several nodes (`nodes=2`) puts the controller and each slurmd in a network namespace
of its own (`ip netns`), each with its own hostname (a UTS namespace) and an address on a private
bridge that lives inside the controller's namespace: 10.213.N.1 for the controller, .11, .12 for
the nodes. Names resolve through a hosts file of the cluster's own, bind-mounted over /etc/hosts
in a private mount namespace of each command (so /sys, and the cgroups slurmd reads there, stay
this machine's). Nothing is added to this machine's own network; stop() removes the namespaces. Slurm clients (and harness) run inside the controller's
namespace, the login node: `cluster.prefix`. A node can be cut off and killed (lose_node) and
brought back (restore_node), as a machine that fails and is repaired.

Usage: `with SlurmCluster(tmp, gpus=2) as cluster: subprocess.run([*cluster.prefix, ...], env=cluster.env)`.
Run this file (`python tests/slurmkit.py`) to time a start and stop.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from filelock import FileLock

from conftest import free_port

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue")


class ClusterUnavailable(RuntimeError):
    """This machine cannot run a test cluster (not root, no apt, the daemons do not start)."""


def _installed() -> bool:
    return all(shutil.which(d) or Path("/usr/sbin", d).exists() for d in DAEMONS)


def install() -> None:
    """Install Debian's Slurm and munge when missing (root and apt needed); one process at a time
    (pytest's workers start clusters side by side, and apt holds one lock)."""
    if _installed():
        return
    if os.geteuid() != 0:
        raise ClusterUnavailable("Slurm is not installed and installing it needs root")
    if shutil.which("apt-get") is None:
        raise ClusterUnavailable("Slurm is not installed and this machine has no apt-get")
    with FileLock(str(Path(tempfile.gettempdir()) / "harness-test-slurm-install.lock")):
        if not _installed():
            _apt_install()


def _apt_install() -> None:
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise ClusterUnavailable(f"apt-get install {' '.join(PACKAGES)} failed: {done.stderr.strip()[-300:]}")


def _daemon(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and done.returncode != 0:
        raise ClusterUnavailable(f"ip {' '.join(args)} failed: {done.stderr.strip()}")
    return done


class SlurmCluster:
    """`nodes` nodes of `cpus` CPUs and `gpus` fake GPUs each, in one partition, `gpu` or `cpu`.
    One node is this machine as it is; several are network namespaces (see the module's doc)."""

    def __init__(self, root: Path, gpus: int = 0, cpus: int | None = None, nodes: int = 1,
                 slurmd_timeout_s: int = 300):
        self.root, self.gpus, self.nodes = Path(root), gpus, nodes
        self.slurmd_timeout_s = slurmd_timeout_s  # how long a silent node stays up in Slurm's eyes
        self.cpus = cpus or os.cpu_count() or 1
        self.partition = "gpu" if gpus else "cpu"
        self.conf = self.root / "etc" / "slurm.conf"
        self.env = os.environ | {"SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []
        self.node_procs: dict[str, subprocess.Popen] = {}
        self.started_s: float | None = None
        tag = os.urandom(3).hex()
        self.namespaces: dict[str, str] = {}  # host name -> network namespace
        if nodes > 1:
            self.controller = "hctl"
            self.hostnames = [f"hnode{i + 1}" for i in range(nodes)]
            self.namespaces = {name: f"h{tag}-{name}" for name in (self.controller, *self.hostnames)}
            subnet = 16 + int(tag[:2], 16) % 200
            self.addresses = {self.controller: f"10.213.{subnet}.1"} | {
                name: f"10.213.{subnet}.{11 + i}" for i, name in enumerate(self.hostnames)}
        else:
            self.controller = socket.gethostname().split(".")[0]
            self.hostnames = [self.controller]
            self.addresses = {self.controller: "127.0.0.1"}

    @property
    def prefix(self) -> list[str]:
        """What a command is prefixed with to run on the login node (the controller's namespace)."""
        return self.inside(self.controller)

    def inside(self, host: str) -> list[str]:
        """The prefix that runs a command on `host`: its network, its hostname, its hosts file
        (nothing for the one-node cluster)."""
        if not self.namespaces:
            return []
        script = f'mount --bind {self.root / "etc" / "hosts"} /etc/hosts && hostname {host} && exec "$@"'
        return ["nsenter", f"--net=/run/netns/{self.namespaces[host]}", "unshare", "--mount", "--uts", "--",
                "sh", "-c", script, "sh"]

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
        host = self.controller
        gres = ""
        for node in self.hostnames:
            (r / "spool" / node).mkdir(parents=True, exist_ok=True)
        if self.gpus:
            for i in range(self.gpus):
                dev = r / "dev" / f"gpu{i}"
                if not dev.exists():
                    os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a character device, like /dev/null
            (r / "etc" / "gres.conf").write_text("".join(
                f"NodeName={node} Name=gpu File={r / 'dev' / f'gpu{i}'}\n"
                for node in self.hostnames for i in range(self.gpus)))
            gres = f" Gres=gpu:{self.gpus}"
        nodes = "\n".join(f"NodeName={node} NodeAddr={self.addresses[node]} CPUs={self.cpus}{gres} State=UNKNOWN"
                           for node in self.hostnames)
        self.conf.write_text(f"""\
ClusterName=harness-test
SlurmctldHost={host}({self.addresses[host]})
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket},cred_expire=10
StateSaveLocation={r / 'state'}
SlurmdSpoolDir={r / 'spool' / '%n'}
SlurmctldPidFile={r / 'slurmctld.pid'}
SlurmdPidFile={r / 'slurmd.%n.pid'}
SlurmctldLogFile={r / 'log' / 'slurmctld.log'}
SlurmdLogFile={r / 'log' / 'slurmd.%n.log'}
SlurmdTimeout={self.slurmd_timeout_s}
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
{nodes}
PartitionName={self.partition} Nodes={','.join(self.hostnames)} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self, timeout: float = 60) -> "SlurmCluster":
        install()
        if os.geteuid() != 0:
            raise ClusterUnavailable("the test cluster's daemons run as root (SlurmUser=root)")
        if self.namespaces and (shutil.which("ip") is None or shutil.which("unshare") is None
                                or shutil.which("nsenter") is None):
            raise ClusterUnavailable("a cluster of several nodes needs ip (iproute2), nsenter and unshare (util-linux)")
        t0 = time.monotonic()
        self._configure()
        r = self.root
        try:
            self._network()
        except ClusterUnavailable:
            self._unnetwork()
            raise
        self._spawn([_daemon("munged"), "-F", "-f", f"--socket={self.munge_socket}",
                     f"--key-file={r / 'munge-key' / 'munge.key'}", f"--pid-file={r / 'munge-run' / 'munged.pid'}",
                     f"--seed-file={r / 'munge-run' / 'munged.seed'}", f"--log-file={r / 'log' / 'munged.log'}"],
                    "munged")
        self._wait(lambda: self.munge_socket.exists(), timeout, "munged did not open its socket")
        self._spawn([*self.inside(self.controller), _daemon("slurmctld"), "-D", "-c", "-i", "-f", str(self.conf)],
                    "slurmctld")
        for node in self.hostnames:
            self._start_slurmd(node)
        self._wait(self._idle, timeout, "the nodes did not become idle")
        self.started_s = time.monotonic() - t0
        return self

    def _start_slurmd(self, node: str) -> None:
        self._spawn([*self.inside(node), _daemon("slurmd"), "-D", "-N", node, "-f", str(self.conf)], f"slurmd.{node}")
        self.node_procs[node] = self.procs[-1]

    def _network(self) -> None:
        """The namespaces, the bridge inside the controller's, a veth link per node, hosts files."""
        if not self.namespaces:
            return
        ctl = self.namespaces[self.controller]
        (self.root / "etc" / "hosts").write_text(
            "127.0.0.1 localhost\n" + "".join(f"{a} {h}\n" for h, a in self.addresses.items()))
        for ns in self.namespaces.values():
            _ip("netns", "add", ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ctl, "link", "add", "br0", "type", "bridge")
        _ip("-n", ctl, "addr", "add", f"{self.addresses[self.controller]}/24", "dev", "br0")
        _ip("-n", ctl, "link", "set", "br0", "up")
        for i, node in enumerate(self.hostnames):
            ns = self.namespaces[node]
            _ip("-n", ctl, "link", "add", f"port{i}", "type", "veth", "peer", "name", "eth0", "netns", ns)
            _ip("-n", ctl, "link", "set", f"port{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.addresses[node]}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def _unnetwork(self) -> None:
        for ns in self.namespaces.values():
            for pid in _ip("netns", "pids", ns, check=False).stdout.split():
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (ProcessLookupError, ValueError):
                    pass
            _ip("netns", "delete", ns, check=False)

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
        states = self.node_states()
        return bool(states) and all(state == "idle" for state in states.values())

    def node_states(self) -> dict[str, str]:
        """Node -> Slurm's state of it (idle, allocated, down*, ...)."""
        out = self.run("sinfo", "-h", "-N", "-o", "%N %T", check=False)
        return dict(ln.split() for ln in out.stdout.splitlines() if len(ln.split()) == 2) if out.returncode == 0 else {}

    # ------------------------------------------------------------------ failures

    def lose_node(self, node: str) -> list[int]:
        """The node fails as a machine does: its link goes dead first (no packet of its closing
        sockets reaches anyone), then every process on it is killed, slurmd included. Returns the pids."""
        ns = self.namespaces[node]
        _ip("-n", ns, "link", "set", "eth0", "down")
        pids = [int(p) for p in _ip("netns", "pids", ns).stdout.split()]
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.node_procs[node].wait(timeout=30)
        return pids

    def restore_node(self, node: str) -> None:
        """The repaired node comes back: its link up, its slurmd started (ReturnToService=2 lets it in)."""
        _ip("-n", self.namespaces[node], "link", "set", "eth0", "up")
        self._start_slurmd(node)

    # ------------------------------------------------------------------ use

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster (on the login node)."""
        return subprocess.run([*self.prefix, *cmd], env=self.env, capture_output=True, text=True, check=check, timeout=60)

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
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self.procs.clear()
        self._unnetwork()

    def __enter__(self) -> "SlurmCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


if __name__ == "__main__":
    import tempfile

    for gpus, nodes in ((0, 1), (2, 1), (0, 2)):
        with tempfile.TemporaryDirectory() as tmp, SlurmCluster(Path(tmp), gpus=gpus, nodes=nodes) as cluster:
            t0 = time.monotonic()
            job = cluster.run("sbatch", "--parsable", f"--nodes={nodes}", "--wrap",
                              "srun hostname; srun getent hosts $(hostname); echo $CUDA_VISIBLE_DEVICES",
                              *(["--gpus-per-node=1"] if gpus else []), f"--output={tmp}/out.txt").stdout.strip()
            cluster.wait_empty()
            print(f"{cluster.partition} cluster of {nodes} node(s): started in {cluster.started_s:.2f} s; job {job} "
                  f"ran in {time.monotonic() - t0:.2f} s: {Path(tmp, 'out.txt').read_text().split()}")
