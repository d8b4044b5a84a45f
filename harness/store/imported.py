"""Results made elsewhere: a table of (arm, seed, test loss) taken into a results store as an
imported sweep, so that `harness report` compares its arms as it compares its own.

The table is CSV, Parquet or JSON (a list of records, or {"runs": [...]}). Columns: arm, seed and
test_loss, required; sweep (--sweep names a table without one, else the file's name does), tokens
(trained), test_set (an identifier of the test data), init_seed, data_seed and dropout_seed,
optional; a column that is there has a value in every row. It is refused as a
recorded sweep would be, with one line naming the row: a missing column, a bad arm name or seed, a
seed twice in one arm, a non-finite loss, a sweep without the baseline arm; and a sweep name the
store already holds for other runs. Importing the same file again adds nothing.

An imported run says what it is: its preset is "imported" and its config names the file and its
sha256. harness did not train it, so it cannot vouch for its pairing (the report says the pairing
is declared, and measures it), its budget or its test set beyond what the table states.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

import pandas as pd

from harness.core.bounds import LIMITS, absent, check_int, check_seeds
from harness.core.definitions import BASELINE, SWEEP_NAME, SWEEP_NAME_RULE
from harness.core.errors import UserError, shown
from harness.core.scheme import TRAINED_BY
from harness.store.record import COMPLETED, RunRow

IMPORTED = "imported"  # the preset of an imported run, and its config's key
REQUIRED = ("arm", "seed", "test_loss")
OPTIONAL = ("sweep", "tokens", "test_set", "init_seed", "data_seed", "dropout_seed")
SUFFIXES = (".csv", ".parquet", ".json")


def read_table(path: Path) -> tuple[pd.DataFrame, bytes]:
    """The file's rows and its bytes (read once: what is parsed is what is hashed), or one line
    saying why it cannot be read."""
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"{path}: import reads {', '.join(SUFFIXES)} files, not {path.suffix or 'a file without one'}")
    try:
        content = path.read_bytes()
        if path.suffix.lower() == ".csv":
            return pd.read_csv(io.BytesIO(content)), content
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(io.BytesIO(content)), content
        data = json.loads(content.decode("utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except Exception as err:  # OSError, a bad encoding, and pandas', pyarrow's and json's own parse errors
        raise UserError(f"{path}: cannot be read as {path.suffix[1:]}: {str(err).splitlines()[0]}") from None
    records = data.get("runs") if isinstance(data, dict) else data
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise UserError(f"{path}: a JSON import is a list of records, or {{\"runs\": [records]}}")
    return pd.DataFrame(records), content


def _integer(value: Any, what: str) -> int:
    if isinstance(value, str):  # a CSV column with one cell that is not a number is read as text
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not float(value).is_integer():
        raise UserError(f"{what} is {shown(value)!r}: give a whole number")
    return int(value)


def _text(value: Any) -> str:
    """A cell as a name: a whole number without its '.0'."""
    return str(int(value)) if isinstance(value, float) and value.is_integer() else str(value)


def checked_rows(table: pd.DataFrame, path: Path, sweep: str | None, baseline: str) -> list[dict[str, Any]]:
    """The table's runs as plain dicts (sweep, arm, seed, test_loss and the optional columns), every
    refusal of the module docstring checked first."""
    from harness.core.config import canonical_arm

    missing = [c for c in REQUIRED if c not in table.columns]
    if missing:
        raise UserError(f"{path}: no column {', '.join(missing)}; an import needs {', '.join(REQUIRED)} "
                        f"(optional: {', '.join(OPTIONAL)})")
    if table.empty:
        raise UserError(f"{path}: no rows")
    if sweep is not None and "sweep" in table.columns:
        raise UserError(f"{path}: the table names its sweeps (its sweep column); drop --sweep, or the column")
    rows = []
    for i, record in enumerate(table.to_dict("records"), start=2 if path.suffix.lower() == ".csv" else 1):
        where = f"{path} row {i}"
        for column in ("arm", "seed", *(c for c in ("sweep", "test_set") if c in table.columns)):
            if absent(record.get(column)):
                raise UserError(f"{where}: no {column}; a column that is there needs a value in every row")
        name = _text(record["sweep"]) if "sweep" in table.columns else sweep if sweep is not None else path.stem
        if not SWEEP_NAME.fullmatch(str(name)):
            raise UserError(f"{where}: sweep name {shown(str(name))!r}: use {SWEEP_NAME_RULE}")
        loss = record["test_loss"]
        if isinstance(loss, bool) or not isinstance(loss, (int, float)) or not math.isfinite(loss):
            raise UserError(f"{where}: test_loss is {shown(loss)!r}; every imported loss must be a finite number")
        run = {"sweep": str(name), "arm": canonical_arm(str(record["arm"])),
               "seed": _integer(record["seed"], f"{where}: seed"), "test_loss": float(loss)}
        for key in ("tokens", "init_seed", "data_seed", "dropout_seed"):
            value = record.get(key)
            if not absent(value):
                run[key] = check_int(f"{where}: {key}", _integer(value, f"{where}: {key}"), LIMITS[key])
                if run[key] < 0:
                    raise UserError(f"{where}: {key} must be >= 0, got {run[key]}")
        if run["seed"] < 0:
            raise UserError(f"{where}: seed must be >= 0, got {run['seed']}")
        run["test_set"] = _text(record["test_set"]) if "test_set" in table.columns else ""
        rows.append(run)
    for name in {r["sweep"] for r in rows}:
        check_seeds(sorted({r["seed"] for r in rows if r["sweep"] == name}), 1)
    twice = [key for key, n in Counter((r["sweep"], r["arm"], r["seed"]) for r in rows).items() if n > 1]
    if twice:
        name, arm, seed = twice[0]
        raise UserError(f"{path}: arm {arm!r} has seed {seed} twice (sweep {name!r}); a seed is one run per arm")
    for name in sorted({r["sweep"] for r in rows}):
        arms = sorted({r["arm"] for r in rows if r["sweep"] == name})
        if baseline not in arms:
            raise UserError(f"{path}: sweep {name!r} has no {baseline!r} arm (arms: {', '.join(arms)}); every arm is "
                            "compared with it: name yours with --baseline")
    return rows


def import_table(path: str | Path, store, sweep: str | None = None, baseline: str = BASELINE) -> dict[str, int]:
    """Take `path`'s runs into `store` (a ResultsStore); sweep -> runs added (0: imported before)."""
    path = Path(path)
    table, content = read_table(path)
    rows = checked_rows(table, path, sweep, baseline)
    digest = hashlib.sha256(content).hexdigest()
    ours = {r["sweep"] for r in rows}
    recorded = store.runs_frame()
    for name in sorted(ours):
        there = recorded[recorded["sweep"].eq(name)]
        mine = {_run_id(name, r, digest) for r in rows if r["sweep"] == name}
        if len(there) and not set(there["run_id"]) <= mine:
            raise UserError(f"sweep {name!r} already holds {len(there)} run(s) in {store.root} that this file did not "
                            "make: import it under another name (--sweep NAME)")
    added = dict.fromkeys(sorted(ours), 0)
    for row in store.append_all([_row(r, path, digest) for r in rows]):
        added[row.sweep] += 1
    return added


def _run_id(sweep: str, run: dict[str, Any], digest: str) -> str:
    return hashlib.sha256(f"{IMPORTED}/{digest}/{sweep}/{run['arm']}/{run['seed']}".encode()).hexdigest()[:16]


def _row(run: dict[str, Any], path: Path, digest: str) -> RunRow:
    from harness.core.config import split_arm

    tokens = run.get("tokens", 0)
    config = {IMPORTED: {"file": path.name, "sha256": digest}}
    return RunRow(status=COMPLETED, test_loss=run["test_loss"], tokens_seen=tokens,
                  test_set_id=run["test_set"] or f"{IMPORTED}:{digest[:12]}", run_id=_run_id(run["sweep"], run, digest),
                  attempt=1, sweep=run["sweep"], arm=run["arm"],
                  interventions="+".join(split_arm(run["arm"])), seed=run["seed"],
                  init_seed=run.get("init_seed", run["seed"]), data_seed=run.get("data_seed", run["seed"]),
                  dropout_seed=run.get("dropout_seed", run["seed"]), preset=IMPORTED, config=config,
                  config_hash=digest[:16], overrides={}, params=0, planned_tokens=tokens, tokens_per_step=0,
                  world_size=1)


def _recorded_by(rows: pd.DataFrame, key: str) -> dict[str, Any]:
    """The first row's config entry `key` ({} where no row has one)."""
    for text in rows.get("config", pd.Series(dtype=object)):
        try:
            config = json.loads(text) if isinstance(text, str) else None
        except ValueError:
            continue
        if isinstance(config, dict) and isinstance(config.get(key), dict):
            return config[key]
    return {}


def is_imported(rows: pd.DataFrame) -> str:
    """The file an imported sweep's rows came from ("" where harness made them)."""
    return str(_recorded_by(rows, IMPORTED).get("file", ""))


def external_trainer(rows: pd.DataFrame) -> str:
    """The command of the external trainer that trained a sweep's rows ("" where harness's own worker
    did): its pairing is the trainer's to keep (harness.store.contract)."""
    return str(_recorded_by(rows, TRAINED_BY).get("command", ""))
