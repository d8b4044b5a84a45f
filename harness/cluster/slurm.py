"""Sweeps as Slurm jobs (or local jobs through the same code), via submitit.

`harness sweep ... --launcher slurm` plans the sweep exactly as the default launcher (torchrun) does, then
submits every run that the results store does not hold yet, and that no live Slurm job of this
sweep already holds, as one job of a Slurm job array (at most --slurm-array-parallelism at
once). Each job is harness.cluster.slurmjob.RunJob: it runs the run in its allocation and records it in
the same results store (a shared filesystem), resuming from the checkpoint after a preemption
or time limit. `--launcher local` runs the very same job callable through submitit's
LocalExecutor, as local subprocesses.

GPUs per node follow the partition (sinfo): one per process where it has GPUs, none on a
CPU-only partition, unless --gpus-per-node says otherwise. What Slurm is asked goes through
harness.cluster.slurmctl: a Slurm that does not answer, or an sbatch that refuses, is one clear error
and leaves nothing that looks submitted. --wait polls squeue only, so it stays quiet on clusters
without accounting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.core.errors import UserError
from harness.core.files import atomic_write_bytes
from harness.launch.torchrun import Processes, default_nproc
from harness.launch.procs import is_running
from harness.store.planfile import read_jobs, record_jobs
from harness.store.record import COMPLETED, FAILED, FINAL, RetryPolicy, RunSpec
from harness.store.results import ResultsStore
from harness.cluster.slurmctl import SlurmUnavailable, job_states, last_line

LAUNCHERS = ("torchrun", "local", "slurm")
DEFAULT_SLURM_TIME = "24:00:00"
DEFAULT_LOCAL_TIME_MIN = 7 * 24 * 60
SIGNAL_DELAY_S = 120  # USR2 before the time limit (a quarter of the limit when that is shorter)
POLL_S = 5.0  # seconds between two squeue calls while waiting (HARNESS_SLURM_POLL_S overrides it)


def poll_seconds() -> float:
    raw = os.environ.get("HARNESS_SLURM_POLL_S", "").strip()
    try:
        value = float(raw) if raw else POLL_S
    except ValueError:
        value = float("nan")
    if not 0 < value < 3600:
        raise UserError(f"HARNESS_SLURM_POLL_S={raw!r}: expected seconds between 0 and 3600")
    return value


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
    """The sweep command's launcher options: which backend runs the plan (--launcher), and Slurm's."""

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
    partition_gpus: int | None = None  # GPUs per node of the Slurm partition, asked by with_partition_gpus

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
        if self.gpus_per_node is not None and self.gpus_per_node < 0:
            raise UserError(f"--gpus-per-node must be >= 0 (0: a CPU-only job), got {self.gpus_per_node}")
        for flag, v in (("--slurm-array-parallelism", self.array_parallelism), ("--cpus-per-task", self.cpus_per_task)):
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

    def checked(self) -> "ClusterOptions":
        """check(), then what the partition has (with_partition_gpus): the options a sweep runs with."""
        self.check()
        return self.with_partition_gpus()

    def with_partition_gpus(self) -> "ClusterOptions":
        """For Slurm without --gpus-per-node: what the partition has (sinfo), so that a CPU-only
        partition gets CPU-only jobs. This is also the first question to the controller: a Slurm
        that does not answer is one clear error before anything is written."""
        if self.launcher != "slurm":
            return self
        from harness.cluster.slurmctl import partition_gpus

        return dataclasses.replace(self, partition_gpus=partition_gpus(self.partition))

    def gpus(self, nproc: int) -> int:
        """GPUs per node to ask for: as given; else (Slurm) one per process where the partition
        has GPUs, none where it has none; else (local) none."""
        if self.gpus_per_node is not None:
            return self.gpus_per_node
        return nproc if self.partition_gpus else 0

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
        """Processes per node per run: --gpus-per-node (when > 0), else --nproc, else `default`."""
        if self.gpus_per_node and nproc is not None and nproc != self.gpus_per_node:
            raise UserError(f"--nproc {nproc} and --gpus-per-node {self.gpus_per_node} disagree; give one")
        return self.gpus_per_node or nproc or default

    def processes(self, nproc: int | None, nnodes: int, node_rank: int, rdzv_endpoint: str) -> Processes:
        """How each run's processes start, which its plan's budgets are built for: torchrun here, or the
        shape of each Slurm/local job."""
        if self.launcher == "torchrun":
            return Processes.checked(nproc, nnodes, node_rank, rdzv_endpoint)
        if node_rank or rdzv_endpoint:
            raise UserError(f"--node-rank and --rdzv-endpoint are set per job by --launcher {self.launcher}; drop them")
        if nnodes < 1:
            raise UserError(f"--nodes must be >= 1, got {nnodes}")
        if nnodes > 1 and self.launcher == "local":
            raise UserError("--launcher local runs on this machine only: use --nodes 1 (or --launcher slurm)")
        # each job meets at its own first node: the rendezvous endpoint is set per job (slurmjob)
        processes = dataclasses.replace(
            Processes.checked(self.nproc(nproc, 1 if self.launcher == "slurm" else default_nproc())), nnodes=nnodes)
        if self.launcher == "slurm":
            processes = dataclasses.replace(processes, gpus=self.gpus(processes.nproc) > 0)
        return processes


# ----------------------------------------------------------------------------- submission


def _executor(opts: ClusterOptions, folder: Path, name: str, nproc: int, nnodes: int, parallel: int):
    import submitit

    if opts.launcher == "slurm":
        timeout_min = parse_time(opts.time or DEFAULT_SLURM_TIME)
        executor = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm", slurm_max_num_timeout=100)
        params: dict[str, Any] = {
            "name": name, "timeout_min": timeout_min, "nodes": nnodes, "tasks_per_node": 1,
            "slurm_array_parallelism": parallel,
            # USR2 this long before the time limit: submitit requeues the job, which resumes the run
            "slurm_signal_delay_s": min(SIGNAL_DELAY_S, max(10, timeout_min * 60 // 4)),
        }
        gpus = opts.gpus(nproc)
        if gpus:
            params["gpus_per_node"] = gpus
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
        executor = submitit.AutoExecutor(folder=str(folder), cluster="local")
        params = {"name": name, "timeout_min": parse_time(opts.time) if opts.time else DEFAULT_LOCAL_TIME_MIN,
                  "nodes": 1, "tasks_per_node": 1}
        if opts.gpus_per_node:
            params["gpus_per_node"] = nproc
    executor.update_parameters(**params)
    return executor


def submit_plan(plan, processes: Processes, opts: ClusterOptions, retries: int, console,
                progress_log: Callable[[Path], Any] | None = None) -> int:
    """Submit the plan's missing runs as jobs; wait for them (local, or --wait). Returns an exit code.

    An adaptive plan goes round by round (harness.planning.adaptive.rounds): each round's jobs are waited
    for before the next round is decided; with --no-wait one round is submitted and the same
    command, run again once it has finished, decides and submits the next. A submission that
    Slurm refuses leaves the results folder as it was (no plan of a sweep that never started)."""
    from harness.planning.adaptive import rounds
    from harness.store.planfile import plan_path, save_plan

    store = ResultsStore(plan.results)
    store.ensure_writable()
    saved = plan_path(plan.results, plan.sweep)
    before = saved.read_bytes() if saved.exists() else None
    save_plan(plan)
    try:
        if plan.adaptive is None:
            return _submit_runs(plan, store, processes, plan.specs, opts, retries, console, progress_log)
        policy, code = RetryPolicy(retries), 0
        adaptive_opts = dataclasses.replace(opts, wait=opts.wait is not False)
        for specs in rounds(plan, console):
            code = max(code, _submit_runs(plan, store, processes, specs, adaptive_opts, retries, console, progress_log))
            unsettled = [s for s in specs if policy.settled(store.history(s.sweep, s.run_id).statuses) is None]
            if unsettled:
                console.print(f"round of seed {specs[0].seed} is still running ({len(unsettled)} run(s)); run the "
                              "same command again once it has finished to decide and submit the next round")
                return code
        return code
    except SubmissionRefused:
        if before is None and not read_jobs(plan.results, plan.sweep):
            saved.unlink(missing_ok=True)
        elif before is not None:
            atomic_write_bytes(saved, before)
        raise


class SubmissionRefused(UserError):
    """sbatch (or submitit before it) refused the jobs; nothing of them was left behind."""


@dataclass
class _Pending:
    """What a submission writes before sbatch answers, to be taken back if it refuses."""

    run_dirs: list[Path] = field(default_factory=list)
    folder_entries: set[str] = field(default_factory=set)

    def undo(self, folder: Path) -> None:
        for run_dir in self.run_dirs:
            shutil.rmtree(run_dir, ignore_errors=True)
        if folder.is_dir():
            for entry in folder.iterdir():
                if entry.name not in self.folder_entries:
                    shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)


def _submit_runs(plan, store: ResultsStore, processes: Processes, specs: list[RunSpec], opts: ClusterOptions,
                 retries: int, console, progress_log: Callable[[Path], Any] | None) -> int:
    """Submit the plan's runs that are neither settled nor running, then wait for them where asked."""
    results = store.root.resolve()
    policy = RetryPolicy(retries)
    pending, failed, queued = _to_submit(plan, store, specs, opts, policy, console)
    wait = opts.wait if opts.wait is not None else opts.launcher == "local"
    if not pending and not (wait and queued):
        return 0 if not failed else 1
    nproc, nnodes = processes.nproc, processes.nnodes
    folder = results / "submitit" / re.sub(r"[^A-Za-z0-9._+,=-]+", "_", plan.sweep)
    written = _Pending(folder_entries={e.name for e in folder.iterdir()} if folder.is_dir() else set())
    for spec in pending:  # every node of a multi-node job reads the spec from here
        run_dir = store.run_dir(spec.run_id)
        if not run_dir.exists():
            written.run_dirs.append(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(run_dir / "spec.json", spec.to_json().encode())
    if opts.launcher == "slurm":
        parallel = opts.array_parallelism or max(1, len(pending))
    else:
        parallel = max(1, min(len(pending), (os.cpu_count() or 1) // nproc))
    try:
        executor = _executor(opts, folder, f"harness-{plan.sweep}", nproc, nnodes, parallel)
    except (RuntimeError, ValueError, NameError) as err:
        written.undo(folder)
        raise SubmissionRefused(f"--launcher {opts.launcher}: submitit refused the job parameters: "
                                f"{str(err).strip().splitlines()[0]}") from None

    def job_for(spec: RunSpec):
        from harness.cluster.slurmjob import RunJob

        return RunJob(dataclasses.asdict(spec), str(results), nproc, retries, progress_log)

    if opts.launcher == "slurm":
        jobs: dict[str, str] = {}
        if pending:
            try:
                with contextlib.redirect_stderr(io.StringIO()), executor.batch():  # submitit prints sbatch's stderr
                    submitted = [(spec, executor.submit(job_for(spec))) for spec in pending]
            except Exception as err:  # noqa: BLE001 - sbatch's refusal, whatever submitit wraps it in
                written.undo(folder)
                raise SubmissionRefused(f"sbatch refused the jobs: {last_line(str(err)) or type(err).__name__}; "
                                        "nothing was submitted") from None
            jobs = {spec.run_id: str(job.job_id) for spec, job in submitted}
            record_jobs(results, plan.sweep, jobs)
            console.print(f"submitted {len(submitted)} runs as Slurm job array {submitted[0][1].job_id.split('_')[0]} "
                          f"(at most {parallel} at once); logs in {folder}")
        if not wait:
            console.print(f"watch it with: harness status --sweep {plan.sweep} --results {store.root}")
            return 0
        watched = {spec.run_id: (spec, jobs.get(spec.run_id) or queued[spec.run_id])
                   for spec in specs if spec.run_id in jobs or spec.run_id in queued}
        return _wait_for_slurm(store, plan.sweep, watched, policy, console, folder, ok=not failed)
    return _run_local(store, plan.sweep, executor, pending, job_for, parallel, policy, console, ok=not failed)


def _to_submit(plan, store: ResultsStore, specs: list[RunSpec], opts: ClusterOptions, policy: RetryPolicy,
               console) -> tuple[list[RunSpec], list[RunSpec], dict[str, str]]:
    """The runs to submit, those failed for good (said, not resubmitted), and run id -> job id of
    those already queued in Slurm; the counts are printed."""
    settled = {spec.run_id: policy.settled(store.history(spec.sweep, spec.run_id).statuses) for spec in specs}
    unsettled = [spec.run_id for spec in specs if settled[spec.run_id] is None]
    queued = _queued_in_slurm(store.root.resolve(), plan.sweep, unsettled) if opts.launcher == "slurm" else {}
    pending, done, busy, failed = [], 0, 0, []
    for spec in specs:
        status = settled[spec.run_id]
        if status in FINAL:
            done += 1
        elif spec.run_id in queued or is_running(store.run_dir(spec.run_id)):
            busy += 1
        elif status == FAILED:
            failed.append(spec)
        else:
            pending.append(spec)
    for spec in failed:
        console.print(f"[yellow]{spec.arm} seed {spec.seed}[/yellow] has failed "
                      f"{len(store.history(spec.sweep, spec.run_id).rows)} times; not resubmitted "
                      f"(see {store.run_dir(spec.run_id)}/log.txt)")
    console.print(f"{len(specs)} runs: {done} done, {busy} running or queued elsewhere, {len(failed)} failed, "
                  f"{len(pending)} to submit ({opts.launcher})")
    return pending, failed, queued


def _queued_in_slurm(results: Path, sweep: str, unsettled: list[str]) -> dict[str, str]:
    """Run id -> job id of the unsettled runs whose Slurm job is still pending or running (a
    sweep command run again while its array runs submits nothing twice)."""
    recorded = read_jobs(results, sweep)
    wanted = {run_id: recorded[run_id] for run_id in unsettled if run_id in recorded}
    states = job_states(list(wanted.values()))
    return {rid: job for rid, job in wanted.items() if job in states and states[job].active}


def _wait_for_slurm(store: ResultsStore, sweep: str, watched: dict[str, tuple[RunSpec, str]], policy: RetryPolicy,
                    console, folder: Path, ok: bool) -> int:
    """Poll squeue (never sacct: quiet where accounting is off) until every watched job has left
    the queue; then each run's outcome is what the results store holds."""
    from harness.launch.local import describe, run_label

    poll = poll_seconds()
    try:
        while watched:
            time.sleep(poll)
            try:
                states = job_states([job for _, job in watched.values()])
            except SlurmUnavailable as err:
                console.print(f"[yellow]{err}[/yellow]; asking again in {poll:g} s")
                continue
            for run_id, (spec, job) in list(watched.items()):
                state = states.get(job)
                if state is not None and state.active:
                    continue
                del watched[run_id]
                label = run_label(spec)
                status = policy.settled(store.history(spec.sweep, spec.run_id).statuses)
                if status is None:
                    ok = False
                    ended = state.describe(job) if state else f"Slurm job {job} has left the queue"
                    console.print(f"[yellow]{label}[/yellow]: {ended} without recording the run "
                                  f"(logs: {folder / job.split('_')[0]}); run the same command again to resubmit it")
                    continue
                ok &= status == COMPLETED
                console.print(describe(store, spec, status, label))
        return 0 if ok else 1
    except KeyboardInterrupt:
        console.print(f"\nstopped waiting; the Slurm jobs go on (harness status --sweep {sweep} --results {store.root})")
        raise SystemExit(130) from None


def _run_local(store: ResultsStore, sweep: str, executor, pending: list[RunSpec], job_for, parallel: int,
               policy: RetryPolicy, console, ok: bool) -> int:
    """--launcher local: the same job callable as Slurm's, as local subprocesses, `parallel` at once."""
    from harness.launch.local import describe, run_label

    running: dict[str, tuple[RunSpec, Any]] = {}
    queue = list(pending)
    try:
        while queue or running:
            while queue and len(running) < parallel:
                spec = queue.pop(0)
                job = executor.submit(job_for(spec))
                running[spec.run_id] = (spec, job)
                record_jobs(store.root, sweep, {spec.run_id: f"local:{job.job_id}"})
                console.print(f"started {spec.arm} seed {spec.seed} as local job {job.job_id}")
            for run_id, (spec, job) in list(running.items()):
                if not job.done():
                    continue
                del running[run_id]
                label = run_label(spec)
                try:
                    job.result()
                except Exception as err:  # noqa: BLE001 - the job's own failure, reported per run
                    ok = False
                    last = str(err).strip().splitlines()
                    console.print(f"[yellow]{label}[/yellow]: job {job.job_id} failed: "
                                  f"{last[-1] if last else type(err).__name__} (logs: {job.paths.stdout.parent})")
                    continue
                status = policy.settled(store.history(spec.sweep, spec.run_id).statuses) or FAILED
                ok &= status == COMPLETED
                console.print(describe(store, spec, status, label))
            time.sleep(1.0)
        return 0 if ok else 1
    except KeyboardInterrupt:
        for _, job in running.values():
            job.cancel(check=False)
        console.print(f"\nstopped sweep {sweep}; run the same command again to continue")
        raise SystemExit(130) from None
