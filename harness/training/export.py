"""`harness export`: a run's checkpoint as a Hugging Face transformers GPT-2 folder.

The folder holds config.json (GPT2Config) and model.safetensors (GPT2LMHeadModel's parameter
names), the GPT-2 BPE files when the run used the gpt2 tokenizer (vocab.json, merges.txt: the
same files OpenAI published, so AutoTokenizer loads them), and harness_export.json (where the
weights came from). It is written without importing transformers; when transformers is
installed the export is checked by loading it with GPT2LMHeadModel and comparing its logits with
harness's own model on a probe batch (max abs difference below 1e-4 in fp32, else an error).

GPT-2 can express an arm with learned positions, LayerNorm, the tanh-GELU MLP, sequential blocks
and full causal attention. The rest maps exactly:
  W_query/W_key/W_value   -> c_attn (Conv1D: weights transposed, Q, K, V concatenated)
  qkv_bias=false          -> zero c_attn biases (GPT-2 always has them; zeros are the same function)
  bias=false              -> zero biases in every Linear and LayerNorm, for the same reason
  tie_weights             -> tie_word_embeddings (true: lm_head is wte; false: its own lm_head.weight)
  vocab_multiple > 1      -> only the real vocab_size rows: the padded rows never reach a logit
  drop_rate               -> resid_pdrop, embd_pdrop and attn_pdrop; norm_eps -> layer_norm_epsilon
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from harness.training import checkpoint
from harness.core.errors import UserError
from harness.core.files import atomic_write_bytes, atomic_write_json, staged_folder, user_path
from harness.store.outputs import guard_destination
from harness.store.results import ResultsStore
from harness.core.scheme import full_config
from harness.model.config import ModelConfig

FORMATS = ("hf",)
MAX_LOGIT_DIFF = 1e-4


# ----------------------------------------------------------------------------- finding a run


@dataclass
class RunRef:
    run_id: str
    run_dir: Path
    spec: dict[str, Any]
    row: dict[str, Any] | None  # the row that speaks for the run in the results store (store.run_row), if any

    def require_trained(self, what: str) -> None:
        """Refuse to use a run whose counted attempt did not complete: its weights are not a
        trained model (NaN after a divergence, none after a failure). One line naming why."""
        status = (self.row or {}).get("status")
        if status in (None, "completed"):
            return
        reason = (self.row or {}).get("reason") or "no reason recorded"
        step = (self.row or {}).get("diverged_step")
        when = f" at step {int(step):,}" if step is not None and step == step else ""
        raise UserError(f"run {self.run_id} {status}{when} ({reason}): its checkpoint is not a trained model, "
                        f"so there is nothing to {what}; `harness status --runs` shows its attempts")

    @property
    def model_config(self) -> ModelConfig:
        return full_config(self.spec["config"], f"run {self.run_id}'s spec")[0]

    @property
    def tokenizer(self) -> str:
        return self.spec["config"]["train"]["tokenizer"]


def locate_run(ref: str, results: Path) -> RunRef:
    """A run by id (or unique id prefix) in the results folder, or by its run folder's path."""
    if not ref.strip():
        raise UserError("the run id is empty: give a run id (or a unique prefix); `harness status --runs` lists them")
    results = Path(results)
    runs = results / "runs"
    path = user_path(ref)
    if path.is_dir() and (path / "spec.json").is_file():
        run_dir = path
    elif (runs / ref).is_dir():
        run_dir = runs / ref
    else:
        names = sorted(d.name for d in runs.iterdir() if d.is_dir()) if runs.is_dir() else []
        matches = [n for n in names if n.startswith(ref)] if ref else []
        if len(matches) > 1:
            shown = ", ".join(matches[:5]) + (", ..." if len(matches) > 5 else "")
            raise UserError(f"run {ref!r} is ambiguous in {results}: it starts {len(matches)} run ids ({shown})")
        if not matches:
            import difflib

            close = difflib.get_close_matches(ref, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise UserError(f"no run {ref!r} in {results}{hint}; `harness status --results {results} --runs` "
                            "lists the run ids")
        run_dir = runs / matches[0]
    try:
        spec = json.loads((run_dir / "spec.json").read_text())
        spec["config"]["model"], spec["config"]["train"]  # noqa: B018 - shape check
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(f"run folder {run_dir} has no readable spec.json ({err})") from None
    run_id = spec.get("run_id", run_dir.name)
    store = ResultsStore(results)
    row = store.run_row(run_id) if store.runs_path.exists() else None
    return RunRef(run_id, run_dir, spec, row)


def load_run_model(run: RunRef, device: str = "cpu"):
    """(GPTModel in eval mode with the run's newest intact checkpoint, checkpoint meta)."""
    from safetensors.torch import load_model

    from harness.model import GPTModel

    found = checkpoint.latest(run.run_dir)
    if found is None:
        raise UserError(f"run {run.run_id} has no checkpoint (looked in {run.run_dir}/checkpoint); it has "
                        "not saved one yet, or it failed before its first")
    folder, meta = found
    cfg = run.model_config
    model = GPTModel(cfg)
    if run.spec["config"].get("code"):  # the network as its code interventions changed it
        from harness.model.gpt import mark_own
        from harness.training.seams import Seams

        train = full_config(run.spec["config"])[1]
        seams = Seams.load(run.spec["config"]["code"], run.run_dir.parent.parent, cfg, train, 0, 0)
        if seams.has("convert"):
            mark_own(seams.convert(model))
    load_model(model, str(folder / "model.safetensors"), device="cpu")
    model.to(device).eval()
    return model, meta


# ----------------------------------------------------------------------------- GPT-2 mapping


# What transformers' GPT-2 can hold, as an allow-list: any value of GPT2_ANY; of GPT2_ONLY's keys only
# the value given (and why). Any other key (one added since) only at its neutral value, and no code.
GPT2_ANY = frozenset({"vocab_size", "context_length", "emb_dim", "n_heads", "n_layers", "drop_rate", "qkv_bias",
                      "tie_weights", "bias", "norm_eps", "init", "vocab_multiple", "rope_base", "mlp_multiple_of"})
GPT2_ONLY = {"positions": ("learned", "GPT-2 has learned absolute position embeddings"),
             "norm": ("layernorm", "GPT-2 uses LayerNorm"),
             "mlp": ("gelu", "GPT-2's MLP is Linear, tanh-GELU, Linear"),
             "parallel_block": (False, "GPT-2's blocks are sequential"),
             "attention_window": (0, "GPT-2 attends to the whole context")}


def unsupported(cfg: ModelConfig, code: list[dict[str, Any]] | None = None) -> list[str]:
    """What of `cfg` (and its code interventions) GPT-2 cannot express (empty: it can)."""
    from harness.core.scheme import NEUTRAL

    values = dataclasses.asdict(cfg)
    shown = {k: str(v).lower() if isinstance(v, bool) else v for k, v in values.items()}
    reasons = [f"{key}={shown[key]} ({why})" for key, (allowed, why) in GPT2_ONLY.items() if values[key] != allowed]
    reasons += [f"{key}={shown[key]} (not part of GPT-2)" for key, value in values.items()
                if key not in GPT2_ANY and key not in GPT2_ONLY and value != NEUTRAL.get(key)]
    reasons += [f"code intervention {e['intervention']!r} ({e['file']}) changes the network in code, which "
                "GPT-2 in transformers cannot hold" for e in code or ()]
    return reasons


def hf_config(cfg: ModelConfig, eot_id: int) -> dict[str, Any]:
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.context_length, "n_embd": cfg.emb_dim,
        "n_layer": cfg.n_layers, "n_head": cfg.n_heads, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.drop_rate, "embd_pdrop": cfg.drop_rate, "attn_pdrop": cfg.drop_rate,
        "initializer_range": 0.02, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False, "use_cache": True,
        "bos_token_id": eot_id, "eos_token_id": eot_id,
        "tie_word_embeddings": bool(cfg.tie_weights), "torch_dtype": "float32",
    }


@torch.no_grad()
def hf_state_dict(model) -> dict[str, torch.Tensor]:
    """GPT2LMHeadModel's state dict (float32, CPU) for a GPTModel that GPT-2 can express."""
    cfg: ModelConfig = model.cfg
    V, d = cfg.vocab_size, cfg.emb_dim

    def t(x: torch.Tensor) -> torch.Tensor:
        return x.detach().to("cpu", torch.float32).contiguous().clone()

    def bias(linear: torch.nn.Linear) -> torch.Tensor:
        return t(linear.bias) if linear.bias is not None else torch.zeros(linear.out_features)

    def norm(prefix: str, ln) -> None:
        sd[f"{prefix}.weight"] = t(ln.scale)
        sd[f"{prefix}.bias"] = t(ln.shift) if ln.shift is not None else torch.zeros(d)

    sd: dict[str, torch.Tensor] = {
        "transformer.wte.weight": t(model.tok_emb.weight[:V]),
        "transformer.wpe.weight": t(model.pos_emb.weight),
    }
    for i, block in enumerate(model.trf_blocks):
        p, att, ff = f"transformer.h.{i}", block.att, block.ff.layers
        norm(f"{p}.ln_1", block.norm1)
        norm(f"{p}.ln_2", block.norm2)
        qkv = (att.W_query, att.W_key, att.W_value)
        sd[f"{p}.attn.c_attn.weight"] = t(torch.cat([lin.weight.T for lin in qkv], dim=1))
        sd[f"{p}.attn.c_attn.bias"] = torch.cat([bias(lin) for lin in qkv])
        sd[f"{p}.attn.c_proj.weight"] = t(att.out_proj.weight.T)
        sd[f"{p}.attn.c_proj.bias"] = bias(att.out_proj)
        sd[f"{p}.mlp.c_fc.weight"] = t(ff[0].weight.T)
        sd[f"{p}.mlp.c_fc.bias"] = bias(ff[0])
        sd[f"{p}.mlp.c_proj.weight"] = t(ff[2].weight.T)
        sd[f"{p}.mlp.c_proj.bias"] = bias(ff[2])
    norm("transformer.ln_f", model.final_norm)
    if not cfg.tie_weights:
        sd["lm_head.weight"] = t(model.out_head.weight[:V])
    return sd


def _write_gpt2_tokenizer(out: Path, context_length: int) -> None:
    """GPT-2's BPE files (the ones harness's gpt2 tokenizer is built from) in HF's layout."""
    from harness.data.tokenizers import ENDOFTEXT, _gpt2_file

    shutil.copyfile(_gpt2_file("encoder.json"), out / "vocab.json")
    shutil.copyfile(_gpt2_file("vocab.bpe"), out / "merges.txt")
    atomic_write_json(out / "tokenizer_config.json", {
        "tokenizer_class": "GPT2Tokenizer", "model_max_length": context_length, "add_prefix_space": False,
        "bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT})
    atomic_write_json(out / "special_tokens_map.json",
                      {"bos_token": ENDOFTEXT, "eos_token": ENDOFTEXT, "unk_token": ENDOFTEXT})


def transformers_available() -> bool:
    try:
        import transformers  # noqa: F401
    except ImportError:
        return False
    return True


@torch.no_grad()
def compare_logits(folder: Path, model, seed: int = 0, batch: int = 2) -> float:
    """Max abs difference between GPT2LMHeadModel(folder) and `model` logits on random tokens."""
    from transformers import GPT2LMHeadModel

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = GPT2LMHeadModel.from_pretrained(str(folder))
    hf.float().eval()
    cfg: ModelConfig = model.cfg
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, cfg.vocab_size, (batch, cfg.context_length), generator=g)
    ours = model.to("cpu").float().eval()(idx)
    theirs = hf(idx).logits
    if theirs.shape != ours.shape:
        raise UserError(f"the exported model's logits have shape {tuple(theirs.shape)}, harness's "
                        f"{tuple(ours.shape)}")
    return float((theirs - ours).abs().max())


def export_run(run: RunRef, out: Path, fmt: str = "hf", overwrite: bool = False,
               check: bool | None = None) -> dict[str, Any]:
    """Write the export (all of it, or nothing); returns what harness_export.json records (incl. the
    logit check)."""
    from harness.data.tokenizers import get_tokenizer

    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: allowed: {', '.join(FORMATS)}")
    cfg = run.model_config
    reasons = unsupported(cfg, run.spec["config"].get("code"))
    if reasons:
        raise UserError(f"run {run.run_id} (arm {run.spec.get('arm')}) cannot be a GPT-2: " + "; ".join(reasons))
    run.require_trained("export")
    out = user_path(out)
    guard_destination(out, "--out", {f"run {run.run_id}'s folder (its checkpoint)": run.run_dir})
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file; give a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{str(out)!r} is not empty; use --overwrite to replace what is there, or another --out")
    model, meta = load_run_model(run)
    tok = get_tokenizer(run.tokenizer)
    if tok.vocab_size > cfg.vocab_size:
        raise UserError(f"run {run.run_id}: tokenizer {tok.name} has {tok.vocab_size} tokens but the model only "
                        f"{cfg.vocab_size}")
    if check is None:
        check = transformers_available()
    elif check and not transformers_available():
        raise UserError("--check needs transformers: pip install 'harness[hf]' (or pass --no-check)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {str(out.parent)!r}: {err.strerror}") from None
    with staged_folder(out, EXPORT_FILES) as stage:  # nothing lands in --out unless all of it is written and checked
        return _write_export(run, stage, out, model, meta, tok, check)


EXPORT_FILES = ("model.safetensors", "config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                "special_tokens_map.json", "harness_export.json")


def _write_export(run: RunRef, stage: Path, out: Path, model, meta: dict[str, Any], tok, check: bool) -> dict[str, Any]:
    from safetensors.torch import save_file

    cfg = run.model_config
    save_file(hf_state_dict(model), str(stage / "model.safetensors"), metadata={"format": "pt"})
    atomic_write_json(stage / "config.json", hf_config(cfg, tok.eot_id))
    if tok.name == "gpt2":
        _write_gpt2_tokenizer(stage, cfg.context_length)
    row = run.row or {}
    record = {
        "run_id": run.run_id, "arm": run.spec.get("arm"), "seed": run.spec.get("seed"),
        "sweep": run.spec.get("sweep"), "preset": run.spec.get("preset"),
        "checkpoint_step": meta.get("step"), "planned_steps": run.spec.get("steps"),
        "status": row.get("status"), "test_loss": row.get("test_loss"), "tokenizer": tok.name,
        "harness_config": run.spec["config"], "exported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "padded_rows_dropped": cfg.padded_vocab_size - cfg.vocab_size, "max_abs_logit_diff": None,
    }
    if check:
        diff = compare_logits(stage, model)
        record["max_abs_logit_diff"] = diff
        if not diff <= MAX_LOGIT_DIFF:
            raise UserError(f"the export of run {run.run_id} does not reproduce the run's logits: max abs difference "
                            f"{diff:.3g} > {MAX_LOGIT_DIFF}; nothing was written to {out}")
    atomic_write_bytes(stage / "harness_export.json", json.dumps(record, indent=1, default=str).encode())
    return record
