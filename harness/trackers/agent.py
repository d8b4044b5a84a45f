"""The process that talks to one experiment tracker: `python -m harness.trackers.agent NAME RESULTS`.

It reads requests from stdin, one JSON object per line ({"sweep": S, "runs": [run ids]} publishes
those runs' recorded attempts, {"sweep": S, "summary": true} the sweep's report), reads what they
name from the results store itself, publishes what the tracker does not hold yet and answers on
stdout, one JSON object per line: {"where": ...} first, then {"published": key}, {"present": key}
(already there), {"failed": key}, {"down": why} once the tracker has failed (nothing more is tried;
every later record is answered "failed"), {"note": ...}.

A process of its own, so that a tracker never slows, blocks or breaks the runs: its imports, its
threads, its prints (which go to RESULTS/trackers/NAME.log) and a request that never returns stay
here, and the sweep can stop waiting for it (harness.trackers.publish).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def make(name: str, results: Path):
    if name == "mlflow":
        from harness.trackers.to_mlflow import MlflowTracker

        return MlflowTracker()
    if name == "wandb":
        from harness.trackers.to_wandb import WandbTracker

        return WandbTracker(results)
    if name == "trackio":
        from harness.trackers.to_trackio import TrackioTracker

        return TrackioTracker()
    raise ValueError(f"unknown tracker {name!r}")


def describe(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:160]}" if text else type(err).__name__


def main(argv: list[str]) -> int:
    name, results = argv[1], Path(argv[2])
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    (results / "trackers").mkdir(parents=True, exist_ok=True)
    log = open(results / "trackers" / f"{name}.log", "a", buffering=1)
    os.dup2(log.fileno(), 1)  # the tracker library's own output (and its subprocesses') goes to the log
    os.dup2(log.fileno(), 2)

    def say(**message) -> None:
        answers.write(json.dumps(message) + "\n")

    down = ""
    try:
        tracker = make(name, results)
        say(where=tracker.where())
        tracker.connect()
    except Exception as err:  # noqa: BLE001 - any failure of the tracker is reported, never raised
        down = describe(err)
        say(down=down)
    from harness.store.results import ResultsStore
    from harness.trackers.records import REFUSED, run_records, sweep_record

    store = ResultsStore(results)
    for line in sys.stdin:
        request = json.loads(line)
        sweep = request["sweep"]
        if request.get("summary"):
            record, why = sweep_record(results, sweep)
            if record is None:
                say(note=f"sweep {sweep}: no summary ({why})")
                continue
            if REFUSED in record.tags:
                say(note=f"sweep {sweep}: the report refuses it, so its summary has no verdicts "
                         f"({record.tags[REFUSED]})")
            records = [record]
        else:
            records = run_records(store, sweep, set(request["runs"]))
        for record in records:
            kind = "summary" if request.get("summary") else "run"
            if down:
                say(failed=record.key, kind=kind)
                continue
            try:
                if tracker.has(sweep, record.key):
                    say(present=record.key, kind=kind)
                    continue
                tracker.publish_sweep(record) if kind == "summary" else tracker.publish_run(record)
                say(published=record.key, kind=kind)
            except Exception as err:  # noqa: BLE001
                down = describe(err)
                say(down=down)
                say(failed=record.key, kind=kind)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
