"""The identity scheme: what of a config makes a run's identity, so that a results store outlives
every version of harness that reads it. The config keys are defined in harness.model.config
(ModelConfig) and harness.core.config (TrainConfig); the rule that keeps them stable is here.

- Every key has a neutral value: the value under which harness computes exactly what it computed
  before the key existed (its default unless the key declares another: model.config.documented).
- A config is recorded (a run's spec and row, a saved plan) and hashed in one form, recorded():
  the keys of scheme 1 (SCHEME_1_KEYS: every key harness had when this rule was made, hashed with
  their values as they always were) and any later key only when it is not at its neutral value.
  Adding a switch that is off by default therefore changes no identity, no saved plan and no
  comparison; one set to another value makes another experiment.
- Reading a record: a key it lacks reads as its neutral value; a retired key
  (core.config.RETIRED_KEYS) as recorded; a key this version does not know is refused
  (NewerRecord: the store was written by a newer harness), never dropped.
- Giving an existing key's value another meaning is the one change that must change identities:
  add a MeaningChange below, which starts the next identity scheme. Runs recorded under an earlier
  scheme with an affected value keep their identities and rows; what is planned now gets new ones,
  a plan that would have reused them says why not (planning.plan.earlier_identities), and the report keeps old and
  new runs apart. Retiring a key is a RETIRED_KEYS entry with its neutral value.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping

from harness.core.config import (BUDGET_RULES, MODEL_KEYS, NEVER_HASHED, PLACEMENT_KEYS, RETIRED_KEYS, TRAIN_KEYS,
                                 TrainConfig, config_hash)
from harness.core.errors import UserError
from harness.model.config import ModelConfig, neutral_values

# every key of harness when identities became independent of the keys a version knows: these are
# hashed with their values whatever they are (as every identity recorded before was); any key added
# later enters only away from its neutral value. History: never edited.
SCHEME_1_KEYS = frozenset({
    "vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias", "tie_weights", "bias",
    "norm", "norm_eps", "positions", "rope_base", "mlp", "mlp_multiple_of", "parallel_block", "init",
    "attention_window", "vocab_multiple",
    "data", "tokenizer", "lr", "weight_decay", "beta1", "beta2", "grad_clip", "lr_schedule", "warmup_frac",
    "min_lr_ratio", "precision", "global_batch", "micro_batch", "tokens_per_param", "shuffle", "allow_repeat",
    "eval_batch", "log_every", "checkpoint_every", "heldout_points", "heldout_tokens", "compile",
})


@dataclass(frozen=True)
class MeaningChange:
    """A key whose values (`values`; empty: every value) compute something else from identity
    scheme `scheme` on. Runs planned since carry the change in their experiment ("KEY meaning"),
    so they are never taken for runs recorded before it."""

    scheme: int
    key: str
    why: str
    values: tuple[Any, ...] = ()

    def affects(self, value: Any) -> bool:
        return not self.values or value in self.values


MEANING_CHANGES: tuple[MeaningChange, ...] = ()  # in scheme order: 2, 3, ...


def current_scheme() -> int:
    """The identity scheme this version plans under: 1 + the meaning changes it knows."""
    return max((c.scheme for c in MEANING_CHANGES), default=1)


NEUTRAL = neutral_values(ModelConfig) | neutral_values(TrainConfig) | {
    k: r.neutral for k, r in RETIRED_KEYS.items() if r.neutral is not NEVER_HASHED}
SECTIONS = {"model": MODEL_KEYS, "train": TRAIN_KEYS}
TRAINED_BY = "trainer"  # a config's table of an external trainer's arm (harness.planning.trainer)
RECORD_KEYS = {"preset", "arm", "code", TRAINED_BY, *SECTIONS}  # what a recorded config holds (ArmConfig.as_dict)
TRAINER = "trainer command"  # the key that marks an external trainer's experiment (trainer_experiment)


def trainer_table(config: Any) -> dict[str, Any] | None:
    """An external trainer's table in a config (its command, files, settings, batch shape), or None
    where harness's own model computes the arm."""
    table = config.get(TRAINED_BY) if isinstance(config, Mapping) else None
    return table if isinstance(table, dict) else None


class NewerRecord(UserError):
    """A record holds a key this version does not know: a newer harness wrote it."""

    def __init__(self, key: str, where: str):
        self.key = key
        super().__init__(f"{where} has key {key!r}, which this version of harness does not know: it was written "
                         "by a newer harness; upgrade harness to read it (nothing was changed)")


def read_keys(config: Mapping[str, Any], where: str = "a recorded config") -> dict[str, Any]:
    """A recorded config's model and train keys, flat, as this version reads them: every key it
    knows (one the record lacks at its neutral value), a retired key as recorded, an unknown key
    refused."""
    for key in config:
        if key not in RECORD_KEYS:
            raise NewerRecord(key, where)
    values = dict(NEUTRAL)
    for section, known in SECTIONS.items():
        table = config.get(section) or {}
        for key, value in table.items():
            if key not in known and key not in RETIRED_KEYS:
                raise NewerRecord(key, where)
            if key in NEUTRAL:
                values[key] = value
    return values


def _compact(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if k in SCHEME_1_KEYS or v != NEUTRAL[k]}


def recorded(config: Mapping[str, Any], where: str = "a recorded config") -> dict[str, Any]:
    """A config (core.config.ArmConfig.as_dict()) in the form runs and plans record: its labels,
    and its keys in the identity scheme's form (scheme 1's keys, later ones away from neutral)."""
    if trainer_table(config) is not None:  # an external trainer's: its own settings, as they are
        return dict(config)
    values = _compact(read_keys(config, where))
    return {k: v for k, v in config.items() if k not in SECTIONS} | {
        section: {k: v for k, v in values.items() if k in known} for section, known in SECTIONS.items()}


def full_config(config: Mapping[str, Any], where: str = "a recorded config") -> tuple[ModelConfig, TrainConfig]:
    """The network and training configs a recorded config describes, as this version builds them
    (what a worker or an export uses): a key the record lacks at its neutral value."""
    values = read_keys(config, where)
    return (ModelConfig(**{k: values[k] for k in MODEL_KEYS}), TrainConfig(**{k: values[k] for k in TRAIN_KEYS}))


def meaning_key(key: str) -> str:
    return f"{key} meaning"


def experiment(config: Mapping[str, Any], tokens: int, tokens_per_step: int, data_id: str = "",
               scheme: int | None = None, where: str = "a recorded config") -> dict[str, Any]:
    """What an arm computes, as one flat dict: its keys in the recorded form (recorded()) without
    the placement knobs and how its budget was chosen (BUDGET_RULES), plus its token budget
    ("tokens"), its global batch in tokens, its data, and the meaning changes of `scheme` (the
    scheme it was recorded under; default: this version's) its values are under. data_id is the
    corpus's content (Corpus.data_id), which then stands for the data path; a row recorded before
    data ids existed ("") keeps the path instead. Runs are identified by its hash (experiment_hash)
    and compared key by key (harness.report.sameness, harness.store.planfile.conflicts), a key one
    side lacks read as neutral (every_key)."""
    trainer = trainer_table(config)
    if trainer is not None:
        return trainer_experiment(trainer, tokens, tokens_per_step)
    values = _compact(read_keys(config, where))
    out = {k: v for k, v in values.items() if k not in PLACEMENT_KEYS and k not in BUDGET_RULES}
    scheme = current_scheme() if scheme is None else scheme
    for change in MEANING_CHANGES:
        if change.scheme <= scheme and change.key in values and change.affects(values[change.key]):
            out[meaning_key(change.key)] = f"identity scheme {change.scheme}: {change.why}"
    if data_id:
        out.pop("data")
    if config.get("code"):  # code interventions (harness.core.code): each file's content and settings, in order
        out["code"] = [{"sha256": e["sha256"], "settings": e.get("settings", {})} for e in config["code"]]
    return out | {"tokens": int(tokens), "tokens_per_step": int(tokens_per_step)} | ({"data_id": data_id} if data_id else {})


def trainer_experiment(trainer: Mapping[str, Any], tokens: int, tokens_per_step: int) -> dict[str, Any]:
    """What an external trainer's arm computes (harness.planning.trainer): its command, the content
    of its files, each of its settings by name, and the budget; not the folder it runs in, nor how
    its budget was chosen."""
    return {TRAINER: trainer["command"], "trainer files": dict(trainer["files"]), **trainer["settings"],
            "global_batch": trainer["global_batch"], "context_length": trainer["context_length"],
            "tokens": int(tokens), "tokens_per_step": int(tokens_per_step)}


def experiment_hash(config: Mapping[str, Any], tokens: int, tokens_per_step: int, data_id: str = "",
                    scheme: int | None = None) -> str:
    """experiment(...) as 16 hex digits: equal exactly when two arms compute the same thing."""
    return config_hash(experiment(config, tokens, tokens_per_step, data_id, scheme))


EXPERIMENT_FACTS = frozenset({"tokens", "tokens_per_step", "data_id", "code"})


def shown(key: str, value: Any) -> str:
    """An experiment's value as messages and tables show it (a code file by its hash's first 12 digits)."""
    if value is None:
        return "(unset)"
    if key == "trainer files" and isinstance(value, dict):
        return ", ".join(f"{name} {sha[:12]}" for name, sha in sorted(value.items()))
    if key == "code" and isinstance(value, list):
        return " + ".join(f"code {e.get('sha256', '')[:12]}" + (f" {json.dumps(e['settings'], sort_keys=True)}"
                                                                 if e.get("settings") else "") for e in value)
    return json.dumps(value)


def every_key(experiment: Mapping[str, Any]) -> dict[str, Any]:
    """An experiment (experiment()) with every config key this version knows, one it lacks at its
    neutral value: the form in which two experiments, recorded by any versions, are compared key by
    key (a meaning change's mark stays absent where a record predates the change)."""
    if TRAINER in experiment:  # an external trainer's settings have no neutral values: its own are all there
        return dict(experiment)
    keys = [k for k in NEUTRAL if k not in PLACEMENT_KEYS and k not in BUDGET_RULES
            and not (k == "data" and "data_id" in experiment)]
    return {k: NEUTRAL[k] for k in keys} | dict(experiment)


def check_known(experiment_keys, where: str) -> None:
    """Refuse an experiment (a saved plan's) that holds a key this version does not know (an
    external trainer's settings are its own)."""
    if TRAINER in experiment_keys:
        return
    for key in experiment_keys:
        if key not in NEUTRAL and key not in EXPERIMENT_FACTS and key not in RETIRED_KEYS and not any(
                key == meaning_key(c.key) for c in MEANING_CHANGES):
            raise NewerRecord(key, where)


def scheme_of(value: Any) -> int:
    """A record's identity scheme (records from before schemes were recorded: 1)."""
    try:
        scheme = int(value)
    except (TypeError, ValueError):
        return 1
    return scheme if scheme >= 1 else 1
