"""Progress for long work: rich bars on a terminal, plain timestamped lines otherwise (CI, logs)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class RunProgress:
    """Overall runs done/total plus the current run's tokens, loss, tokens/s and ETA."""

    def __init__(self, console: Console, total_runs: int, plain_every_s: float = 10.0):
        self.console, self.total_runs = console, total_runs
        self.live = console.is_terminal
        self.plain_every_s, self._last_plain = plain_every_s, 0.0
        self._progress = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"), TimeElapsedColumn(), TimeRemainingColumn(),
            console=console, disable=not self.live)
        self._overall = self._progress.add_task("runs", total=total_runs, detail="")
        self._current = None

    def __enter__(self) -> "RunProgress":
        self._progress.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.__exit__(*exc)

    def start_run(self, label: str, steps: int) -> None:
        if self._current is not None:
            self._progress.remove_task(self._current)
        self._current = self._progress.add_task(label, total=steps, detail="starting")
        if not self.live:
            self.console.print(f"[{time.strftime('%H:%M:%S')}] start {label} ({steps:,} steps)", markup=False)
        self._label, self._last_plain = label, 0.0

    def update(self, p: dict[str, Any]) -> None:
        detail = f"{p['tokens']:,} tok  loss {p['loss']:.4f}  {p['tokens_per_s']:,.0f} tok/s"
        self._progress.update(self._current, completed=p["step"], detail=detail)
        now = time.monotonic()
        if not self.live and (now - self._last_plain >= self.plain_every_s or p["step"] == p["steps"]):
            self._last_plain = now
            self.console.print(f"[{time.strftime('%H:%M:%S')}] {self._label} step {p['step']:,}/{p['steps']:,}  {detail}",
                               markup=False)

    def finish_run(self, message: str) -> None:
        """Count one run as done (trained now, or found in the store) and say how it went."""
        self._progress.advance(self._overall)
        self.console.print(message, markup=False, highlight=False)
