"""The largest numbers harness accepts, checked where a user's number enters (the command line,
--set, sweep files), so nothing fails hours later in a worker, the store or the planner.

Seeds are 31-bit (every random generator takes them, and the sub-seeds derived from them are);
a sweep plans at most MAX_SEEDS seeds and MAX_RUNS runs, which keeps planning under a minute
and its memory small; any other integer fits in 31 bits, and token counts in 50.
"""

from __future__ import annotations

import math

from harness.core.errors import UserError, shown

MAX_SEED = 2**31 - 1
MAX_SEEDS = 10_000
MAX_RUNS = 50_000
MAX_TOKENS = 2**50
MAX_INT = 2**31 - 1

# command-line parameters with their own limit (the rest: MAX_INT)
LIMITS = {"seed": MAX_SEED, "init_seed": MAX_SEED, "data_seed": MAX_SEED, "dropout_seed": MAX_SEED,
          "seeds": MAX_SEEDS, "max_seeds": MAX_SEEDS, "min_seeds": MAX_SEEDS, "replicates": MAX_SEEDS,
          "tokens": MAX_TOKENS, "train_tokens": MAX_TOKENS, "test_tokens": MAX_TOKENS}
WHY = {MAX_SEEDS: "seeds per sweep", MAX_TOKENS: "tokens", MAX_INT: "a 31-bit integer"}


def check_int(name: str, value: int, limit: int | None = None) -> int:
    """`value` if |value| <= the limit for `name`, else one UserError naming the flag and the range."""
    limit = limit if limit is not None else LIMITS.get(name, MAX_INT)
    if not -MAX_INT - 1 <= value <= limit:
        flag = name if name.startswith("-") or " " in name else "--" + name.replace("_", "-")
        bound = f"at most {limit:,} ({WHY.get(limit, 'the limit')})" if value > limit else \
            f"at least {-MAX_INT - 1:,} ({WHY[MAX_INT]})"
        raise UserError(f"{flag} {shown(value, 30)} is out of range: {bound}")
    return value


def non_negative(value: int, name: str) -> None:
    if value < 0:
        raise UserError(f"{name} must be >= 0, got {value}")


def check_seeds(seeds: list[int], arms: int) -> None:
    """A sweep's seeds: each a 31-bit seed, at most MAX_SEEDS of them, at most MAX_RUNS runs."""
    if len(seeds) > MAX_SEEDS:
        raise UserError(f"{len(seeds):,} seeds: a sweep takes at most {MAX_SEEDS:,} (run more as several sweeps)")
    for s in seeds:
        check_int("seed of the sweep", s, MAX_SEED)
    if len(seeds) * arms > MAX_RUNS:
        raise UserError(f"{len(seeds):,} seeds x {arms} arms = {len(seeds) * arms:,} runs: a sweep plans at most "
                        f"{MAX_RUNS:,} (fewer seeds, or split the arms into several sweeps)")


def absent(value) -> bool:
    """A cell with no value: None, or the NaN that pandas reads an empty cell as."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def finite_number(value) -> bool:
    """A finite int or float (not a bool) that a float holds: JSON allows integers of any size."""
    try:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))
    except OverflowError:
        return False
