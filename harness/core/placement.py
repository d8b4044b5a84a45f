"""Where runs execute: how many at once, and which GPUs or CPU cores each one gets.

Placement never changes an experiment (the preset fixes the global batch; see harness.data.batches),
only how fast a sweep finishes. `--jobs auto` runs as many runs at once as the machine holds
without sharing: on CUDA, GPUs // processes per run; on the CPU, usable cores // (processes per
run x threads per process). Each concurrent run gets its own GPUs (CUDA_VISIBLE_DEVICES) or cores
(CPU affinity). Standard library only: the training worker reads cpu_threads() from here.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from harness.core.errors import UserError

# Intra-op threads of one CPU worker. Measured on the 2-core development box with the tiny preset
# (see reports/benchmarks.md): one thread per worker trains several times faster than two,
# because the small preset's matmuls are too small to split profitably and two OpenMP threads
# spin-wait on each other whenever anything else wants a core. HARNESS_CPU_THREADS=N overrides
# (a large model on a many-core machine with one worker wants more).
CPU_THREADS = 1


def cpu_threads() -> int:
    requested = os.environ.get("HARNESS_CPU_THREADS", "").strip()
    return int(requested) if requested.isdigit() and int(requested) > 0 else CPU_THREADS


def usable_cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def visible_gpus(count: int) -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES names them (or their indices)."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES", "").strip()
    names = [g.strip() for g in given.split(",") if g.strip()] if given else []
    return names[:count] if names else [str(i) for i in range(count)]


@dataclass(frozen=True)
class Slot:
    """What one of the concurrent runs may use: GPUs (CUDA_VISIBLE_DEVICES) or CPU cores."""

    gpus: tuple[str, ...] = ()
    cpus: tuple[int, ...] = ()

    def env(self) -> dict[str, str]:
        if self.gpus:
            return {"CUDA_VISIBLE_DEVICES": ",".join(self.gpus)}
        return {"OMP_NUM_THREADS": str(cpu_threads())} if self.cpus else {}


def parse_jobs(text: str) -> int | None:
    """--jobs: a whole number >= 1, or 'auto' (None: as many as fit)."""
    value = str(text).strip().lower()
    if value == "auto":
        return None
    if not value.isdigit() or int(value) < 1 or int(value) > 1024:
        raise UserError(f"--jobs {text!r}: give a number of runs at once from 1 to 1024, or auto")
    return int(value)


def auto_jobs(nproc: int, gpu_count: int) -> int:
    """As many runs at once as fit without sharing a GPU or a core."""
    if gpu_count:
        return max(1, gpu_count // nproc)
    return max(1, len(usable_cores()) // (nproc * cpu_threads()))


def slots(jobs: int, nproc: int, gpu_count: int) -> tuple[list[Slot], bool]:
    """`jobs` slots of nproc GPUs (CUDA) or nproc x threads cores (CPU) each, and whether they
    had to share (more jobs than the machine holds: devices are then dealt out round-robin)."""
    if jobs == 1:
        return [Slot()], False
    if gpu_count:
        pool: list = visible_gpus(gpu_count)
        need = nproc
    else:
        pool = usable_cores()
        need = nproc * cpu_threads()
    shared = jobs * need > len(pool)
    out = []
    for j in range(jobs):
        taken = tuple(pool[(j * need + k) % len(pool)] for k in range(need))
        out.append(Slot(gpus=taken) if gpu_count else Slot(cpus=taken))
    return out, shared
