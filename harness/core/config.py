"""Presets, interventions and overrides: everything that defines a run, read from TOML data.

A run's configuration is one flat namespace of keys: the network's switches (model.ModelConfig)
and the training switches (TrainConfig). A preset (sweeps/presets/NAME.toml) sets the starting
values in [model] and [train] tables; an intervention (sweeps/interventions/NAME.toml) overrides
some keys in its [set] table; `--set key=value` overrides what no TOML file names yet. Arms
compose interventions with '+': "qkv_bias+no_dropout".
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_origin, get_type_hints

from harness.core.bounds import check_int
from harness.core.code import COMPOSING, CodeFile, coerce_setting, read_code
from harness.core.definitions import BASELINE, NAME, NAME_RULE, Library
from harness.core.errors import UserError, shown
from harness.model.config import ModelConfig, check_literals, documented, key_docs, not_allowed



@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule, precision, batch shape and data switches (the book's defaults)."""

    data: str = documented("shakespeare", "'shakespeare', a text file/folder, or a folder of uint16 .bin shards")
    tokenizer: str = documented("gpt2", "gpt2 (BPE) or bytes")
    lr: float = documented(4e-4, "AdamW learning rate (the peak, with the cosine schedule)")
    weight_decay: float = documented(0.1, "AdamW weight decay, on every parameter (as the book)")
    beta1: float = documented(0.9, "AdamW beta1")
    beta2: float = documented(0.999, "AdamW beta2")
    grad_clip: float = documented(0.0, "max global gradient norm; 0 = no clipping")
    lr_schedule: Literal["constant", "cosine"] = documented("constant", "constant, or cosine: linear warmup then cosine decay")
    warmup_frac: float = documented(0.05, "cosine schedule: linear warmup over this fraction of the steps")
    min_lr_ratio: float = documented(0.1, "cosine schedule: floor as a fraction of lr")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = documented("auto", "autocast dtype; auto: bf16 on CUDA, fp32 on CPU; "
                                                                    "fp16 uses a GradScaler")
    global_batch: int = documented(96, "sequences per optimiser step, however many processes share them "
                                       "(the seed author's 8 GPUs x 12)")
    micro_batch: int = documented(12, "at most this many sequences per process per micro-step (a memory knob; "
                                      "gradient accumulation is derived)", placement=True)
    tokens_per_param: float = documented(20.0, "Chinchilla budget: training tokens per parameter")
    shuffle: bool = documented(True, "False: the seed author's fixed, unshuffled data order")
    allow_repeat: bool = documented(False, "allow a budget larger than one epoch of the training split")
    eval_batch: int = documented(0, "sequences per evaluation batch; 0 = automatic", placement=True)
    log_every: int = documented(0, "steps between loss-curve points; 0 = about 200 points per run", placement=True)
    checkpoint_every: int = documented(0, "steps between checkpoints; 0 = about 10 per run", placement=True)
    heldout_points: int = documented(11, "held-out evaluations along training, in eval mode: at the budget and at "
                                         "1/sqrt(2), 1/2, ... of it (log-spaced); 0 = none", placement=True)
    heldout_tokens: int = documented(0, "test tokens each held-out point evaluates: windows spread evenly over the "
                                        "test split; 0 = all of it, exactly as the final test loss",
                                     placement=True)
    compile: Literal["auto", "on", "off"] = documented("auto", "torch.compile: auto = on for CUDA", placement=True)

    def validate(self) -> None:
        positive = ("lr", "global_batch", "micro_batch", "tokens_per_param")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for name in ("weight_decay", "grad_clip", "eval_batch", "log_every", "checkpoint_every", "heldout_points",
                     "heldout_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2", "warmup_frac", "min_lr_ratio"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        check_literals(self)


MODEL_KEYS = frozenset(ModelConfig.field_names())
TRAIN_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig))
assert not MODEL_KEYS & TRAIN_KEYS, "model and train keys must not collide"
ALL_KEYS = MODEL_KEYS | TRAIN_KEYS
# how a budget is chosen, not what a run computes (its budget in tokens is): not in its identity
BUDGET_RULES = ("tokens_per_param", "allow_repeat")
# knobs of where and how fast a run computes: on the row for provenance, not in its identity
PLACEMENT_KEYS = frozenset(f.name for f in dataclasses.fields(TrainConfig) if f.metadata.get("placement"))


def config_keys() -> list[tuple[str, str, Any, str]]:
    """Every config key: (name, group, default, one-line meaning), model keys first."""
    return [(name, group, default, doc) for group, cls in (("model", ModelConfig), ("train", TrainConfig))
            for name, (default, doc) in key_docs(cls).items()]


def _closest(name: str, candidates) -> str:
    match = difflib.get_close_matches(name, sorted(candidates), n=1)
    return f" (did you mean {match[0]!r}?)" if match else ""


def read_toml(path: Path) -> dict[str, Any]:
    """A definitions file's TOML (preset, intervention or sweep file), or one line naming what is wrong."""
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as err:
        raise UserError(f"{path}: malformed TOML: {err}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


def _field_types() -> dict[str, Any]:
    hints = get_type_hints(ModelConfig) | get_type_hints(TrainConfig)
    return {k: hints[k] for k in ALL_KEYS}


FIELD_TYPES = _field_types()


NEVER_HASHED = "never part of an identity"


@dataclass(frozen=True)
class Retired:
    """A key of earlier versions. Records that hold it stay readable: at `neutral` (what this
    version computes) it is what runs without it compute; at another value it keeps those runs
    apart from anything planned now (harness.core.scheme). NEVER_HASHED: retired before identities."""

    instead: str  # what to use instead, for a --set or a TOML file that still names it
    neutral: Any = NEVER_HASHED


RETIRED_KEYS = {"grad_accum": Retired("gradient accumulation is derived from global_batch / (processes x micro_batch); "
                                      "set global_batch (sequences per optimiser step) instead")}


def coerce(key: str, value: Any, where: str) -> Any:
    """Check one override against its field's type; ints are accepted where floats are wanted."""
    if key in RETIRED_KEYS:
        raise UserError(f"{where}: {key} is no longer a key: {RETIRED_KEYS[key].instead}")
    if key not in ALL_KEYS:
        raise UserError(f"{where}: unknown key {key!r}{_closest(key, ALL_KEYS)}; see `harness list --keys`")
    kind = FIELD_TYPES[key]
    if get_origin(kind) is Literal:
        why = not_allowed(key, value, kind)
        if why:
            raise UserError(f"{where}: {why}")
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"{where}: {key} must be true or false, got {value!r}")
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is float and isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{where}: {key} must be a finite number, got {value!r}")
    if not isinstance(value, kind) or isinstance(value, bool) != (kind is bool):
        raise UserError(f"{where}: {key} must be {kind.__name__}, got {value!r}")
    if kind is int:
        check_int(f"{where}: {key} =", value)
    return value


def parse_set(item: str) -> tuple[str, Any]:
    """'lr=1e-3' -> ('lr', 0.001). Values are TOML literals; bare words are strings. A code
    intervention's setting is INTERVENTION.SETTING ('muon.muon_lr=0.05'), checked where the arms
    are resolved (resolve: against the intervention's file)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lr=1e-3")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()
    return checked_set(key, value, f"--set {item}")


def checked_set(key: str, value: Any, where: str) -> tuple[str, Any]:
    """One override as given (--set, or the Python API's `sets`): a key's value checked against its
    type; a code intervention's INTERVENTION.SETTING checked for its form here and against the
    intervention's file where the arms are resolved."""
    name, dot, setting = key.partition(".")
    if dot:
        if not NAME.fullmatch(name) or not setting.isidentifier():
            raise UserError(f"{where}: a code intervention's setting is INTERVENTION.SETTING=VALUE, "
                            "e.g. --set muon.muon_lr=0.05")
        return key, value
    return key, coerce(key, value, where)


def code_sets(sets: dict[str, Any], library: Library) -> dict[str, dict[str, Any]]:
    """--set's INTERVENTION.SETTING values by intervention, each checked against its file's SETTINGS."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in sets.items():
        name, dot, setting = key.partition(".")
        if not dot:
            continue
        iv = load_intervention(name, library)
        if iv.code is None:
            raise UserError(f"--set {key}: intervention {name!r} has no code file, so no settings of its own")
        out.setdefault(name, {})[setting] = coerce_setting(iv.code, setting, value, f"--set {key}")
    return out


@dataclass(frozen=True)
class Intervention:
    name: str
    description: str
    source: str
    overrides: dict[str, Any]  # built-in keys its [set] sets
    code: CodeFile | None = None  # its Python file (harness.core.code), if it has one
    settings: dict[str, Any] = dataclasses.field(default_factory=dict)  # its [set] values of the file's settings


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    model: dict[str, Any]
    train: dict[str, Any]


KINDS = {dict: "a table", str: "a string", list: "a list", int: "an integer"}


def check_keys(path: Path, data: dict[str, Any], allowed: dict[str, type]) -> None:
    """Only the file kind's own top-level keys, each of its type (a [section] is a table; true is
    not an integer)."""
    for key, value in data.items():
        if key not in allowed:
            raise UserError(f"{path}: unknown {'section [' + key + ']' if isinstance(value, dict) else 'key ' + repr(key)}"
                            f"{_closest(key, list(allowed))}; allowed: {', '.join(allowed)}")
        if not isinstance(value, allowed[key]) or (isinstance(value, bool) and allowed[key] is not bool):
            raise UserError(f"{path}: {key} must be {KINDS[allowed[key]]}, got {value!r}")


def preset_names(library: Library | None = None) -> list[str]:
    return (library or Library.from_environment()).names("preset")


def intervention_names(library: Library | None = None) -> list[str]:
    return (library or Library.from_environment()).names("intervention")


PRESET_KEYS = {"description": str, "model": dict, "train": dict}
INTERVENTION_KEYS = {"description": str, "source": str, "code": str, "set": dict}


def load_preset(name: str, library: Library | None = None) -> Preset:
    path = (library or Library.from_environment()).find("preset", name).path
    data = read_toml(path)
    check_keys(path, data, PRESET_KEYS)
    tables = {"model": MODEL_KEYS, "train": TRAIN_KEYS}
    for section, keys in tables.items():
        for key, value in data.get(section, {}).items():
            if key not in keys:
                raise UserError(f"{path}: [{section}] has unknown key {key!r}{_closest(key, keys)}")
            coerce(key, value, str(path))
    return Preset(name, data.get("description", ""), dict(data.get("model", {})), dict(data.get("train", {})))


def load_intervention(name: str, library: Library | None = None) -> Intervention:
    path = (library or Library.from_environment()).find("intervention", name).path
    data = read_toml(path)
    check_keys(path, data, INTERVENTION_KEYS)
    code = None
    if "code" in data:
        file = path.parent / data["code"]
        if Path(data["code"]).name != data["code"] or file.suffix != ".py":
            raise UserError(f"{path}: code = {data['code']!r} must name a .py file beside the TOML")
        code = read_code(file, name, frozenset(ALL_KEYS))
    for key in data.get("set", {}) if code else ():
        if key not in ALL_KEYS and key not in code.settings and key not in RETIRED_KEYS:
            raise UserError(f"{path}: unknown key {key!r}{_closest(key, ALL_KEYS | set(code.settings))}; "
                            f"{code.path.name} declares {', '.join(code.settings) or 'no settings'}, and "
                            "`harness list --keys` lists the built-in keys")
    own = {k: v for k, v in data.get("set", {}).items() if code is None or k not in code.settings}
    overrides = {k: coerce(k, v, str(path)) for k, v in own.items()}
    settings = {k: coerce_setting(code, k, v, str(path)) for k, v in data.get("set", {}).items() if k not in own}
    return Intervention(name, data.get("description", ""), data.get("source", ""), overrides, code, settings)


def split_arm(arm: str) -> list[str]:
    """An arm's interventions, each once, in the order given, without the baseline:
    'qkv_bias+no_dropout' -> ['qkv_bias', 'no_dropout']; 'qkv_bias+baseline+qkv_bias' -> ['qkv_bias']."""
    parts = [p.strip() for p in arm.split("+")]
    if not arm.strip() or any(not p for p in parts):
        raise UserError(f"bad arm name {shown(arm)!r}: use intervention names joined by '+', e.g. qkv_bias+no_dropout")
    for p in parts:
        if not NAME.fullmatch(p):
            raise UserError(f"bad intervention name {shown(p)!r} in arm: use {NAME_RULE}; interventions are "
                            "TOML files (see `harness list`)")
    return list(dict.fromkeys(p for p in parts if p != BASELINE))


def canonical_arm(arm: str) -> str:
    """One name per set of interventions as given: duplicates and 'baseline' dropped."""
    return "+".join(split_arm(arm)) or BASELINE


def arm_overrides(arm: str, library: Library | None = None) -> dict[str, Any]:
    """Merge an arm's interventions; two that set one key to different values is an error."""
    return merged_overrides([load_intervention(name, library) for name in split_arm(arm)])


def merged_overrides(interventions: list[Intervention]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    setter: dict[str, str] = {}
    for iv in interventions:
        name = iv.name
        for key, value in iv.overrides.items():
            if key in merged and merged[key] != value:
                raise UserError(f"interventions {setter[key]!r} and {name!r} conflict: "
                                f"{setter[key]} sets {key}={merged[key]!r}, {name} sets {key}={value!r}")
            merged[key], setter[key] = value, name
    return merged


@dataclass(frozen=True)
class ArmConfig:
    """The fully resolved configuration of one arm (everything except the seed and the budget)."""

    preset: str
    arm: str
    model: ModelConfig
    train: TrainConfig
    overrides: dict[str, Any]  # what the arm and --set changed relative to the preset
    intervention_sets: dict[str, Any] = dataclasses.field(default_factory=dict)  # what the arm's interventions set
    code: tuple[dict[str, Any], ...] = ()  # its code interventions in the arm's order (CodeFile.entry)
    code_files: tuple[Path, ...] = ()  # where each was read (stored with the runs: harness.core.code.store_copy)

    def as_dict(self) -> dict[str, Any]:
        return {"preset": self.preset, "arm": self.arm,
                "model": dataclasses.asdict(self.model), "train": dataclasses.asdict(self.train)} | (
            {"code": [dict(e) for e in self.code]} if self.code else {})


@dataclass(frozen=True)
class Scale:
    """Another size of a preset (a rung of `harness ladder`, harness.planning.ladder): the size keys
    replace the preset's, and the learning rate each arm would have at the preset (the preset's,
    its interventions' or --set's) is multiplied by lr_factor. No arm or --set may set a size key:
    the size is the rung's."""

    sizes: tuple[tuple[str, Any], ...]  # (key, value): model dimensions and the global batch
    lr_factor: float = 1.0


def resolve(preset: str, arm: str = BASELINE, sets: dict[str, Any] | None = None,
            library: Library | None = None, scale: Scale | None = None) -> ArmConfig:
    """Preset values (at another size with `scale`), then the arm's interventions, then --set
    overrides (which win)."""
    library = library or Library.from_environment()
    arm = canonical_arm(arm)
    p = load_preset(preset, library)
    given = code_sets(dict(sets or {}), library)
    interventions = [load_intervention(name, library) for name in split_arm(arm)]
    interventions = [dataclasses.replace(iv, settings=iv.settings | given[iv.name]) if iv.name in given else iv
                     for iv in interventions]
    own = merged_overrides(interventions)
    code = arm_code(arm, interventions)
    overrides = own | dict(sets or {})
    model_kw = p.model | {k: v for k, v in overrides.items() if k in MODEL_KEYS}
    train_kw = p.train | {k: v for k, v in overrides.items() if k in TRAIN_KEYS}
    if scale is not None:
        sized = dict(scale.sizes)
        clash = sorted(set(sized) & set(overrides))
        if clash:
            who = "--set" if clash[0] in (sets or {}) else f"arm {arm!r}"
            raise UserError(f"{who} sets {clash[0]}, which a ladder sets per rung (the rung's size: "
                            f"{', '.join(sorted(sized))}); leave it to the ladder")
        model_kw |= {k: v for k, v in sized.items() if k in MODEL_KEYS}
        train_kw |= {k: v for k, v in sized.items() if k in TRAIN_KEYS}
        train_kw["lr"] = train_kw.get("lr", TrainConfig.lr) * scale.lr_factor
    model, train = ModelConfig(**model_kw), TrainConfig(**train_kw)
    try:
        model.validate()
        train.validate()
    except ValueError as err:
        raise UserError(f"arm {arm!r} on preset {preset!r}: {err}") from None
    intervention_sets = own | ({"code": [dict(e) for e in code]} if code else {})
    return ArmConfig(preset, arm, model, train, overrides, intervention_sets, tuple(code),
                     tuple(iv.code.path for iv in interventions if iv.code))


def arm_code(arm: str, interventions: list[Intervention]) -> list[dict[str, Any]]:
    """The arm's code interventions in its order; a seam other than convert defined by two of them
    is refused (harness.core.code.COMPOSING)."""
    owner: dict[str, str] = {}
    for iv in interventions:
        for seam in iv.code.seams if iv.code else ():
            if seam in owner and seam not in COMPOSING:
                raise UserError(f"arm {arm!r}: interventions {owner[seam]!r} and {iv.name!r} both define the "
                                f"{seam} seam, which one arm takes from one intervention only (only "
                                f"{', '.join(COMPOSING)} composes, in the arm's order)")
            owner.setdefault(seam, iv.name)
    return [iv.code.entry(iv.settings) for iv in interventions if iv.code]


# keys whose 'auto' means a device-dependent value: (on a CPU, on GPUs)
DEVICE_DEFAULTS = {"precision": ("fp32", "bf16"), "compile": ("off", "on")}


def value_of(cfg: ArmConfig, key: str) -> Any:
    return getattr(cfg.model if key in MODEL_KEYS else cfg.train, key)


def effective(cfg: ArmConfig, key: str, on_gpu: bool) -> Any:
    """A key's value as the run uses it on that device ('auto' resolved)."""
    value = value_of(cfg, key)
    return DEVICE_DEFAULTS[key][on_gpu] if key in DEVICE_DEFAULTS and value == "auto" else value


def config_hash(payload: dict[str, Any]) -> str:
    """Stable short hash of a JSON-able configuration."""
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]
