"""What a run seed means: the three random streams it derives, and the roles a run plays in a
noise study.

A run seed s derives three independent sub-seeds (init: the initial weights, data: the order of
the global batches, dropout: the masks), the same for every arm, which is what pairs arms by seed.
A noise study varies one stream at a time with s while the other two keep REFERENCE_SEED's
values, and repeats identical seeds as replicas. A run is identified by its sub-seeds (and its
replica number), not by the label it was planned under, so the ordinary seed-0 run is also the
seed-0 run of every source and replica 0: one run, counted in each role (roles()).
"""

from __future__ import annotations

import hashlib

STREAMS = ("init", "data", "dropout")  # the random streams a run's seed derives
REPLICATE = "replicate"
VARY = (*STREAMS, REPLICATE)
REFERENCE_SEED = 0  # the streams a noise study holds fixed take this seed's values


def derive_seed(seed: int, purpose: str) -> int:
    """Separate, stable sub-seeds (init, data, dropout) from one run seed."""
    digest = hashlib.sha256(f"harness/{seed}/{purpose}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def sub_seeds(seed: int, vary: str = "", fixed: dict[str, int] | None = None) -> dict[str, int]:
    """The init, data-order and dropout seeds of run seed `seed`: all derived from it (vary ""),
    only `vary`'s stream derived from it and the others from REFERENCE_SEED, or none (replicate:
    every run identical); `fixed` sets streams by hand (--init-seed ...)."""
    varied = STREAMS if vary == "" else (vary,) if vary in STREAMS else ()
    out = {p: derive_seed(seed if p in varied else REFERENCE_SEED, p) for p in STREAMS}
    return out | (fixed or {})


def roles(seed: int, init_seed: int, data_seed: int, dropout_seed: int, replica: int = 0) -> dict[str, int]:
    """The noise-study groups a run belongs to, each with the index it has there: "" (ordinary
    seeds), a stream's name (only that stream varied) or REPLICATE (identical seeds). The ordinary
    seed-0 run belongs to all five; a run with sub-seeds set by hand to none."""
    have = {"init": init_seed, "data": data_seed, "dropout": dropout_seed}
    out = {}
    if replica == 0:
        for vary in ("", *STREAMS):
            if have == sub_seeds(seed, vary):
                out[vary] = seed
    if have == sub_seeds(REFERENCE_SEED, REPLICATE):
        out[REPLICATE] = replica
    return out
