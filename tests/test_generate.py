"""`harness generate`: the book's generate() (top-k, temperature, argmax at 0), seeded, from a checkpoint."""

from __future__ import annotations

import pytest
import torch

from harness.training import checkpoint
from harness.core import config as cfgmod
from harness.planning.budget import fixed_budget
from harness.core.errors import UserError
from harness.training.export import locate_run
from harness.training.generate import generate_ids, sample
from harness.planning.plan import run_spec
from harness.store.results import ResultsStore
from harness.model import GPTModel, init_weights
from conftest import invoke


def fake_run(results, arm: str = "baseline", seed: int = 0, with_checkpoint: bool = True, preset: str = "micro"):
    """A run folder as `harness run` leaves it (spec.json, checkpoint/) with untrained, seeded weights."""
    cfg = cfgmod.resolve(preset, arm, {})
    spec = run_spec(cfg, seed, fixed_budget(cfg, 1, 1000), "test", 1)
    run_dir = ResultsStore(results).run_dir(spec.run_id)
    run_dir.mkdir(parents=True)
    (run_dir / "spec.json").write_text(spec.to_json())
    model = GPTModel(cfg.model)
    init_weights(model, spec.init_seed)
    if with_checkpoint:
        checkpoint.commit(run_dir, model, {"optimizer": {}, "scaler": {}}, {"step": 3, "curve": [], "elapsed_s": 0.0})
    return spec, model.eval()


def book_generate(model, idx, max_new_tokens, context_size, temperature=0.0, top_k=None, eos_id=None):
    """The book's generate() (chapter 5), verbatim but for the device line."""
    for _ in range(max_new_tokens):
        idx_cond = idx[:, -context_size:]
        with torch.no_grad():
            logits = model(idx_cond)
        logits = logits[:, -1, :]
        if top_k is not None:
            top_logits, _ = torch.topk(logits, top_k)
            min_val = top_logits[:, -1]
            logits = torch.where(logits < min_val, torch.tensor(float("-inf")), logits)
        if temperature > 0.0:
            logits = logits / temperature
            probs = torch.softmax(logits, dim=-1)
            idx_next = torch.multinomial(probs, num_samples=1)
        else:
            idx_next = torch.argmax(logits, dim=-1, keepdim=True)
        if idx_next == eos_id:
            break
        idx = torch.cat((idx, idx_next), dim=1)
    return idx


@pytest.fixture
def micro_model():
    cfg = cfgmod.resolve("micro", "baseline", {})
    model = GPTModel(cfg.model)
    init_weights(model, 7)
    return model.eval()


def test_greedy_and_seeded_sampling_match_the_books_generate(micro_model):
    prompt = list(b"Every effort moves you")  # 22 tokens; 40 new ones cross the context of 32
    T = micro_model.cfg.context_length
    ref = book_generate(micro_model, torch.tensor([prompt]), 40, T)[0, len(prompt):].tolist()
    assert generate_ids(micro_model, prompt, 40) == ref
    torch.manual_seed(5)  # the book draws from the global generator; ours from one seeded alike
    ref = book_generate(micro_model, torch.tensor([prompt]), 40, T, temperature=0.8, top_k=50)[0, len(prompt):].tolist()
    assert generate_ids(micro_model, prompt, 40, temperature=0.8, top_k=50, seed=5) == ref


def test_seed_top_k_and_end_of_text(micro_model):
    prompt = list(b"To be")
    a = generate_ids(micro_model, prompt, 30, temperature=1.5, seed=1)
    assert a == generate_ids(micro_model, prompt, 30, temperature=1.5, seed=1)
    assert a != generate_ids(micro_model, prompt, 30, temperature=1.5, seed=2)
    greedy = generate_ids(micro_model, prompt, 10)
    assert generate_ids(micro_model, prompt, 10, temperature=2.0, top_k=1, seed=3) == greedy
    assert generate_ids(micro_model, prompt, 10, eos_id=greedy[2]) == greedy[:2]
    for kwargs, message in (({"temperature": -1.0}, "temperature"), ({"top_k": 0}, "top-k"),
                            ({"max_new_tokens": -1}, "max-new-tokens")):
        args = {"max_new_tokens": 5} | kwargs
        with pytest.raises(UserError, match=message):
            generate_ids(micro_model, prompt, **args)


def test_sample_from_a_run_checkpoint(tmp_path):
    spec, model = fake_run(tmp_path)
    run = locate_run(spec.run_id[:12], tmp_path)
    texts = sample(run, "Every effort moves you", max_new_tokens=15, temperature=0.8, top_k=50, seed=4, samples=2)
    new = generate_ids(model, list(b"Every effort moves you"), 15, temperature=0.8, top_k=50, seed=4, eos_id=256)
    from harness.data.tokenizers import get_tokenizer
    from harness.training.generate import printable

    assert texts[0] == "Every effort moves you" + printable(get_tokenizer("bytes").decode(new))
    assert all(c.isprintable() or c in "\n\t" for c in texts[0])  # control bytes shown, never sent to the terminal
    assert len(texts) == 2 and texts[1].startswith("Every effort moves you")



def test_cli_generate(tmp_path):
    spec, _ = fake_run(tmp_path)
    args = ["generate", spec.run_id, "Every effort moves you", "--max-new-tokens", "20", "--temperature", "0.8",
            "--top-k", "50", "--seed", "9", "--results", str(tmp_path)]
    code, out, err = invoke(*args)
    assert code == 0, err
    assert out.startswith("Every effort moves you") and invoke(*args)[1] == out
    code, out, _ = invoke(*args, "--samples", "2")
    assert code == 0 and "--- sample 1 (seed 9)" in out and "--- sample 2 (seed 10)" in out


def test_cli_generate_bad_input(tmp_path):
    spec, _ = fake_run(tmp_path, seed=1, with_checkpoint=False)
    code, _, err = invoke("generate", spec.run_id, "hi", "--results", str(tmp_path))
    assert code == 2 and "has no checkpoint" in err and err.count("\n") == 1
    code, _, err = invoke("generate", "nope", "hi", "--results", str(tmp_path))
    assert code == 2 and "no run 'nope'" in err
    fake_run(tmp_path, seed=2)
    code, _, err = invoke("generate", "baseline-s", "hi", "--results", str(tmp_path))
    assert code == 2 and "ambiguous" in err
