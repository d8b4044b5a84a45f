"""Sweeps as Slurm jobs (or local jobs through the same code), via submitit.

`harness sweep ... --launcher slurm` plans the sweep exactly as the default launcher does, then
submits every run that the results store does not hold yet as one job of a Slurm job array
(at most --slurm-array-parallelism at once). Each job runs harness.launch.execute for its run
inside the allocation: torchrun with --gpus-per-node processes on each of its --nnodes nodes,
the nodes meeting at a c10d rendezvous on the first node; only the first node records the
result, in the same results store (a shared filesystem). `--launcher local` runs the very same
job callable through submitit's LocalExecutor, as local subprocesses, which is how it is tested
without Slurm.

Preemption and time limits: submitit asks Slurm to signal a job (USR2) shortly before its time
limit, and on preemption. The job callable is checkpointable: submitit then requeues it with
the same arguments, and the requeued job resumes the run from its newest checkpoint (the
training worker writes one every `checkpoint_every` steps, about ten per run by default). A run
killed by Slurm's SIGTERM is not recorded as a failed attempt. A run that really fails is retried
(--retries) inside its job; a run the store holds as done is never submitted again, so
re-running the sweep command resubmits only what is missing.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.errors import UserError
from harness.files import atomic_write_bytes
from harness.launch import Launcher, default_nproc
from harness.procs import is_running
from harness.record import COMPLETED, FAILED, FINAL, RetryPolicy, RunSpec
from harness.results import ResultsStore

LAUNCHERS = ("torchrun", "local", "slurm")
DEFAULT_SLURM_TIME = "24:00:00"
DEFAULT_LOCAL_TIME_MIN = 7 * 24 * 60
_TERMINATING = threading.Event()


# ----------------------------------------------------------------------------- options


def parse_time(value: str) -> int:
    """Minutes from a Slurm time ('MM', 'MM:SS', 'HH:MM:SS', 'D-HH[:MM[:SS]]') or '90m', '4h', '2d'."""
    text = value.strip().lower()
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([mhd])", text)
    if m:
        return max(1, math.ceil(float(m.group(1)) * {"m": 1, "h": 60, "d": 1440}[m.group(2)]))
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise UserError(f"--time {value!r}: use minutes, HH:MM:SS, D-HH:MM:SS, or 90m / 4h / 2d")
    days, a, b, c = m.groups()
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        seconds = int(days) * 86400 + int(a) * 3600 + int(b or 0) * 60 + int(c or 0)
    elif c is not None:  # HH:MM:SS
        seconds = int(a) * 3600 + int(b) * 60 + int(c)
    elif b is not None:  # MM:SS
        seconds = int(a) * 60 + int(b)
    else:  # MM
        seconds = int(a) * 60
    if seconds <= 0:
        raise UserError(f"--time {value!r} must be positive")
    return max(1, math.ceil(seconds / 60))


@dataclass(frozen=True)
class ClusterOptions:
    """The sweep command's launcher options."""

    launcher: str = "torchrun"
    partition: str | None = None
    gpus_per_node: int | None = None
    time: str | None = None
    array_parallelism: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    slurm_args: tuple[str, ...] = ()
    slurm_setup: tuple[str, ...] = ()
    wait: bool | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def check(self) -> None:
        """One clear UserError for a bad combination; nothing is submitted before this passes."""
        if self.launcher not in LAUNCHERS:
            raise UserError(f"--launcher {self.launcher!r}: allowed: {', '.join(LAUNCHERS)}")
        slurm_only = {"--partition": self.partition, "--slurm-array-parallelism": self.array_parallelism,
                      "--cpus-per-task": self.cpus_per_task, "--mem-gb": self.mem_gb,
                      "--slurm-arg": self.slurm_args or None, "--slurm-setup": self.slurm_setup or None}
        given = [flag for flag, v in slurm_only.items() if v is not None]
        if self.launcher != "slurm" and given:
            raise UserError(f"{given[0]} is a Slurm option: use it with --launcher slurm")
        if self.launcher == "torchrun":
            if self.gpus_per_node is not None:
                raise UserError("--gpus-per-node is for --launcher slurm/local; with torchrun use --nproc")
            if self.time is not None:
                raise UserError("--time is for --launcher slurm/local (a job's time limit)")
            if self.wait is not None:
                raise UserError("--wait/--no-wait is for --launcher slurm/local")
            return
        for flag, v in (("--gpus-per-node", self.gpus_per_node), ("--slurm-array-parallelism", self.array_parallelism),
                        ("--cpus-per-task", self.cpus_per_task)):
            if v is not None and v < 1:
                raise UserError(f"{flag} must be >= 1, got {v}")
        if self.mem_gb is not None and self.mem_gb <= 0:
            raise UserError(f"--mem-gb must be > 0, got {self.mem_gb}")
        if self.time is not None:
            parse_time(self.time)
        self.slurm_additional()
        if self.launcher == "slurm" and (shutil.which("sbatch") is None or shutil.which("srun") is None):
            raise UserError("--launcher slurm: this machine has no Slurm (no sbatch on PATH); submit from a "
                            "Slurm login node, or run here with --launcher torchrun (or local)")
        try:
            import submitit  # noqa: F401
        except ImportError:
            raise UserError(f"--launcher {self.launcher} needs submitit: pip install 'harness[slurm]'") from None

    def slurm_additional(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for item in self.slurm_args:
            key, sep, value = item.partition("=")
            key = key.strip().lstrip("-")
            if not key or not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]*", key):
                raise UserError(f"--slurm-arg {item!r}: expected KEY=VALUE (an sbatch option), e.g. account=myproj")
            out[key.replace("-", "_")] = value.strip() if sep else True
        return out

    def nproc(self, nproc: int | None, default: int) -> int:
        """Processes (GPUs) per node per run: --gpus-per-node, else --nproc, else `default`."""
        if self.gpus_per_node is not None and nproc is not None and nproc != self.gpus_per_node:
            raise UserError(f"--nproc {nproc} and --gpus-per-node {self.gpus_per_node} disagree; give one")
        return self.gpus_per_node or nproc or default

    def run_launcher(self, nproc: int | None, nnodes: int, node_rank: int, rdzv_endpoint: str) -> Launcher:
        """The Launcher a plan is built with: torchrun here, or the shape of each Slurm/local job."""
        if self.launcher == "torchrun":
            return Launcher.checked(nproc, nnodes, node_rank, rdzv_endpoint)
        if node_rank or rdzv_endpoint:
            raise UserError(f"--node-rank and --rdzv-endpoint are set per job by --launcher {self.launcher}; drop them")
        return Launcher.checked(self.nproc(nproc, 1 if self.launcher == "slurm" else default_nproc()), nnodes)


# ----------------------------------------------------------------------------- the job


@dataclass(frozen=True)
class JobLauncher(Launcher):
    """A Launcher that does not record a run whose job Slurm is terminating (preemption)."""

    @property
    def records(self) -> bool:
        return self.node_rank == 0 and not _TERMINATING.is_set()


def _on_sigterm(signum, frame) -> None:  # noqa: ARG001
    # Slurm sends SIGTERM to every process of a preempted or cancelled job: torchrun dies too,
    # and that attempt must not be recorded as a failure. submitit requeues on its own signal.
    _TERMINATING.set()


class RunJob:
    """One run as a submitit job: resumable, requeued with the same arguments on preemption."""

    def __init__(self, spec: dict[str, Any], results: str, nproc: int, retries: int, tensorboard: bool = False):
        self.spec, self.results, self.nproc = spec, results, nproc
        self.retries, self.tensorboard = retries, tensorboard

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this on preemption/timeout: requeue the same run (it resumes from its checkpoint)."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)

    def __call__(self) -> dict[str, Any]:
        import submitit

        signal.signal(signal.SIGTERM, _on_sigterm)
        env = submitit.JobEnvironment()
        spec = RunSpec(**self.spec)
        store = ResultsStore(Path(self.results))
        endpoint = ""
        if env.num_nodes > 1:
            port = 20000 + zlib.crc32(str(env.job_id).encode()) % 20000
            endpoint = f"{env.hostnames[0]}:{port}"
        launcher = JobLauncher(nproc=self.nproc, nnodes=env.num_nodes, node_rank=env.node, rdzv_endpoint=endpoint)
        if env.node:
            return self._follow(spec, store, launcher)
        return self._lead(spec, store, launcher)

    def _lead(self, spec: RunSpec, store: ResultsStore, launcher: JobLauncher) -> dict[str, Any]:
        from harness.launch import execute

        tb = None
        if self.tensorboard:
            from harness.tblog import TensorBoardLog

            tb = TensorBoardLog(store.root)
        policy = RetryPolicy(self.retries)
        while True:
            history = store.history(spec.sweep, spec.run_id)
            status = policy.settled(history.statuses)
            if status in FINAL:
                return {"run_id": spec.run_id, "status": status}
            if status == FAILED:
                raise RuntimeError(f"run {spec.run_id} failed {len(history.rows)} time(s): "
                                   f"{history.rows[-1]['reason']} (log: {store.run_dir(spec.run_id) / 'log.txt'})")
            result = execute(spec, store, launcher,
                             on_progress=(lambda p: tb.progress(spec, p)) if tb else None,
                             should_run=lambda: policy.settled(store.history(spec.sweep, spec.run_id).statuses) is None)
            if result is None:  # another process (a duplicate job, a local sweep) runs it: wait for it
                time.sleep(15)
                continue
            if tb is not None:
                tb.finish(spec, result.row.columns() if result.row else None)
            if _TERMINATING.is_set():  # preempted (the attempt was not recorded): Slurm requeues the job now
                time.sleep(600)
                raise RuntimeError(f"run {spec.run_id} was terminated by Slurm")

    def _follow(self, spec: RunSpec, store: ResultsStore, launcher: JobLauncher) -> dict[str, Any]:
        """Nodes after the first run torchrun for the same run and leave the recording to node 0."""
        run_dir = store.run_dir(spec.run_id)
        spec_path = run_dir / "spec.json"
        for _ in range(1 + self.retries):
            if any(st in FINAL for st in store.history(spec.sweep, spec.run_id).statuses) or (run_dir / "result.json").exists():
                break
            with (run_dir / f"log.node{launcher.node_rank}.txt").open("a") as log:
                subprocess.run(launcher.command(spec_path, spec.run_id), stdout=log, stderr=subprocess.STDOUT,
                               env=os.environ | {"PYTHONUNBUFFERED": "1"}, check=False)
        return {"run_id": spec.run_id, "node": launcher.node_rank}


# ----------------------------------------------------------------------------- submission


def _executor(opts: ClusterOptions, folder: Path, name: str, nproc: int, nnodes: int, parallel: int):
    import submitit

    if opts.launcher == "slurm":
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm", slurm_max_num_timeout=100)
        params: dict[str, Any] = {
            "name": name, "timeout_min": parse_time(opts.time or DEFAULT_SLURM_TIME),
            "nodes": nnodes, "tasks_per_node": 1, "gpus_per_node": nproc,
            "slurm_array_parallelism": parallel, "slurm_signal_delay_s": 120,
        }
        if opts.partition:
            params["slurm_partition"] = opts.partition
        if opts.cpus_per_task:
            params["cpus_per_task"] = opts.cpus_per_task
        if opts.mem_gb:
            params["mem_gb"] = opts.mem_gb
        extra = opts.slurm_additional()
        extra.setdefault("requeue", True)
        params["slurm_additional_parameters"] = extra
        if opts.slurm_setup:
            params["slurm_setup"] = list(opts.slurm_setup)
    else:
        if nnodes > 1:
            raise UserError("--launcher local runs on this machine only: use --nnodes 1")
        executor = submitit.AutoExecutor(folder=str(folder), cluster="local")
        params = {"name": name, "timeout_min": parse_time(opts.time) if opts.time else DEFAULT_LOCAL_TIME_MIN,
                  "nodes": 1, "tasks_per_node": 1}
        if opts.gpus_per_node:
            params["gpus_per_node"] = nproc
    executor.update_parameters(**params)
    return executor


def submit_plan(plan, opts: ClusterOptions, retries: int, console, tensorboard: bool = False) -> int:
    """Submit the plan's missing runs as jobs; wait for them (local, or --wait). Returns an exit code.

    An adaptive plan goes round by round (harness.adaptive.rounds): each round's jobs are waited
    for before the next round is decided; with --no-wait one round is submitted and the same
    command, run again once it has finished, decides and submits the next."""
    from harness.adaptive import rounds
    from harness.planfile import save_plan

    plan.store.ensure_writable()
    save_plan(plan)
    if plan.adaptive is None:
        return _submit_runs(plan, plan.specs, opts, retries, console, tensorboard)
    policy, code = RetryPolicy(retries), 0
    adaptive_opts = dataclasses.replace(opts, wait=opts.wait is not False)
    for specs in rounds(plan, console):
        code = max(code, _submit_runs(plan, specs, adaptive_opts, retries, console, tensorboard))
        unsettled = [s for s in specs if policy.settled(plan.store.history(s.sweep, s.run_id).statuses) is None]
        if unsettled:
            console.print(f"round of seed {specs[0].seed} is still running ({len(unsettled)} run(s)); run the same "
                          "command again once it has finished to decide and submit the next round")
            return code
    return code


def _submit_runs(plan, specs: list[RunSpec], opts: ClusterOptions, retries: int, console, tensorboard: bool) -> int:
    from harness.planfile import record_jobs
    from harness.sweep import describe

    store: ResultsStore = plan.store
    results = store.root.resolve()
    policy = RetryPolicy(retries)
    pending, done, busy, failed = [], 0, 0, []
    for spec in specs:
        status = policy.settled(store.history(spec.sweep, spec.run_id).statuses)
        if status in FINAL:
            done += 1
        elif is_running(store.run_dir(spec.run_id)):
            busy += 1
        elif status == FAILED:
            failed.append(spec)
        else:
            pending.append(spec)
    for spec in failed:
        console.print(f"[yellow]{spec.arm} seed {spec.seed}[/yellow] has failed "
                      f"{len(store.history(spec.sweep, spec.run_id).rows)} times; not resubmitted "
                      f"(see {store.run_dir(spec.run_id)}/log.txt)")
    console.print(f"{len(specs)} runs: {done} done, {busy} running elsewhere, {len(failed)} failed, "
                  f"{len(pending)} to submit ({opts.launcher})")
    if not pending:
        return 0 if not failed else 1
    for spec in pending:  # every node of a multi-node job reads the spec from here
        run_dir = store.run_dir(spec.run_id)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "spec.json", spec.to_json().encode())
    nproc, nnodes = plan.launcher.nproc, plan.launcher.nnodes
    if opts.launcher == "slurm":
        parallel = opts.array_parallelism or len(pending)
    else:
        parallel = max(1, min(len(pending), (os.cpu_count() or 1) // nproc))
    folder = results / "submitit" / re.sub(r"[^A-Za-z0-9._+,=-]+", "_", plan.sweep)
    try:
        executor = _executor(opts, folder, f"harness-{plan.sweep}", nproc, nnodes, parallel)
    except (RuntimeError, ValueError, NameError) as err:
        raise UserError(f"--launcher {opts.launcher}: submitit refused the job parameters: "
                        f"{str(err).strip().splitlines()[0]}") from None

    def job_for(spec: RunSpec) -> RunJob:
        return RunJob(dataclasses.asdict(spec), str(results), nproc, retries, tensorboard)

    wait = opts.wait if opts.wait is not None else opts.launcher == "local"
    jobs: dict[str, Any] = {}
    running: dict[str, tuple[RunSpec, Any]] = {}
    queue = list(pending)
    try:
        if opts.launcher == "slurm":
            with executor.batch():
                submitted = [(spec, executor.submit(job_for(spec))) for spec in queue]
            queue = []
            for spec, job in submitted:
                jobs[spec.run_id] = job
            record_jobs(results, plan.sweep, {rid: str(job.job_id) for rid, job in jobs.items()})
            first = submitted[0][1].job_id.split("_")[0]
            console.print(f"submitted {len(submitted)} runs as Slurm job array {first} "
                          f"(at most {parallel} at once); logs in {folder}")
        if not wait:
            console.print(f"watch it with: harness status --sweep {plan.sweep} --results {store.root}")
            return 0
        outcome_ok = not failed
        running.update({rid: (next(s for s in pending if s.run_id == rid), j) for rid, j in jobs.items()})
        while queue or running:
            while queue and len(running) < parallel:
                spec = queue.pop(0)
                job = executor.submit(job_for(spec))
                running[spec.run_id] = (spec, job)
                record_jobs(results, plan.sweep, {spec.run_id: str(job.job_id)})
                console.print(f"started {spec.arm} seed {spec.seed} as local job {job.job_id}")
            for run_id, (spec, job) in list(running.items()):
                if not job.done():
                    continue
                del running[run_id]
                label = f"{spec.arm} seed {spec.seed}"
                try:
                    job.result()
                except Exception as err:  # noqa: BLE001 - the job's own failure, reported per run
                    outcome_ok = False
                    last = str(err).strip().splitlines()
                    console.print(f"[yellow]{label}[/yellow]: job {job.job_id} failed: "
                                  f"{last[-1] if last else type(err).__name__} (logs: {job.paths.stdout.parent})")
                    continue
                status = policy.settled(store.history(spec.sweep, spec.run_id).statuses) or FAILED
                outcome_ok &= status == COMPLETED
                console.print(describe(store, spec, status, label))
            time.sleep(1.0)
        return 0 if outcome_ok else 1
    except KeyboardInterrupt:
        if opts.launcher == "slurm":
            console.print(f"\nstopped waiting for sweep {plan.sweep}; the Slurm jobs go on "
                          f"(harness status --sweep {plan.sweep} --results {store.root})")
        else:
            for _, job in running.values():
                job.cancel(check=False)
            console.print(f"\nstopped sweep {plan.sweep}; run the same command again to continue")
        raise SystemExit(130) from None
