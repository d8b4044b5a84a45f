"""The identity of a recorded run, for rows and specs of every harness version.

A run planned now carries its identity (harness.store.record.run_identity over the experiment's
hash, harness.core.scheme.experiment_hash, and its sub-seeds). Rows written before identities
existed do not: theirs is computed here from the resolved config they hold, the way this version
computes it, except that such a row cannot prove which corpus it trained on. Its key is therefore
a legacy key, which keeps the data path and the test set it measured, and a new plan looks a run
up under its identity first and then under its legacy key (legacy_key), so an old store's runs
are found, not trained again, as long as the corpus's test split is the one they were measured on.
That is the automatic migration: nothing on disk is rewritten.
"""

from __future__ import annotations

import json
from typing import Any, Mapping

from harness.core.scheme import experiment_hash
from harness.core.seeds import REPLICATE
from harness.store.record import run_identity

LEGACY = "legacy:"


def legacy_key(config: Mapping[str, Any], tokens: int, tokens_per_step: int, sub_seeds: Mapping[str, int],
               replica: int, test_set_id: str) -> str:
    """The key under which a run recorded before identities is found: its experiment with the data
    path standing for the corpus, its sub-seeds, and the test set it was measured on."""
    digest = run_identity(experiment_hash(dict(config), int(tokens), int(tokens_per_step), scheme=1), sub_seeds["init"],
                          sub_seeds["data"], sub_seeds["dropout"], replica)
    return f"{LEGACY}{digest}:{test_set_id}"


def identity_of(row: Mapping[str, Any]) -> str:
    """A row's (or spec's) identity, or its legacy key when it predates identities; '' when its
    config cannot be read (a hand-made row)."""
    if row.get("identity"):
        return str(row["identity"])
    try:
        config = row["config"]
        config = json.loads(config) if isinstance(config, str) else config
        replica = int(row.get("replica") or 0)
        if not replica and row.get("vary") == REPLICATE:  # old noise studies: replicate r had seed r
            replica = int(row.get("seed") or 0)
        seeds = {k: int(row[f"{k}_seed"]) for k in ("init", "data", "dropout")}
        return legacy_key(config, int(row["planned_tokens"]), int(row["tokens_per_step"]), seeds, replica,
                          str(row.get("test_set_id") or ""))
    except (KeyError, TypeError, ValueError, AttributeError):
        return ""
