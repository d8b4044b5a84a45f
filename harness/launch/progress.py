"""Progress for long work: a live table on a terminal, plain timestamped lines otherwise (CI, logs).

One row per running run (arm and seed, steps done, loss, tokens/s, elapsed, ETA) under the
sweep's total. Runs report from several threads at once (concurrent runs); rich serialises them.
"""

from __future__ import annotations

import threading
import time
from typing import Any, Hashable

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunProgress:
    """The sweep's runs done/total plus a row per running run."""

    def __init__(self, console: Console, total_runs: int, plain_every_s: float = 10.0):
        self.console, self.total_runs = console, total_runs
        self.live = console.is_terminal
        self.plain_every_s = plain_every_s
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, disable=not self.live)
        self._overall = self._progress.add_task("runs", total=total_runs, detail="")
        self._runs: dict[Hashable, dict[str, Any]] = {}  # key -> task id, label, last plain line
        self._lock = threading.Lock()

    def __enter__(self) -> "RunProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def _say(self, text: str) -> None:
        self.console.print(f"[{time.strftime('%H:%M:%S')}] {text}", markup=False, highlight=False)

    def start_run(self, key: Hashable, label: str, steps: int) -> None:
        with self._lock:
            old = self._runs.pop(key, None)
            if old is not None:
                self._progress.remove_task(old["task"])
            task = self._progress.add_task(label, total=steps, detail="starting")
            self._runs[key] = {"task": task, "label": label, "plain": 0.0}
        if not self.live:
            self._say(f"start {label} ({steps:,} steps)")

    def update(self, key: Hashable, p: dict[str, Any]) -> None:
        with self._lock:
            run = self._runs.get(key)
            if run is None:
                return
            detail = f"loss {p['loss']:.4f}  {p.get('tokens_per_s', 0):,.0f} tok/s"
            self._progress.update(run["task"], completed=p["step"], detail=detail)
            now = time.monotonic()
            due = now - run["plain"] >= self.plain_every_s or p["step"] == p["steps"]
            if not self.live and due:
                run["plain"] = now
        if not self.live and due:
            self._say(f"{run['label']} step {p['step']:,}/{p['steps']:,}  {p.get('tokens', 0):,} tok  {detail}")

    def finish_run(self, key: Hashable, message: str) -> None:
        """Count one run as done (trained now, or found in the store) and say how it went."""
        with self._lock:
            run = self._runs.pop(key, None)
            if run is not None:
                self._progress.remove_task(run["task"])
            self._progress.advance(self._overall)
        self.console.print(message, markup=False, highlight=False)

    def drop_run(self, key: Hashable) -> None:
        """A run that stopped without a final outcome (it will be tried again, or was interrupted)."""
        with self._lock:
            run = self._runs.pop(key, None)
            if run is not None:
                self._progress.remove_task(run["task"])
