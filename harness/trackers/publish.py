"""`--log` and `harness track`: what goes to which experiment tracker, without ever costing a run.

`--log` takes tensorboard, mlflow, wandb and trackio, several at once (repeated or comma-separated).
TensorBoard is written by this process as the curves arrive (harness.trackers.tensorboard). The
other three each get an agent process (harness.trackers.agent) that is told which run was just
recorded and publishes it from the store; at the end of the command it is told to catch up on the
plan's runs and to publish the sweep's report. A run never waits for a tracker: requests go
through a queue, and the end of the command waits at most HARNESS_TRACKER_TIMEOUT seconds (default
30) for the agents before it stops them and says, in one line per tracker, what did not reach it
and the `harness track` command that publishes it later. The results store is the source of truth;
`harness track` publishes from it alone, waiting as long as it takes.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import queue
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from harness.core.errors import UserError

TENSORBOARD = "tensorboard"
TRACKERS = ("mlflow", "wandb", "trackio")
LOG_CHOICES = ("none", TENSORBOARD) + TRACKERS
TIMEOUT_ENV = "HARNESS_TRACKER_TIMEOUT"
DEFAULT_TIMEOUT_S = 30.0
EXTRA = {"mlflow": "mlflow", "wandb": "wandb", "trackio": "trackio"}  # tracker -> the module it needs


def split_names(values: list[str] | str | None) -> set[str]:
    """The names of a repeatable, comma-separated option (--log, --to)."""
    items = [values] if isinstance(values, str) else list(values or [])
    return {part.strip() for item in items for part in item.split(",") if part.strip()}


def parse_log(values: list[str] | str | None, option: str = "--log",
              choices: tuple[str, ...] = LOG_CHOICES) -> tuple[str, ...]:
    """The --log values (or another option's, of `choices`) as tracker names in a fixed order;
    'none' or nothing is ()."""
    names = split_names(values)
    unknown = sorted(names - set(choices))
    if unknown:
        raise UserError(f"{option} {unknown[0]!r}: allowed: {', '.join(choices)} (several: {option} mlflow,wandb)")
    if "none" in names and len(names) > 1:
        raise UserError(f"{option} none cannot be combined with a tracker")
    if TENSORBOARD in names:
        from harness.trackers.tensorboard import check_installed

        check_installed()
    return tuple(n for n in LOG_CHOICES[1:] if n in names)


def installed(name: str) -> bool:
    return importlib.util.find_spec(EXTRA[name]) is not None


def timeout_s() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        value = float(text) if text else DEFAULT_TIMEOUT_S
    except ValueError:
        raise UserError(f"{TIMEOUT_ENV}={text!r}: give the seconds a command waits for trackers, e.g. 30") from None
    if not value >= 0:
        raise UserError(f"{TIMEOUT_ENV}={text!r}: must be >= 0 seconds")
    return value


@dataclass
class Tally:
    """What one agent answered."""

    where: str = ""
    down: str = ""
    published: dict[str, set[str]] = field(default_factory=lambda: {"run": set(), "summary": set()})
    present: dict[str, set[str]] = field(default_factory=lambda: {"run": set(), "summary": set()})
    failed: dict[str, set[str]] = field(default_factory=lambda: {"run": set(), "summary": set()})
    notes: list[str] = field(default_factory=list)


class Agent:
    """One tracker's agent process, fed through a queue so that the caller never blocks."""

    def __init__(self, name: str, results: Path, on_answer: Callable[[str, dict], None] | None = None):
        self.name, self.tally, self.on_answer = name, Tally(), on_answer
        self.proc = subprocess.Popen([sys.executable, "-m", "harness.trackers.agent", name, str(results)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, start_new_session=True)  # Ctrl-C is the sweep's, not the agent's
        self.requests: queue.Queue[dict | None] = queue.Queue()
        self.writer = threading.Thread(target=self._write, name=f"tracker-{name}-in", daemon=True)
        self.reader = threading.Thread(target=self._read, name=f"tracker-{name}-out", daemon=True)
        self.writer.start()
        self.reader.start()

    def send(self, request: dict) -> None:
        self.requests.put(request)

    def _write(self) -> None:
        try:
            while (request := self.requests.get()) is not None:
                self.proc.stdin.write(json.dumps(request) + "\n")
                self.proc.stdin.flush()
            self.proc.stdin.close()
        except (OSError, ValueError):  # the agent is gone: its answers say why
            pass

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                answer = json.loads(line)
            except ValueError:
                continue
            t = self.tally
            kind = answer.get("kind", "run")
            if "where" in answer:
                t.where = answer["where"]
            elif "down" in answer:
                t.down = t.down or answer["down"]
            elif "note" in answer:
                t.notes.append(answer["note"])
            for outcome, keys in (("published", t.published), ("present", t.present), ("failed", t.failed)):
                if outcome in answer:
                    keys[kind].add(answer[outcome])
            if self.on_answer is not None:
                self.on_answer(self.name, answer)

    def end(self, deadline: float | None) -> bool:
        """No more requests; wait for the agent until `deadline` (time.monotonic; None: forever).
        False when it had to be stopped."""
        self.requests.put(None)
        try:
            self.proc.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self.stop()
            return False
        self.reader.join(timeout=5)
        return self.proc.returncode == 0

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.reader.join(timeout=5)


def later(name: str, results: Path, sweeps: list[str]) -> str:
    which = f" --sweep {sweeps[0]}" if len(sweeps) == 1 else ""
    return f"harness track --to {name} --results {results}{which}"


class Publisher:
    """The trackers of one command: each recorded run is handed to every agent as it is recorded;
    `finish` catches up on a plan's runs, publishes its report and waits (boundedly) for the agents."""

    def __init__(self, names: tuple[str, ...], results: Path, console, timeout: float | None = None,
                 progress: bool = False):
        self.results, self.console, self.progress = Path(results), console, progress
        self.timeout = timeout_s() if timeout is None else timeout
        self.agents: list[Agent] = []
        self.sweeps: list[str] = []
        for name in names:
            if name == TENSORBOARD:
                continue
            if not installed(name):
                console.print(f"[yellow]{name}: not installed (pip install 'harness\\[{name}]'); the runs are recorded "
                              f"as always; publish them later with: {later(name, self.results, [])}[/yellow]",
                              highlight=False, soft_wrap=True)
                continue
            self.agents.append(Agent(name, self.results, self._progress if progress else None))

    def recorded(self, spec) -> None:
        for agent in self.agents:
            agent.send({"sweep": spec.sweep, "runs": [spec.run_id]})

    def catch_up(self, sweep: str, run_ids: list[str], summary: bool) -> None:
        """Every recorded attempt of these runs not published yet, then (summary) the sweep's report."""
        self.sweeps.append(sweep)
        for agent in self.agents:
            agent.send({"sweep": sweep, "runs": run_ids})
            if summary:
                agent.send({"sweep": sweep, "summary": True})

    def _progress(self, name: str, answer: dict) -> None:
        key = answer.get("published") or answer.get("failed")
        if key and answer.get("kind") == "summary":
            self.console.print(f"{name}: {'published' if 'published' in answer else 'could not publish'} {key}",
                               highlight=False)
        elif key and "published" in answer:
            self.console.print(f"{name}: published {key}", highlight=False, style="dim")
        if "note" in answer:
            self.console.print(f"{name}: {answer['note']}", highlight=False)

    def finish(self, interrupted: bool = False) -> bool:
        """Wait for the agents (at most the timeout, not at all when interrupted), then one line
        each; True when every tracker got everything."""
        deadline = (time.monotonic() + (0.0 if interrupted else self.timeout)) if math.isfinite(self.timeout) \
            or interrupted else None
        ok = True
        for agent in self.agents:
            complete = agent.end(deadline)
            ok = self._say(agent, complete, interrupted) and ok
        self.agents = []
        return ok

    def _say(self, agent: Agent, complete: bool, interrupted: bool) -> bool:
        from rich.markup import escape

        t, name = agent.tally, agent.name
        where = escape(t.where or name)
        done = ", ".join(x for x in (_count(t.published, "published"),
                                     _count(t.present, "already there") if self.progress else "") if x)
        missing = len(t.failed["run"] | t.failed["summary"])
        if complete and not t.down and not missing:
            self.console.print(f"{name}: {done or 'nothing new'} ({where})", highlight=False, soft_wrap=True)
            return True
        why = (escape(t.down) if t.down else "interrupted" if interrupted
               else f"no answer within {self.timeout:g} s ({TIMEOUT_ENV})")
        lost = f"{missing} record(s)" if complete else "what was not published yet"
        self.console.print(f"[yellow]{name}: {lost} did not reach {where} ({why}); {done or 'nothing'} got there; "
                           f"the store has everything: publish later with: "
                           f"{escape(later(name, self.results, sorted(set(self.sweeps))))}[/yellow]", highlight=False,
                           soft_wrap=True)
        return False


def _count(keys: dict[str, set[str]], what: str) -> str:
    parts = [f"{len(k)} {kind}{'s' if len(k) != 1 else ''}" for kind, k in keys.items() if k]
    return f"{' and '.join(parts)} {what}" if parts else ""


def publish_store(to: list[str] | str, results: Path, sweep: str | None, console) -> bool:
    """`harness track`: every recorded attempt of the store (or of one sweep) and each sweep's report
    to the trackers named, waiting as long as it takes; what a tracker holds is not sent again.
    True when every tracker got everything."""
    from harness.store.results import ResultsStore

    if TENSORBOARD in split_names(to):
        raise UserError(f"--to {TENSORBOARD}: TensorBoard is written as runs record, by --log {TENSORBOARD}; "
                        f"--to takes {', '.join(TRACKERS)}")
    names = parse_log(to, option="--to", choices=TRACKERS)
    if not names:
        raise UserError(f"--to: give one of {', '.join(TRACKERS)}")
    for name in names:
        if not installed(name):
            raise UserError(f"--to {name}: {name} is not installed here: pip install 'harness[{name}]'")
    if not (Path(results) / "runs.parquet").exists():
        raise UserError(f"{results} holds no results store (runs.parquet); give --results")
    store = ResultsStore(Path(results))
    sweeps = store.sweeps()
    if sweep is not None and sweep not in sweeps:
        raise UserError(f"--sweep {sweep!r} has no recorded runs in {results}; it has: {', '.join(sweeps) or 'none'}")
    publisher = Publisher(names, Path(results), console, timeout=math.inf, progress=True)
    runs = store.runs_frame()
    try:
        for name in [sweep] if sweep else sweeps:
            publisher.catch_up(name, sorted(set(runs.loc[runs["sweep"] == name, "run_id"])), summary=True)
        return publisher.finish()
    except BaseException:
        publisher.finish(interrupted=True)
        raise
