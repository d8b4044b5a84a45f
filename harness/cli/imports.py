"""`harness import`: results made elsewhere, taken into a results store (harness.store.imported)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from harness.cli.app import ResultsOpt, command, console
from harness.core.definitions import BASELINE


@command("import")
def import_cmd(
    file: Annotated[Path, typer.Argument(help="A CSV, Parquet or JSON table with columns arm, seed, test_loss "
                                              "(optional: sweep, tokens, test_set, init_seed, data_seed, "
                                              "dropout_seed).")],
    sweep: Annotated[Optional[str], typer.Option(
        help="The sweep to import into (default: the table's sweep column, else the file's name).")] = None,
    baseline: Annotated[str, typer.Option(help="The arm every other arm is compared with.")] = BASELINE,
    results: ResultsOpt = Path("results"),
):
    """Take runs trained elsewhere into the results store as an imported sweep, for `harness report`."""
    from harness.api import import_results

    added = import_results(file, results, sweep=sweep, baseline=baseline)
    for name, count in added.items():
        console.print(f"sweep {name!r}: {count} run(s) imported" if count else
                      f"sweep {name!r}: imported before, nothing added", highlight=False)
    console.print(f"report with:\n  harness report --results {results}" + (f" --baseline {baseline}"
                                                                            if baseline != BASELINE else ""))
