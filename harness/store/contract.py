"""The external trainer contract, version 1: what harness gives a researcher's own training script
for one run, and what the script gives back. The README's "Your own trainer" is this module in prose.

What harness passes, as environment variables and as {placeholders} in the sweep file's command
(each placeholder is the variable's name without HARNESS_, lower case; `{python}` is the Python
that runs harness, and each of the trainer's settings is a placeholder of its own name; a
placeholder is a bare name, replaced by the value as text, true/false for a boolean):

  HARNESS_CONTRACT      1, this contract's version
  HARNESS_ARM           the arm ("baseline", "qkv_bias+no_dropout"), a label: what a run computes
                        must follow from its settings (two arms of equal settings are one arm)
  HARNESS_INTERVENTIONS its interventions, joined by '+' ("" for the baseline)
  HARNESS_SETTINGS      JSON: the trainer's settings for this arm (the sweep file's [trainer.settings]
                        with the arm's interventions' [set] values and --set applied)
  HARNESS_SEED          the paired seed (the same for every arm at one seed)
  HARNESS_INIT_SEED, HARNESS_DATA_SEED, HARNESS_DROPOUT_SEED
                        the sub-seeds of initialisation, data order and dropout, derived from the seed
  HARNESS_TOKENS        the token budget: train exactly this many tokens
  HARNESS_STEPS         optimiser steps, HARNESS_TOKENS / (global batch x context length)
  HARNESS_GLOBAL_BATCH  sequences per optimiser step, however many processes share them
  HARNESS_CONTEXT_LENGTH tokens per sequence
  HARNESS_RUN_DIR       the run's own folder (checkpoints go here)
  HARNESS_RESULT        where to write the result (JSON, below)
  HARNESS_RESUME        1 when an earlier attempt of this run started in HARNESS_RUN_DIR, else 0
  HARNESS_PROBE         1 for the cheap call that only reports the parameter count (then write
                        {"params": N} to HARNESS_RESULT and exit 0), else 0
Under `--nproc N` the command runs under torchrun, which sets RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR and MASTER_PORT; rank 0 writes the result.

What the trainer writes to HARNESS_RESULT (RESULT_KEYS), one JSON object:

  test_loss       required: the mean token loss on the test data, a finite number
  tokens          required: tokens trained, exactly HARNESS_TOKENS
A result that breaks the contract fails its run with one line: one that the script would write
again (an unknown key, a wrong type, another budget) as unrunnable, never retried; no result, no
JSON or a NaN loss as failed, retried as `--retries` says.

  contract        the contract version it was written for (1)
  params          its parameter count
  test_tokens     tokens the test loss averages over
  test_set        an identifier of its test data (a hash): arms measured on different ones are
                  not compared
  unit_loss_sums, unit_tokens
                  per unit of the test data (a document, a block), the summed token loss and the
                  token count: the report's test-text section
  units           what a unit is ("64 blocks of consecutive tokens")
  heldout         [{"tokens": T, "loss": L}]: test losses along training (the compute multiplier)
  curve           [{"step": S, "tokens": T, "loss": L}, ...]: the training curve ("lr" optional)
  version, device free text: the trainer's own version and where it ran

A trainer may print `PROGRESS {"step": S, "steps": N, "loss": L}` lines: harness shows them and
hands them to the trackers. A run that prints nothing for HARNESS_STALL_TIMEOUT seconds is killed.
Standard library only, like harness.store.record.
"""

from __future__ import annotations

import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

from harness.core.bounds import finite_number
from harness.core.scheme import TRAINED_BY
from harness.store.record import COMPLETED, RunResult, RunSpec, pack_units

VERSION = 1
RESULT_FILE = "trainer-result.json"  # in the run's folder; harness turns it into result.json
PREFIX = "HARNESS_"
PASSED = ("contract", "arm", "interventions", "settings", "seed", "init_seed", "data_seed", "dropout_seed", "tokens",
          "steps", "global_batch", "context_length", "run_dir", "result", "resume", "probe")
PLACEHOLDERS = ("python", *PASSED)  # names a trainer's setting may not take
RESULT_KEYS = {"test_loss": float, "tokens": int, "contract": int, "params": int, "test_tokens": int, "test_set": str,
               "unit_loss_sums": list, "unit_tokens": list, "units": str, "heldout": list, "curve": list,
               "version": str, "device": str}
REQUIRED = ("test_loss", "tokens")


class BrokenResult(ValueError):
    """A trainer's result that breaks the contract: the run fails with this one line. `final`: the
    script writes its result this way every time (a wrong key, type or budget), so the run is
    unrunnable, never retried; else (no result, no JSON, a NaN) it may be retried."""

    def __init__(self, message: str, final: bool = True):
        super().__init__(message)
        self.final = final


def passed(spec: RunSpec, run_dir: Path, resume: bool, probe: bool = False) -> dict[str, str]:
    """What harness passes for one run, by placeholder name (PASSED), as text."""
    trainer = spec.config[TRAINED_BY]
    values: dict[str, Any] = {
        "contract": VERSION, "arm": spec.arm, "interventions": spec.interventions,
        "settings": json.dumps(trainer["settings"], sort_keys=True), "seed": spec.seed, "init_seed": spec.init_seed,
        "data_seed": spec.data_seed, "dropout_seed": spec.dropout_seed, "tokens": spec.tokens, "steps": spec.steps,
        "global_batch": trainer["global_batch"], "context_length": trainer["context_length"],
        "run_dir": run_dir, "result": run_dir / RESULT_FILE, "resume": int(resume), "probe": int(probe)}
    return {k: str(values[k]) for k in PASSED}


def environment(values: Mapping[str, str]) -> dict[str, str]:
    """The passed values as the trainer's environment variables."""
    return {PREFIX + k.upper(): v for k, v in values.items()}


def setting_text(value: Any) -> str:
    """A setting as a placeholder writes it: true/false for booleans (as TOML and JSON write them)."""
    return json.dumps(value) if isinstance(value, bool) else str(value)


def command(template: list[str], values: Mapping[str, str], settings: Mapping[str, Any]) -> list[str]:
    """The trainer's argument list for one run: each {name} replaced by its value (a passed value,
    `python`, or a setting); {{ and }} are literal braces."""
    table = {"python": sys.executable, **values, **{k: setting_text(v) for k, v in settings.items()}}
    return [arg.format_map(table) for arg in template]


def read_result(path: Path, budget: int, probe: bool = False) -> dict[str, Any]:
    """A trainer's result file, checked against the contract (BrokenResult says what is wrong)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BrokenResult(f"the trainer exited 0 but wrote no result to {path} (HARNESS_RESULT)", final=False) from None
    except (OSError, UnicodeDecodeError) as err:
        raise BrokenResult(f"cannot read the trainer's result {path}: {err}", final=False) from None
    try:
        data = json.loads(text)
    except ValueError as err:
        raise BrokenResult(f"the trainer's result {path} is not JSON ({err})", final=False) from None
    if not isinstance(data, dict):
        raise BrokenResult(f"the trainer's result {path} is not a JSON object: {text[:80]!r}")
    if probe:
        params = data.get("params")
        if isinstance(params, bool) or not isinstance(params, int) or params < 1:
            raise BrokenResult(f"the probe's result holds no parameter count (\"params\": a whole number >= 1), got "
                               f"{params!r}")
        return data
    unknown = sorted(set(data) - set(RESULT_KEYS))
    if unknown:
        raise BrokenResult(f"the trainer's result has unknown key {unknown[0]!r}; contract version {VERSION} allows: "
                           f"{', '.join(RESULT_KEYS)}")
    if data.get("contract", VERSION) != VERSION:
        raise BrokenResult(f"the trainer's result is written for contract version {data['contract']!r}; this "
                           f"harness reads version {VERSION}")
    for key in REQUIRED:
        if key not in data:
            raise BrokenResult(f"the trainer's result has no {key!r} (required: {', '.join(REQUIRED)})")
    for key, value in data.items():
        kind = RESULT_KEYS[key]
        ok = isinstance(value, (int, float)) if kind is float else isinstance(value, kind)
        if not ok or isinstance(value, bool):
            raise BrokenResult(f"the trainer's result has {key} = {str(value)[:60]!r}: expected {kind.__name__}")
    if not finite_number(data["test_loss"]):
        raise BrokenResult(f"the trainer's test_loss is {data['test_loss']!r}: a result needs a finite loss",
                           final=False)
    if not finite_number(data["tokens"]) or data["tokens"] != budget:
        short = "fewer" if data["tokens"] < budget else "more"
        raise BrokenResult(f"the trainer trained {data['tokens']:,} tokens, {short} than the budget of {budget:,} "
                           "(HARNESS_TOKENS): arms are compared at matched budgets")
    _check_units(data)
    for key, needs in (("heldout", ("tokens", "loss")), ("curve", ("step", "tokens", "loss"))):
        for point in data.get(key, []):
            if not isinstance(point, dict) or any(not finite_number(point.get(n)) for n in needs):
                raise BrokenResult(f"the trainer's {key} has the point {str(point)[:80]!r}: each needs "
                                   f"{', '.join(needs)} (numbers)")
    return data


def _check_units(data: dict[str, Any]) -> None:
    sums, tokens = data.get("unit_loss_sums"), data.get("unit_tokens")
    if (sums is None) != (tokens is None):
        raise BrokenResult("the trainer's result has one of unit_loss_sums and unit_tokens: give both, or neither")
    if sums is not None and (len(sums) != len(tokens) or not all(map(finite_number, sums))
                             or not all(isinstance(t, int) and not isinstance(t, bool) and t > 0 for t in tokens)):
        raise BrokenResult("the trainer's unit_loss_sums and unit_tokens must be lists of one length: finite sums and "
                           "token counts >= 1")


def run_result(data: dict[str, Any], spec: RunSpec, wall_time_s: float, versions: dict[str, Any]) -> RunResult:
    """A checked trainer result as harness records a completed run."""
    trainer = spec.config[TRAINED_BY]
    per_step = spec.tokens_per_step
    curve: dict[int, dict[str, Any]] = {}
    for p in data.get("curve", []):
        curve[int(p["step"])] = {"step": int(p["step"]), "tokens": int(p["tokens"]), "train_loss": float(p["loss"]),
                                 "lr": float(p.get("lr", math.nan)) if finite_number(p.get("lr")) else math.nan}
    for p in data.get("heldout", []):
        step = math.ceil(int(p["tokens"]) / per_step)
        point = curve.setdefault(step, {"step": step, "tokens": int(p["tokens"]), "train_loss": math.nan, "lr": math.nan})
        point["heldout_loss"] = float(p["loss"])
    sums, units = ("", "")
    if "unit_loss_sums" in data:
        sums, units = pack_units([float(s) for s in data["unit_loss_sums"]], data["unit_tokens"])
    return RunResult(
        status=COMPLETED, test_loss=float(data["test_loss"]), test_tokens=int(data.get("test_tokens", 0)),
        test_set_id=data.get("test_set", ""), tokens_seen=int(data["tokens"]), steps=spec.steps,
        train_loss=next((p["train_loss"] for _, p in sorted(curve.items(), reverse=True)
                         if math.isfinite(p["train_loss"])), None),
        wall_time_s=wall_time_s, tokens_per_s=data["tokens"] / wall_time_s if wall_time_s > 0 else None,
        test_units=data.get("units", "the trainer's units" if sums else ""), unit_loss_sums=sums, unit_tokens=units,
        device=data.get("device", ""),
        versions=versions | {"trainer": data.get("version", ""), "contract": VERSION, "trainer_command": trainer["command"]},
        finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        curve=[curve[s] for s in sorted(curve)])
