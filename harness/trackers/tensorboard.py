"""Optional TensorBoard logging of loss curves (`--log tensorboard`), written by the parent.

The training worker never imports TensorBoard: the parent turns the PROGRESS dicts it already
receives into scalars as they arrive (train/loss, train/tokens_per_s by step), and when a run is
recorded adds test/loss and, for a run it did not watch live (a run recorded earlier, or by
another process), the run's whole curve from the results store (train/loss and train/lr).
Events go to RESULTS/tensorboard/<sweep>/<run_id>; `tensorboard --logdir RESULTS/tensorboard`.
A run's folder gets a `.complete` marker once its test loss is written, so it is never
written twice.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness.core.errors import UserError
from harness.store.record import FINAL

def check_installed() -> None:
    """--log tensorboard is refused up front where the package is missing (this process writes it)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError("--log tensorboard needs the tensorboard package: pip install 'harness[tensorboard]'") from None


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+,=-]+", "_", name) or "_"


class TensorBoardLog:
    def __init__(self, results: Path):
        self.root = Path(results) / "tensorboard"
        self._writers: dict[str, Any] = {}
        self._live: set[str] = set()

    def run_dir(self, sweep: str, run_id: str) -> Path:
        return self.root / _safe(sweep) / _safe(run_id)

    def _writer(self, sweep: str, run_id: str):
        key = f"{sweep}/{run_id}"
        if key not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            self._writers[key] = SummaryWriter(log_dir=str(self.run_dir(sweep, run_id)), flush_secs=10)
        return self._writers[key]

    def progress(self, spec, p: dict[str, Any]) -> None:
        """One PROGRESS dict of a running run."""
        if (self.run_dir(spec.sweep, spec.run_id) / ".complete").exists():
            return
        w = self._writer(spec.sweep, spec.run_id)
        self._live.add(f"{spec.sweep}/{spec.run_id}")
        w.add_scalar("train/loss", float(p["loss"]), int(p["step"]))
        if "tokens_per_s" in p:
            w.add_scalar("train/tokens_per_s", float(p["tokens_per_s"]), int(p["step"]))
        if p.get("step") == p.get("steps"):  # training is over: free the writer until the test loss
            self.close(spec)

    def finish(self, spec, row: dict[str, Any] | None, curve: list[dict[str, Any]] | None = None) -> None:
        """The run is recorded: add its test loss (and its curve, unless it was logged live)."""
        folder = self.run_dir(spec.sweep, spec.run_id)
        if row is None or row.get("status") not in FINAL or (folder / ".complete").exists():
            self.close(spec)
            return
        w = self._writer(spec.sweep, spec.run_id)
        if f"{spec.sweep}/{spec.run_id}" not in self._live:
            for point in curve or []:
                w.add_scalar("train/loss", float(point["train_loss"]), int(point["step"]))
                if point.get("lr") is not None:
                    w.add_scalar("train/lr", float(point["lr"]), int(point["step"]))
        step = int(row.get("steps") or spec.steps)
        test_loss = row.get("test_loss")
        if test_loss is not None and test_loss == test_loss:  # not NaN
            w.add_scalar("test/loss", float(test_loss), step)
        w.add_text("run", f"arm {spec.arm}, seed {spec.seed}, status {row.get('status')}, "
                          f"{row.get('tokens_seen', 0):,} tokens", step)
        self.close(spec)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".complete").write_text(str(row.get("status")))

    def close(self, spec) -> None:
        w = self._writers.pop(f"{spec.sweep}/{spec.run_id}", None)
        if w is not None:
            w.flush()
            w.close()

    def from_store(self, store, specs) -> int:
        """Write every recorded run of `specs` not written yet; returns how many were written."""
        curves = None
        written = 0
        for spec in specs:
            if (self.run_dir(spec.sweep, spec.run_id) / ".complete").exists():
                continue
            row = store.history(spec.sweep, spec.run_id).counted
            if row is None:
                continue
            if curves is None:
                curves = store.curves().to_pandas(use_threads=False)
            pts = curves[(curves["run_id"] == spec.run_id) & (curves["attempt"] == row["attempt"])]
            self.finish(spec, row, pts.sort_values("step").to_dict("records"))
            written += 1
        return written
