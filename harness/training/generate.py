"""`harness generate`: sample text from a run's checkpoint, as the book's generate() does.

Each new token: the logits of the last position (the context cropped to the model's
context_length), top-k filtering (logits below the k-th largest become -inf), then temperature
scaling and a draw from the softmax; temperature 0 takes the argmax instead. The draws come
from a torch.Generator seeded with --seed, so the same seed gives the same text. Generation
stops early at <|endoftext|> unless told not to.
"""

from __future__ import annotations

import torch

from harness.core.errors import UserError


@torch.no_grad()
def generate_ids(model, ids: list[int], max_new_tokens: int, temperature: float = 0.0,
                 top_k: int | None = None, seed: int = 0, eos_id: int | None = None,
                 device: str = "cpu") -> list[int]:
    """The new token ids (not the prompt's) that `model` samples after `ids`."""
    if max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise UserError(f"--temperature must be >= 0, got {temperature}")
    vocab = model.cfg.vocab_size
    if top_k is not None and not 1 <= top_k:
        raise UserError(f"--top-k must be >= 1, got {top_k}")
    context = model.cfg.context_length
    g = torch.Generator(device=device).manual_seed(seed)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    new: list[int] = []
    for _ in range(max_new_tokens):
        logits = model(idx[:, -context:])[:, -1, :].float()
        if top_k is not None and top_k < vocab:
            kth = torch.topk(logits, top_k).values[:, -1:]
            logits = torch.where(logits < kth, torch.full_like(logits, float("-inf")), logits)
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            nxt = torch.multinomial(probs, num_samples=1, generator=g)
        else:
            nxt = torch.argmax(logits, dim=-1, keepdim=True)
        token = int(nxt)
        if eos_id is not None and token == eos_id:
            break
        new.append(token)
        idx = torch.cat([idx, nxt], dim=1)
    return new


def sample(run, prompt: str, max_new_tokens: int = 40, temperature: float = 0.0, top_k: int | None = None,
           seed: int = 0, samples: int = 1, stop_at_eot: bool = True, device: str | None = None) -> list[str]:
    """Texts (prompt + continuation) sampled from a located run (harness.training.export.RunRef)."""
    from harness.training.export import load_run_model
    from harness.data.tokenizers import get_tokenizer

    if samples < 1:
        raise UserError(f"--samples must be >= 1, got {samples}")
    if not prompt:
        raise UserError("the prompt is empty: give the text to continue, e.g. \"Every effort moves you\"")
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        raise UserError("the prompt is not valid text (it holds bytes that are not UTF-8); give it as UTF-8") from None
    run.require_trained("sample from")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model, _ = load_run_model(run, device=device)
    tok = get_tokenizer(run.tokenizer)
    ids = tok.encode(prompt)
    bad = [i for i in ids if i >= model.cfg.vocab_size]
    if bad:
        raise UserError(f"the prompt has token id {bad[0]}, outside the model's vocabulary of {model.cfg.vocab_size}")
    texts = []
    for k in range(samples):
        new = generate_ids(model, ids, max_new_tokens, temperature, top_k, seed + k,
                           tok.eot_id if stop_at_eot else None, device)
        texts.append(prompt + printable(tok.decode(new)))
    return texts


def printable(text: str) -> str:
    """Generated text as it can be printed: control characters (a byte-level model emits any byte,
    escape sequences included) shown as \\xNN instead of acting on the terminal; newlines and tabs kept."""
    return "".join(c if c in "\n\t" or (c.isprintable() and c != "\x7f") else f"\\x{ord(c):02x}"
                   if ord(c) < 256 else f"\\u{ord(c):04x}" for c in text)
