"""`harness status`: where each sweep stands, per arm: done, running, queued, failed, diverged, ...

A sweep's plan (every run it will make) is written when it starts, to RESULTS/sweeps/<sweep>.json
(harness.store.planfile.save_plan, by every launcher). Each planned run is then, in this order (its counted attempt: harness.store.record.counted):
  done      the results store holds a completed row of it in this sweep
  diverged  ... a diverged row (a final outcome: training is deterministic, it is not retried)
  unrunnable ... an unrunnable row (its configuration cannot run as planned; never retried)
  running   its run folder is locked by a live process here, or Slurm runs its job
  queued    planned, not started, or its Slurm job waits in the queue (also after a requeue)
  failed    it has only failed attempts and nothing runs it now
  interrupted  started and stopped (killed, Ctrl-C) before recording: resumes when run again
  unrecorded   its workers finished (result.json is complete) but it was stopped before recording:
               recorded, without training, when run again
  cancelled its Slurm job was cancelled before it recorded the run
  lost      its Slurm job ended without recording the run, or Slurm no longer knows it
A sweep recorded before plans were written shows the runs its rows name (none queued).
Slurm and local jobs are listed in RESULTS/sweeps/<sweep>.jobs.json (run id -> job id); the
state of Slurm jobs is asked of Slurm (harness.cluster.slurmctl: squeue, then sacct where accounting is
on). Where Slurm does not answer, the sweep's `slurm` entry says so and those runs show as queued.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from harness.planning.adaptive import Adaptive, arm_states
from harness.core.config import BASELINE
from harness.store.planfile import read_jobs, read_plan, saved_sweeps
from harness.launch.procs import is_running
from harness.store.record import ATTEMPT_BEGAN, COMPLETED, DIVERGED, FINAL, NODE_HEADER, parse_progress
from harness.stats.sequential import UNDECIDED
from harness.store.results import ResultsStore
from harness.cluster.slurmctl import SLURM_JOB_ID, SlurmUnavailable, job_states

STATES = ("done", "running", "queued", "failed", "interrupted", "unrecorded", "cancelled", "lost", "diverged",
          "unrunnable")


def _nodes(run_dir: Path) -> str:
    """The hosts of a multi-node run's current attempt, from each node's log header (node 0's
    log.txt, node K's log.nodeK.txt: "=== attempt N at T on node K (host): ..."); empty for one node."""
    logs = sorted(Path(run_dir).glob("log*.txt"))
    if len(logs) < 2:  # one node's log: nothing to read (a long run's log can be large)
        return ""
    hosts = {}
    for log in logs:
        try:
            text = log.read_bytes()  # the header is where the attempt began, however long its output since
        except OSError:
            continue
        at = text.rfind(ATTEMPT_BEGAN.encode())
        found = NODE_HEADER.findall(text[at:].partition(b"\n")[0].decode("utf-8", errors="replace")) if at >= 0 else []
        for rank, host in found:
            hosts[int(rank)] = host
    return ",".join(hosts[k] for k in sorted(hosts)) if len(hosts) > 1 else ""


def _progress(run_dir: Path) -> str:
    """'step S/N' from the last PROGRESS line of a run's log, if any."""
    log = Path(run_dir) / "log.txt"
    try:
        with log.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - 16384))
            tail = f.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(tail):
        p = parse_progress(line)
        if p is not None:
            try:
                return f"step {p['step']:,}/{p['steps']:,}, loss {p['loss']:.4f}"
            except (ValueError, TypeError):
                return ""
    return ""


@dataclass
class RunState:
    run_id: str
    arm: str
    seed: int
    state: str
    attempts: int
    detail: str
    test_loss: float | None
    job: str | None
    tokens: int | None = None  # the budget of its counted attempt
    nodes: str = ""  # a running run's nodes: Slurm's node list, or the hosts its nodes' logs name


def sweep_names(results: Path) -> list[str]:
    """Sweeps with a saved plan, then sweeps that only have recorded rows (older sweeps)."""
    store = ResultsStore(results)
    recorded = store.sweeps() if store.runs_path.exists() else []
    return list(dict.fromkeys(saved_sweeps(results) + recorded))


def adaptive_state(plan: dict[str, Any], rows) -> dict[str, Any] | None:
    """An adaptive sweep's round and each arm's state, from its saved plan and recorded rows
    (None for a fixed sweep)."""
    settings = Adaptive.from_dict(plan.get("adaptive"))
    if settings is None:
        return None
    arms = [a for a in plan.get("arms", []) if a != BASELINE]
    states = arm_states(rows, arms, BASELINE, settings)
    done_seeds = rows[rows["arm"] == BASELINE]["seed"].nunique() if not rows.empty else 0
    return {"round": int(done_seeds), "max_seeds": settings.max_seeds,
            "arms": {a: {"state": st.state, "seeds": len(st.seeds), "low": st.look.low, "high": st.look.high}
                     for a, st in states.items()}}


def _resume_step(run_dir: Path) -> int | None:
    """The step a stopped run resumes from (its newest checkpoint), if it has one."""
    try:
        return int(json.loads((run_dir / "checkpoint" / "meta.json").read_text())["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _finished(run_dir: Path) -> bool:
    """The workers wrote a final result.json (the run ended, its recording did not)."""
    try:
        return json.loads((run_dir / "result.json").read_text()).get("status") in FINAL
    except (OSError, ValueError, AttributeError):
        return False


def _started(run_dir: Path) -> bool:
    try:
        with (run_dir / "log.txt").open("rb") as f:
            return ATTEMPT_BEGAN.encode() in f.read(4096)
    except OSError:
        return False


def slurm_view(jobs: dict[str, str], unsettled: list[str]) -> tuple[dict[str, Any], str | None]:
    """Slurm's state of the unsettled runs' Slurm jobs, and why Slurm could not say (if so)."""
    asked = [jobs[r] for r in unsettled if SLURM_JOB_ID.fullmatch(jobs.get(r, ""))]
    if not asked:
        return {}, None
    try:
        return job_states(asked), None
    except SlurmUnavailable as err:
        return {}, str(err)


def sweep_status(results: Path, sweep: str, store: ResultsStore | None = None):
    """Every run of `sweep` with its state, in plan order (seed-major); an adaptive sweep's state
    (its runs list leaves out those its decided arms will never make); why Slurm did not answer.
    One function (about 70 lines): the plan, the store's rows, the Slurm queue and the adaptive
    rounds are read once and joined per run here, in the order `harness status` lists them."""
    results = Path(results)
    store = store or ResultsStore(results)
    rows = store.sweep_frame(sweep)
    plan = read_plan(results, sweep)
    planned = [r for r in plan.get("runs", []) if isinstance(r, dict) and "run_id" in r]
    adaptive = adaptive_state(plan, rows)
    if adaptive is not None:
        finished = {a for a, st in adaptive["arms"].items() if st["state"] != UNDECIDED}
        if len(finished) == len(adaptive["arms"]):
            finished.add(BASELINE)
        recorded = set(rows["run_id"]) if not rows.empty else set()
        planned = [r for r in planned if r.get("arm") not in finished or r["run_id"] in recorded]
    if not rows.empty:  # runs recorded under this sweep that no plan names (older sweeps)
        known = {r["run_id"] for r in planned}
        first = rows.sort_values("attempt").drop_duplicates("run_id")
        planned += [{"run_id": r.run_id, "arm": r.arm, "seed": int(r.seed)}
                    for r in first.itertuples() if r.run_id not in known]
    jobs = read_jobs(results, sweep)
    histories = {r["run_id"]: store.history(sweep, r["run_id"]) for r in planned}
    slurm, slurm_error = slurm_view(jobs, [rid for rid, h in histories.items() if not set(FINAL) & set(h.statuses)])
    out = []
    for run in planned:
        run_id = run["run_id"]
        history = histories[run_id]
        statuses = history.statuses
        job = jobs.get(run_id)
        in_slurm = slurm.get(job) if job else None
        detail, test_loss, nodes = "", None, ""
        run_dir = store.run_dir(run_id)
        counted = history.counted
        tokens = int(counted["planned_tokens"]) if counted is not None and counted.get("planned_tokens") else None
        if counted is not None and counted["status"] == COMPLETED:
            state = "done"
            test_loss = float(counted["test_loss"])
            detail = f"test loss {test_loss:.4f}"
        elif counted is not None:  # diverged, or a configuration that cannot run
            state = "diverged" if counted["status"] == DIVERGED else "unrunnable"
            detail = str(counted["reason"])
        elif is_running(run_dir) or (in_slurm is not None and in_slurm.state == "RUNNING"):
            state = "running"
            detail = _progress(run_dir)
            nodes = _nodes(run_dir)
            if in_slurm is not None and re.search(r"[\[,]", in_slurm.nodes):  # Slurm's list, for a job of several
                nodes = in_slurm.nodes
        elif in_slurm is not None and in_slurm.active:
            state = "queued"
            detail = in_slurm.describe(job)
        elif statuses:
            state = "failed"
            detail = str(history.rows[-1]["reason"])
        elif in_slurm is not None:  # ended without a row
            state = "cancelled" if in_slurm.state.startswith("CANCELLED") else "lost"
            detail = f"{in_slurm.describe(job)}; run the sweep command again to resubmit it"
        elif job and SLURM_JOB_ID.fullmatch(job) and slurm_error is None:
            state = "lost"
            detail = f"Slurm no longer lists job {job} and it recorded nothing; run the sweep command again"
        elif _finished(run_dir):
            state = "unrecorded"
            detail = "its result is complete; the sweep command records it without training again"
        elif _started(run_dir):
            state = "interrupted"
            step = _resume_step(run_dir)
            detail = f"resumes from step {step:,}" if step is not None else "restarts from step 0"
        else:
            state = "queued"
        arm = str(run.get("arm", "?")) + (f" at {run['budget_factor']:g}x budget" if run.get("budget_factor") else "")
        out.append(RunState(run_id, arm, int(run.get("seed", -1)), state, len(statuses),
                            detail[:200], test_loss, job, tokens, nodes))
    return out, adaptive, slurm_error


def summarize(states: list[RunState]) -> dict[str, dict[str, Any]]:
    """Per arm (in plan order): runs, a count per state, and the mean test loss of done runs, which
    only runs of one budget have (as in the report: a mean over two budgets is no arm's loss)."""
    arms: dict[str, dict[str, Any]] = {}
    for s in states:
        a = arms.setdefault(s.arm, {"runs": 0, **{k: 0 for k in STATES}, "losses": [], "budgets": set()})
        a["runs"] += 1
        a[s.state] += 1
        if s.test_loss is not None:
            a["losses"].append(s.test_loss)
            a["budgets"].add(s.tokens)
    for a in arms.values():
        losses, budgets = a.pop("losses"), sorted(b for b in a.pop("budgets") if b is not None)
        a["budgets"] = budgets
        a["mean_test_loss"] = sum(losses) / len(losses) if losses and len(budgets) <= 1 else None
    return arms


def status_payload(results: Path, sweep: str | None = None) -> dict[str, Any]:
    names = [sweep] if sweep else sweep_names(results)
    store = ResultsStore(results)
    payload = {}
    for name in names:
        states, adaptive, slurm_error = sweep_status(results, name, store)
        payload[name] = {"arms": summarize(states), "totals": dict(Counter(s.state for s in states)),
                         "runs": [asdict(s) for s in states], "adaptive": adaptive,
                         "slurm": f"Slurm did not answer ({slurm_error}): its jobs' states are unknown"
                                  if slurm_error else None}
    return payload


def print_status(payload: dict[str, Any], console, show_runs: bool = False) -> None:
    from rich.markup import escape
    from rich.table import Table

    for name, info in payload.items():
        totals = info["totals"]
        n = sum(totals.values())
        table = Table(title=f"sweep {name}: {totals.get('done', 0)}/{n} done")
        table.add_column("arm", style="bold")
        for col in ("runs", *STATES, "mean test loss"):
            table.add_column(col, justify="right")
        for arm, a in info["arms"].items():
            loss = f"{a['mean_test_loss']:.4f}" if a["mean_test_loss"] is not None else \
                f"mixed budgets ({', '.join(f'{b:,}' for b in a['budgets'])} tokens)" if len(a["budgets"]) > 1 else "-"
            table.add_row(arm, str(a["runs"]), *(str(a[k]) if a[k] else "-" for k in STATES), loss)
        console.print(table)
        if info.get("slurm"):
            console.print(f"[yellow]{escape(info['slurm'])}[/yellow]")
        adaptive = info.get("adaptive")
        if adaptive:
            console.print(f"adaptive sweep: round {adaptive['round']} of at most {adaptive['max_seeds']}; "
                          + "; ".join(f"{arm}: {st['state']} after {st['seeds']} seeds"
                                      for arm, st in adaptive["arms"].items()), highlight=False)
        if show_runs:
            runs = Table(title=f"runs of {name}")
            multi = any(r.get("nodes") for r in info["runs"])
            for col in ("arm", "seed", "run id", "state", "attempts", "job", *(["nodes"] if multi else []), "detail"):
                runs.add_column(col)
            for r in info["runs"]:
                runs.add_row(r["arm"], str(r["seed"]), r["run_id"], r["state"], str(r["attempts"]),
                             r["job"] or "-", *([r.get("nodes") or "-"] if multi else []), r["detail"] or "-")
            console.print(runs)
