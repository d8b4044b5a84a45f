"""Code interventions (harness.core.code, harness.training.seams): a Python file beside an
intervention's TOML, paired with the baseline, identified by its content, never bypassed by a
fast path, and one clear line for bad code."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from conftest import invoke
from harness.core import config as cfgmod
from harness.core.config import TrainConfig
from harness.model import native
from harness.model.config import ModelConfig
from harness.model.gpt import GPTModel, init_weights, mark_own
from harness.training.seams import Optimizers, Seams
from harness.training.worker import Dist, Trainer, lr_at

CPU = Dist(0, 1, 0, torch.device("cpu"))
MICRO = ["--preset", "micro", "--tokens", "2000"]


def seams_of(name: str, mcfg: ModelConfig, tcfg: TrainConfig, steps: int = 10, seed: int = 0, **settings) -> Seams:
    iv = cfgmod.load_intervention(name, cfgmod.Library.from_environment())
    entry = iv.code.entry(iv.settings | settings)
    return Seams.load([entry], None, mcfg, tcfg, steps, seed, files=[iv.code.path])


def user_folder(root: Path, files: dict[str, str]) -> Path:
    """A definitions folder of the user's: interventions/NAME.toml and NAME.py from `files` (a .py's
    TOML is written for it unless given)."""
    folder = root / "defs"
    (folder / "interventions").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / "interventions" / name).write_text(text)
        stem, suffix = name.rsplit(".", 1)
        if suffix == "py" and f"{stem}.toml" not in files:
            (folder / "interventions" / f"{stem}.toml").write_text(f'description = "{stem}"\ncode = "{name}"\n')
    return folder


def sweep(results: Path, folder: Path, *arms: str, seeds: int = 1, extra: tuple[str, ...] = ()):
    return invoke("sweep", *arms, "--seeds", str(seeds), *MICRO, "--results", str(results), "--sweeps", str(folder),
                  *extra)


def rows_of(results: Path) -> pd.DataFrame:
    return pd.read_parquet(results / "runs.parquet")


# ----------------------------------------------------------------------------- pairing and identity

SAME_AS_BASELINE = '''
import torch

def convert(model, ctx):
    return model

def optimizer(model, ctx):
    t = ctx.train_config
    return torch.optim.AdamW(model.parameters(), lr=t.lr, betas=(t.beta1, t.beta2), weight_decay=t.weight_decay,
                             fused=True)

def schedule(step, ctx):
    return {"lr": ctx.train_config.lr}
'''


def test_a_code_intervention_that_changes_nothing_reproduces_the_baseline_bit_for_bit(tmp_path):
    """A/A: a convert that keeps the model, the baseline's optimiser and its constant schedule give
    the baseline's test loss exactly, seed by seed, while being another experiment (its own runs)."""
    folder = user_folder(tmp_path, {"same.py": SAME_AS_BASELINE})
    code, out, err = sweep(tmp_path / "r", folder, "same", seeds=2)
    assert code == 0, err + out
    rows = rows_of(tmp_path / "r")
    assert len(rows) == 4 and rows["status"].eq("completed").all()
    losses = rows.pivot(index="seed", columns="arm", values="test_loss")
    assert (losses["same"] == losses["baseline"]).all(), losses
    assert rows.groupby("arm")["config_hash"].nunique().eq(1).all() and rows["config_hash"].nunique() == 2
    code_entry = json.loads(rows[rows["arm"].eq("same")]["config"].iloc[0])["code"][0]
    stored = tmp_path / "r" / "code" / code_entry["sha256"] / "same.py"
    assert stored.read_text() == SAME_AS_BASELINE  # every row points to the stored copy by its content


def test_new_parameters_draw_their_own_streams_and_shared_ones_the_baselines(tmp_path):
    mcfg = cfgmod.resolve("micro").model
    tcfg = cfgmod.resolve("micro").train
    base = GPTModel(mcfg)
    init_weights(base, 7)
    folder = user_folder(tmp_path, {"gate.py": '''
import torch
from torch import nn

def convert(model, ctx):
    model.gate = nn.Parameter(torch.empty(model.cfg.emb_dim))

def init(name, param, generator, ctx):
    if name == "gate":
        return torch.randn(param.shape, generator=generator)
'''})
    library = cfgmod.Library.from_environment([folder])
    iv = cfgmod.load_intervention("gate", library)
    seams = Seams.load([iv.code.entry({})], None, mcfg, tcfg, 10, 7, files=[iv.code.path])
    changed = seams.convert(GPTModel(mcfg))
    init_weights(changed, 7, seams.initial_value())
    shared = dict(base.named_parameters())
    for name, p in changed.named_parameters():
        if name in shared:
            assert torch.equal(p, shared[name]), name
    assert changed.gate.abs().sum() > 0
    again = seams.convert(GPTModel(mcfg))
    init_weights(again, 7, seams.initial_value())
    assert torch.equal(again.gate, changed.gate)


# ----------------------------------------------------------------------------- fast paths never bypass code


def reference_loss(model: GPTModel, x: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """The micro GPT-2 with QK-norm written in plain torch from the model's weights (no dropout)."""
    cfg, p = model.cfg, dict(model.named_parameters())
    B, T = x.shape
    H, D = cfg.n_heads, cfg.head_dim
    h = p["tok_emb.weight"][x] + p["pos_emb.weight"][:T]
    for i in range(cfg.n_layers):
        b = f"trf_blocks.{i}."
        a = F.layer_norm(h, (cfg.emb_dim,), p[b + "norm1.scale"], p[b + "norm1.shift"], cfg.norm_eps)
        q = F.rms_norm(F.linear(a, p[b + "att.W_query.weight"]).view(B, T, H, D), (D,), eps=eps).transpose(1, 2)
        k = F.rms_norm(F.linear(a, p[b + "att.W_key.weight"]).view(B, T, H, D), (D,), eps=eps).transpose(1, 2)
        v = F.linear(a, p[b + "att.W_value.weight"]).view(B, T, H, D).transpose(1, 2)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
        att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, cfg.emb_dim)
        h = h + F.linear(att, p[b + "att.out_proj.weight"], p[b + "att.out_proj.bias"])
        m = F.layer_norm(h, (cfg.emb_dim,), p[b + "norm2.scale"], p[b + "norm2.shift"], cfg.norm_eps)
        m = F.linear(m, p[b + "ff.layers.0.weight"], p[b + "ff.layers.0.bias"])
        h = h + F.linear(F.gelu(m, approximate="tanh"), p[b + "ff.layers.2.weight"], p[b + "ff.layers.2.bias"])
    h = F.layer_norm(h, (cfg.emb_dim,), p["final_norm.scale"], p["final_norm.shift"], cfg.norm_eps)
    return F.cross_entropy(F.linear(h, p["out_head.weight"])[..., :cfg.vocab_size].flatten(0, 1), y.flatten())


@pytest.mark.parametrize("path", ["c-kernels", "torch-kernels", "compiled"])
def test_qk_norm_in_code_computes_its_plain_torch_reference_on_every_path(path, monkeypatch):
    """Training mode without dropout takes the CPU's projected attention where it may: the hooks of
    QK-norm must make it step aside on the eager CPU (C kernels on and off) and compiled."""
    if path == "torch-kernels":
        monkeypatch.setattr(native, "library", lambda: None)
    elif path == "c-kernels" and native.library() is None:
        pytest.skip("no C compiler here: the C kernels are not built")
    mcfg = dataclasses.replace(cfgmod.resolve("micro").model, drop_rate=0.0)
    tcfg = cfgmod.resolve("micro").train
    model = GPTModel(mcfg)
    mark_own(seams_of("qk_norm", mcfg, tcfg).convert(model))
    init_weights(model, 3)
    x, y = torch.randint(0, mcfg.vocab_size, (2, 4, mcfg.context_length), generator=torch.Generator().manual_seed(1))
    model.train()
    run = torch.compile(model) if path == "compiled" else model
    loss = run(x, y) if path != "compiled" else F.cross_entropy(run(x).flatten(0, 1), y.flatten())
    expected = reference_loss(model, x, y, 1e-6)
    assert loss.item() == pytest.approx(expected.item(), abs=2e-5)
    # the test can fail: where the fast path ignored the hooks, the loss is the plain model's
    if path == "c-kernels":
        for module in model.modules():
            module._harness_own = True
        assert abs(model(x, y).item() - expected.item()) > 1e-3


def test_a_replaced_head_is_never_skipped_by_the_fused_head():
    mcfg = cfgmod.resolve("micro").model
    tcfg = cfgmod.resolve("micro").train
    model = GPTModel(mcfg)
    mark_own(seams_of("softcap", mcfg, tcfg, softcap=0.5).convert(model))
    init_weights(model, 0)
    x = torch.randint(0, mcfg.vocab_size, (2, mcfg.context_length))
    assert model(x).abs().max() <= 0.5  # the capped logits, on the eager CPU path that fuses the head


# ----------------------------------------------------------------------------- optimiser and schedule


def test_muon_takes_the_hidden_matrices_and_its_schedule_sets_lr_and_momentum():
    mcfg = cfgmod.resolve("micro").model
    tcfg = dataclasses.replace(cfgmod.resolve("micro").train, lr_schedule="cosine", compile="off")
    steps = 20
    seams = seams_of("muon", mcfg, tcfg, steps=steps, muon_momentum_warmup=10)
    tokens = torch.randint(0, mcfg.vocab_size, (20_000,), generator=torch.Generator().manual_seed(0)).numpy()
    trainer = Trainer(mcfg, tcfg, CPU, train_tokens=tokens, data_seed=1, init_seed=2, dropout_seed=3, steps=steps,
                      tokens_per_step=tcfg.global_batch * mcfg.context_length, seams=seams)
    assert isinstance(trainer.optimizer, Optimizers)
    muon, adamw = trainer.optimizer.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    names = {id(p): n for n, p in trainer.model.named_parameters()}
    in_muon = {names[id(p)] for g in muon.param_groups for p in g["params"]}
    assert in_muon == {n for n, p in trainer.model.named_parameters() if p.ndim == 2 and n.startswith("trf_blocks.")}
    assert "tok_emb.weight" in {names[id(p)] for g in adamw.param_groups for p in g["params"]}
    for step in (0, 5, 15):
        trainer.train_step(step)
        lr = lr_at(step, steps, tcfg)
        assert adamw.param_groups[0]["lr"] == lr
        assert muon.param_groups[0]["lr"] == pytest.approx(lr * 0.02 / tcfg.lr)
        assert muon.param_groups[0]["momentum"] == pytest.approx(0.85 + min(1, step / 10) * 0.10)
    assert trainer.window_loss(3) < 6


# ----------------------------------------------------------------------------- composition


def test_convert_seams_compose_in_the_arms_order_and_other_seams_are_refused_twice(tmp_path):
    config = cfgmod.resolve("micro", "qk_norm+relu2")
    assert [e["intervention"] for e in config.code] == ["qk_norm", "relu2"]
    folder = user_folder(tmp_path, {"sgd.py": "import torch\n\ndef optimizer(model, ctx):\n"
                                              "    return torch.optim.SGD(model.parameters(), lr=0.1)\n"})
    code, _, err = sweep(tmp_path / "r", folder, "muon+sgd", extra=("--dry-run",))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "'muon' and 'sgd' both define the optimizer seam" in err


def test_a_code_setting_is_checked_like_a_key(tmp_path):
    folder = user_folder(tmp_path, {"qk.toml": 'code = "qk.py"\n[set]\nqk_norm_esp = 1e-5\n',
                                    "qk.py": 'SETTINGS = {"qk_norm_eps": (1e-6, "eps")}\n\ndef convert(model, ctx):\n'
                                             '    pass\n'})
    code, _, err = sweep(tmp_path / "r", folder, "qk", extra=("--dry-run",))
    assert code == 2 and "did you mean 'qk_norm_eps'" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = invoke("sweep", "muon", "--seeds", "1", *MICRO, "--results", str(tmp_path / "r"), "--set",
                          "muon.muon_lr=fast", "--dry-run")
    assert code == 2 and "muon_lr must be float" in err, err


# ----------------------------------------------------------------------------- a started sweep, bad code


def test_code_changed_under_a_started_sweep_is_refused(tmp_path):
    folder = user_folder(tmp_path, {"mine.py": "def convert(model, ctx):\n    pass\n"})
    assert sweep(tmp_path / "r", folder, "mine")[0] == 0
    (folder / "interventions" / "mine.py").write_text("def convert(model, ctx):\n    return None\n")
    code, _, err = sweep(tmp_path / "r", folder, "mine")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "arm 'mine'" in err and "code" in err and "give a new --name" in err
    code, out, err = sweep(tmp_path / "r", folder, "mine", extra=("--name", "v2"))  # the remedy it names
    assert code == 0 and "mine seed 0: test loss" in out, err


@pytest.mark.parametrize("text, says", [
    ("def convert(model, ctx)\n    pass\n", "bad.py:1:"),
    ("import not_a_module_anywhere\n\ndef convert(model, ctx):\n    pass\n", "bad.py:1: importing"),
    ("SETTINGS = {'x': 1}\n\ndef convert(model, ctx):\n    pass\n", "must be (default"),
    ("def convert(model, ctx):\n    return 3\n", "returned int"),
    ("X = 1\n", "defines none of the seams"),
])
def test_code_that_cannot_load_is_one_line_before_anything_trains(tmp_path, text, says):
    folder = user_folder(tmp_path, {"bad.py": text})
    code, _, err = sweep(tmp_path / "r", folder, "bad", extra=("--dry-run",))
    assert code == 2 and says in err and len(err.strip().splitlines()) == 1, err


BAD_SEAMS = {
    "raises.py": "def schedule(step, ctx):\n    if step == 2:\n        raise RuntimeError('boom')\n    return {}\n",
    "wrong.py": "def schedule(step, ctx):\n    return [0.1]\n",
    "draws.py": "import torch\n\ndef loss(logits, targets, ctx):\n    noise = torch.rand(())\n"
                "    return logits.logsumexp(-1).mean() + 0 * noise\n",
    "nan.py": "def loss(logits, targets, ctx):\n    return logits.sum() * float('nan')\n",
}


def test_a_seam_that_fails_in_a_run_fails_that_run_once_with_one_line(tmp_path):
    """Each class of bad code: the run is recorded unrunnable (not retried) with the file, the line
    and the seam; the sweep's other runs complete."""
    folder = user_folder(tmp_path, BAD_SEAMS)
    code, out, err = sweep(tmp_path / "r", folder, "raises", "wrong", "draws", "nan")
    rows = rows_of(tmp_path / "r").set_index("arm")
    assert rows.loc["baseline", "status"] == "completed"
    reasons = rows["reason"].to_dict()
    assert "raises.py:3: schedule seam of code intervention 'raises' raised RuntimeError: boom" in reasons["raises"]
    assert "wrong.py" in reasons["wrong"] and "returned [0.1] at step 0" in reasons["wrong"]
    assert "draws.py" in reasons["draws"] and "global random state" in reasons["draws"]
    assert "nan.py" in reasons["nan"] and "not finite from the start" in reasons["nan"]
    assert rows.loc[["raises", "wrong", "draws", "nan"], "status"].eq("unrunnable").all()
    assert rows.loc[["raises", "wrong", "draws", "nan"], "attempt"].eq(1).all()


def test_a_parameter_without_an_initialisation_rule_is_one_line(tmp_path):
    folder = user_folder(tmp_path, {"norm.py": "from torch import nn\n\ndef convert(model, ctx):\n"
                                               "    model.extra = nn.RMSNorm(model.cfg.emb_dim)\n"})
    sweep(tmp_path / "r", folder, "norm")
    row = rows_of(tmp_path / "r").set_index("arm").loc["norm"]
    assert row["status"] == "unrunnable" and "no initialisation rule for parameter 'extra.weight'" in row["reason"]


# ----------------------------------------------------------------------------- built-ins, warm workers, export


def test_the_built_in_code_interventions_end_to_end(tmp_path):
    """QK-norm, ReLU^2, soft-capping and Muon in one micro sweep, then the report with each arm's code
    hash and compute multiplier."""
    results = tmp_path / "r"
    code, out, err = invoke("sweep", "qk_norm", "relu2", "softcap", "muon", "--seeds", "2", *MICRO,
                            "--results", str(results), "--jobs", "1")
    assert code == 0, err + out
    rows = rows_of(results)
    assert rows["status"].eq("completed").all() and len(rows) == 10
    code, out, err = invoke("report", "--results", str(results), "--format", "json", "--out", str(tmp_path / "o") + "/")
    assert code == 0, err
    sweep_json = json.loads(out)["sweeps"][0]
    arms = {a["arm"]: a for a in sweep_json["provenance"]["arms"]}
    for name in ("qk_norm", "relu2", "softcap", "muon"):
        sha = json.loads(rows[rows["arm"].eq(name)]["config"].iloc[0])["code"][0]["sha256"]
        assert arms[name]["code"] == f"{name}.py {sha[:12]}"
        assert (results / "code" / sha / f"{name}.py").is_file()
    assert arms["baseline"]["code"] == "-"
    worth = {a["arm"]: a for a in sweep_json["worth"]["arms"]}
    assert set(worth) >= {"qk_norm", "relu2", "softcap", "muon"}
    # warm workers (--jobs 1: one) ran each code run before the next seed's baseline: that baseline
    # is the cold baseline of tests/fixtures/store-v1, to every digit
    stored = pd.read_parquet(Path(__file__).parent / "fixtures" / "store-v1" / "runs.parquet")
    cold = stored[stored["sweep"].eq("micro-qkv_bias") & stored["arm"].eq("baseline")].set_index("seed")["test_loss"]
    warm = rows[rows["arm"].eq("baseline")].set_index("seed")["test_loss"]
    assert warm.to_dict() == cold.to_dict()


def test_export_refuses_a_network_changed_by_code():
    from harness.training.export import unsupported

    cfg = cfgmod.resolve("micro", "qk_norm")
    assert any("qk_norm" in r and "code" in r for r in unsupported(cfg.model, list(cfg.code)))
    assert unsupported(cfgmod.resolve("micro").model, []) == []


def test_a_missing_stored_copy_is_one_line(tmp_path):
    cfg = cfgmod.resolve("micro", "relu2")
    with pytest.raises(FileNotFoundError, match="is missing"):
        Seams.load(cfg.code, tmp_path, cfg.model, cfg.train, 1, 0)


def test_the_users_own_modules_are_part_of_the_code_and_stored_with_it(tmp_path):
    """A code file that imports a helper module of the user's beside it: the helper's content is part
    of the identity (changing only the helper is refused under the started sweep), both are stored,
    and the runs import the stored copies."""
    folder = user_folder(tmp_path, {"helper.py": "def square(x):\n    return x * x\n",
                                    "act.py": "import torch\nfrom torch import nn\nimport helper\n\n\n"
                                              "class Act(nn.Module):\n    def forward(self, x):\n"
                                              "        return helper.square(torch.relu(x))\n\n\n"
                                              "def convert(model, ctx):\n    for b in model.trf_blocks:\n"
                                              "        b.ff.layers[1] = Act()\n"})
    (folder / "interventions" / "helper.toml").unlink()  # a module of the user's, not an intervention
    results = tmp_path / "r"
    code, out, err = sweep(results, folder, "act")
    assert code == 0, err
    rows = rows_of(results).set_index("arm")
    entry = json.loads(rows.loc["act", "config"])["code"][0]
    assert entry["modules"] == ["helper"]
    assert sorted(p.name for p in (results / "code" / entry["sha256"]).iterdir()) == ["act.py", "helper.py"]
    relu2 = cfgmod.resolve("micro", "relu2")  # the same function, from the built-in in one file
    relu2_loss = invoke("sweep", "relu2", "--seeds", "1", *MICRO, "--results", str(results))
    assert relu2_loss[0] == 0 and relu2.code
    assert rows_of(results).set_index("arm").loc["relu2", "test_loss"] == rows.loc["act", "test_loss"]
    (folder / "interventions" / "helper.py").write_text("def square(x):\n    return x ** 2\n")
    code, _, err = sweep(results, folder, "act")
    assert code == 2 and "code" in err and "give a new --name" in err, err


def test_a_hook_on_the_whole_model_sees_the_logits_on_every_path():
    """A convert that hooks the model itself (a softcap written as a forward hook): the eager CPU path
    must not hand it the loss instead of the logits (it passed the targets into the model)."""
    from harness.training.worker import eval_token_losses, model_computes_loss

    mcfg = cfgmod.resolve("micro").model
    model = GPTModel(mcfg)
    model.register_forward_hook(lambda module, args, out: 0.5 * out)
    mark_own(model)
    init_weights(model, 0)
    assert not model_computes_loss(model, torch.device("cpu"))
    x, y = torch.randint(0, mcfg.vocab_size, (2, 2, mcfg.context_length))
    expected = F.cross_entropy(0.5 * GPTModel.forward(model.eval(), x).flatten(0, 1), y.flatten(), reduction="none")
    assert torch.allclose(eval_token_losses(model, x, y, None).float(), expected, atol=1e-5)


def test_one_content_under_two_names_and_a_shared_helper_both_run(tmp_path):
    """Two interventions whose files are byte-identical (one stored folder, two names), and two that
    import the same helper module, combined in one arm: every run completes."""
    act = ("import torch\nfrom torch import nn\nimport common\n\n\nclass Act(nn.Module):\n"
           "    def forward(self, x):\n        return common.square(torch.relu(x))\n\n\n"
           "def convert(model, ctx):\n    for b in model.trf_blocks:\n        b.ff.layers[1] = Act()\n")
    folder = user_folder(tmp_path, {"common.py": "def square(x):\n    return x * x\n", "one.py": act, "two.py": act,
                                    "three.py": "import common\n\ndef init(name, param, generator, ctx):\n"
                                                "    return None\n"})
    (folder / "interventions" / "common.toml").unlink()
    code, out, err = sweep(tmp_path / "r", folder, "one", "two", "one+three")
    assert code == 0, err + out
    rows = rows_of(tmp_path / "r")
    assert rows["status"].eq("completed").all() and len(rows) == 3, rows[["arm", "status", "reason"]]
