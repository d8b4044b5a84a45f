"""The training worker: one exact, deterministic run. Launched by torchrun as
`python -m torch.distributed.run ... -m harness.train RUN_DIR/spec.json`.

Determinism: initial weights come from the init seed (drawn per parameter name), the sequence
of global batches is a pure function of (data seed, step), and dropout uses a per-rank stream of
the dropout seed. Checkpoints carry weights, optimizer, random states and the curve so far, so a
killed run resumes to a bit-identical result on CPU. Rank 0 prints progress lines for the parent
(prefixed PROGRESS) and writes result.json atomically at the end; the parent records it.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from harness import checkpoint
from harness.config import TrainConfig
from harness.data import BatchSampler, eval_batches, load_corpus
from harness.plan import RunSpec
from harness.results import atomic_write_json
from harness.versions import versions
from model import GPTModel, ModelConfig, init_weights

PROGRESS = "PROGRESS "


@dataclass
class Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(timeout_s: float) -> Dist:
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1:
        from datetime import timedelta
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=timedelta(seconds=timeout_s))
    return Dist(rank, world, local_rank, device)


def lr_at(step: int, steps: int, cfg: TrainConfig) -> float:
    """Constant, or linear warmup then cosine decay to lr * min_lr_ratio (a pure function of step)."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    warmup = int(cfg.warmup_frac * steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    floor = cfg.lr * cfg.min_lr_ratio
    return floor + 0.5 * (cfg.lr - floor) * (1 + math.cos(math.pi * min(1.0, progress)))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def all_reduce_sum(values: list[float], d: Dist, dtype=torch.float64) -> list[float]:
    t = torch.tensor(values, dtype=dtype, device=d.device)
    if d.world > 1:
        dist.all_reduce(t)
    return t.tolist()


@torch.inference_mode()
def evaluate(model: torch.nn.Module, tokens, context_length: int, batch_size: int, d: Dist,
             amp: torch.dtype | None) -> tuple[float, int]:
    """Summed token NLL in float64 over every test token, divided by the token count."""
    model.eval()
    nll, count = torch.zeros((), dtype=torch.float64, device=d.device), 0
    for i, (x, y) in enumerate(eval_batches(tokens, context_length, batch_size)):
        if i % d.world != d.rank:
            continue
        x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
        with torch.autocast(d.device.type, dtype=amp) if amp else nullcontext():
            logits = model(x)
        nll += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
        count += y.numel()
    total_nll, total_count = all_reduce_sum([nll.item(), float(count)], d)
    model.train()
    return total_nll / total_count, int(total_count)


def main(spec_path: str) -> int:
    spec = RunSpec.load(Path(spec_path))
    run_dir = Path(spec_path).parent
    d = setup_distributed(float(os.environ.get("HARNESS_COLLECTIVE_TIMEOUT", "600")))
    if d.world != spec.world_size:
        raise SystemExit(f"spec planned {spec.world_size} processes, torchrun started {d.world}")
    mcfg, tcfg = ModelConfig(**spec.config["model"]), TrainConfig(**spec.config["train"])
    corpus = load_corpus(tcfg.data, tcfg.tokenizer)
    if d.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    model = GPTModel(mcfg).to(d.device)
    init_weights(model, spec.init_seed)
    torch.manual_seed(spec.dropout_seed + 7919 * d.rank)
    amp = autocast_dtype(tcfg.precision, d.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2),
                                  weight_decay=tcfg.weight_decay, fused=d.device.type == "cuda")
    scaler = torch.amp.GradScaler(d.device.type, enabled=amp is torch.float16)

    start_step, curve, elapsed_before = 0, [], 0.0
    found = checkpoint.latest(run_dir)
    if found:
        folder, meta = found
        state = checkpoint.load(folder, model, d.rank, d.device)
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_step, curve, elapsed_before = meta["step"], meta["curve"], meta["elapsed_s"]

    use_compile = tcfg.compile == "on" or (tcfg.compile == "auto" and d.device.type == "cuda")
    train_model = torch.compile(model) if use_compile else model
    if d.world > 1:
        train_model = torch.nn.parallel.DistributedDataParallel(
            train_model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)

    sampler = BatchSampler(corpus.train, mcfg.context_length, spec.data_seed, shuffle=tcfg.shuffle)
    global_batch = spec.tokens_per_step // mcfg.context_length
    log_every = tcfg.log_every or max(1, spec.steps // 200)
    ckpt_every = tcfg.checkpoint_every or max(1, spec.steps // 10)
    accum = tcfg.grad_accum
    loss_sum = torch.zeros((), device=d.device)
    steps_in_window, t_window = 0, time.perf_counter()
    t_start = time.perf_counter()
    status, reason, diverged_step = "completed", "", None

    def save(step: int) -> None:
        stage = checkpoint.prepare_staging(run_dir) if d.main else checkpoint.staging_dir(run_dir)
        if d.world > 1:
            dist.barrier()
        checkpoint.save_rng(stage, d.rank)
        if d.world > 1:
            dist.barrier()
        if d.main:
            checkpoint.commit(run_dir, model, {"optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()},
                              {"step": step, "curve": curve,
                               "elapsed_s": elapsed_before + time.perf_counter() - t_start})
        if d.world > 1:
            dist.barrier()

    for step in range(start_step, spec.steps):
        lr = lr_at(step, spec.steps, tcfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        for micro in range(accum):
            x, y = sampler.batch(step, global_batch, d.rank, d.world, tcfg.micro_batch, micro)
            x, y = x.to(d.device, non_blocking=True), y.to(d.device, non_blocking=True)
            sync = micro == accum - 1 or d.world == 1
            with (nullcontext() if sync else train_model.no_sync()):
                with torch.autocast(d.device.type, dtype=amp) if amp else nullcontext():
                    logits = train_model(x)  # through DDP's forward, so its gradient hooks arm
                    loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
                scaler.scale(loss / accum).backward()
            loss_sum += loss.detach() / accum
        if tcfg.grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        steps_in_window += 1
        done = step + 1
        if done % log_every == 0 or done == spec.steps:
            window_loss = all_reduce_sum([loss_sum.item()], d)[0] / (d.world * steps_in_window)
            now = time.perf_counter()
            curve.append({"step": done, "tokens": done * spec.tokens_per_step,
                          "train_loss": window_loss, "lr": lr})
            if d.main:
                rate = steps_in_window * spec.tokens_per_step / max(now - t_window, 1e-9)
                print(PROGRESS + json.dumps({"step": done, "steps": spec.steps,
                                             "tokens": done * spec.tokens_per_step,
                                             "loss": window_loss, "tokens_per_s": rate}), flush=True)
            loss_sum.zero_()
            steps_in_window, t_window = 0, now
            if not math.isfinite(window_loss):
                status, reason, diverged_step = "diverged", f"non-finite training loss at step {done}", done
                break
        if done % ckpt_every == 0 or done == spec.steps:
            save(done)

    train_time = elapsed_before + time.perf_counter() - t_start
    trained_steps = diverged_step or spec.steps
    test_loss, test_tokens = float("nan"), 0
    if status == "completed":
        t_eval = time.perf_counter()
        eval_batch = tcfg.eval_batch or 4 * tcfg.micro_batch
        test_loss, test_tokens = evaluate(model, corpus.test, mcfg.context_length, eval_batch, d, amp)
        if not math.isfinite(test_loss):
            status, reason = "diverged", "non-finite test loss"
        eval_time = time.perf_counter() - t_eval
    else:
        eval_time = 0.0
    if d.main:
        atomic_write_json(run_dir / "result.json", {
            "status": status, "reason": reason, "diverged_step": diverged_step,
            "test_loss": test_loss, "test_tokens": test_tokens, "test_set_id": corpus.test_set_id,
            "train_loss": curve[-1]["train_loss"] if curve else float("nan"),
            "tokens_seen": trained_steps * spec.tokens_per_step, "steps": trained_steps,
            "wall_time_s": train_time + eval_time, "train_time_s": train_time, "eval_time_s": eval_time,
            "tokens_per_s": trained_steps * spec.tokens_per_step / max(train_time, 1e-9),
            "world_size": d.world, "dtype": str(amp or torch.float32).replace("torch.", ""),
            "device": torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "cpu",
            "versions": versions(), "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "curve": curve,
        })
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
