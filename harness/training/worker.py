"""The training worker: one exact, deterministic run. Launched by torchrun as
`python -m torch.distributed.run ... -m harness.training.worker RUN_DIR/spec.json`.

Determinism: initial weights come from the init seed (drawn per parameter name), the sequence
of global batches is a pure function of (data seed, step), and dropout's masks are keyed by the
dropout seed, the step and (on the eager CPU path) each sequence, so they do not depend on where
the batch runs (dropout_seed_for). Checkpoints carry weights, optimizer, random states and the curve so far, so a
killed run resumes to a bit-identical result on CPU. Rank 0 prints progress lines for the parent
(prefixed PROGRESS) and writes result.json atomically at the end; the parent records it.

The per-step work lives in Trainer (model, optimiser, one optimiser step, evaluation), which
`harness bench` drives too, so what bench times is exactly what a run executes. The fast path:
bf16 autocast on CUDA (fp16 with a GradScaler on request), TF32 matmuls, SDPA flash attention,
fused AdamW, torch.compile on CUDA, pinned non-blocking copies of the next micro-batch issued
while the current one computes, DDP gradient sync on the last micro-step only, and no host
synchronisation inside a step: the loss stays on the device until a log interval reads it.

One module, on purpose: a run's determinism contract (seeding, construction order, the step, the
evaluations, checkpoints and the result) is one concern, read and changed together; what code
interventions add lives in harness.training.seams.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import socket
import sys
import time
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from harness.training import checkpoint
from harness.core.config import TrainConfig
from harness.core.scheme import full_config
from harness.data.batches import BatchSampler, BatchShape, eval_batches, heldout_rows, row_batches, evaluation_units
from harness.data.corpus import load_corpus
from harness.core.errors import UserError
from harness.core.files import atomic_write_json, environment_failure
from harness.core.placement import cpu_threads
from harness.store.record import COMPLETED, CONFIG, DATA_CHANGED, DIVERGED, ENVIRONMENT, RunResult, RunSpec, pack_units, progress_line, rank_line, stopped_line
from harness.core.versions import versions
from harness.model import GPTModel, ModelConfig, cpu_kernels, init_weights, native, parameter_counts, sequences_from
from harness.model.gpt import mark_own, runs_fast_path
from harness.training.seams import Optimizers, Seams

# Tokens per evaluation forward on the CPU: large enough that per-op overhead vanishes, small
# enough that a layer's activations stay in cache (the sizes measured: reports/benchmarks.md,
# "Figures once in docstrings").
CPU_EVAL_TOKENS = 2048
# On CUDA the evaluation batch is as large as fits within EVAL_MEMORY_FRACTION of the device's
# memory, at most this many tokens per forward: past it a larger batch buys little speed
# (reports/benchmarks.md, "Evaluation speed and memory by batch size") and takes the memory that
# concurrent runs on one GPU (--jobs) need.
CUDA_EVAL_TOKENS = 16 * 1024
EVAL_MEMORY_FRACTION = 0.7


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


def configure_threads(device: torch.device) -> int:
    """Set this process's intra-op threads for CPU training (harness.core.placement.cpu_threads); returns the count."""
    if device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    return torch.get_num_threads()


def configure_backends(device: torch.device) -> None:
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    else:
        keep_freed_memory()
        native.library()  # the CPU kernels, built on this machine's first use before anything is timed


# glibc's mallopt parameters (malloc.h) and the values keep_freed_memory gives them
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
CPU_MMAP_THRESHOLD = 32 << 20  # bytes: a block below this comes from the heap (glibc's maximum on 64 bits)
CPU_TRIM_THRESHOLD = 1 << 30  # bytes: free memory at the heap's top that is kept, not given back


def keep_freed_memory() -> bool:
    """CPU: let glibc's malloc keep the memory that torch frees and hand it out again, instead of
    returning each large block to the kernel and faulting fresh zeroed pages in on its next use
    (mallopt: blocks up to CPU_MMAP_THRESHOLD from the heap, which is trimmed only past
    CPU_TRIM_THRESHOLD). torch's CPU allocator caches nothing, so by default a tiny training step
    paid about 900-2,000 minor page faults (each activation over glibc's threshold a new mapping),
    and none after this (reports/benchmarks.md, round 6). Memory peaks as before; it is not given
    back until the process ends. Returns whether it applied: glibc only, and the trim threshold
    only once the mmap threshold took (setting it alone would pin the mmap threshold at 128 KiB)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # another C library (musl): leave it alone
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, CPU_MMAP_THRESHOLD) and mallopt(M_TRIM_THRESHOLD, CPU_TRIM_THRESHOLD))


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


def autocast(device: torch.device, amp: torch.dtype | None):
    return torch.autocast(device.type, dtype=amp) if amp else nullcontext()


def use_compile(cfg: TrainConfig, device: torch.device) -> bool:
    return cfg.compile == "on" or (cfg.compile == "auto" and device.type == "cuda")


def all_reduce_sum(values: list[float], d: Dist, dtype=torch.float64) -> list[float]:
    t = torch.tensor(values, dtype=dtype, device=d.device)
    if d.world > 1:
        dist.all_reduce(t)
    return t.tolist()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU batch onto `device`: on CUDA through pinned memory, asynchronously (no host wait)."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def auto_eval_batch(mcfg: ModelConfig, tcfg: TrainConfig, device: torch.device) -> int:
    """Sequences per evaluation batch: tcfg.eval_batch if set, else the automatic size.

    CPU: about CPU_EVAL_TOKENS tokens per forward. CUDA: the largest batch whose logits (the
    dominant memory in inference: low-precision logits, their float32 copy and log-softmax) and
    per-layer activations fit in EVAL_MEMORY_FRACTION of the device beside the training state,
    capped at CUDA_EVAL_TOKENS tokens. A function of the config and the device model only, so a
    run's test loss does not depend on what else happens to be in memory."""
    if tcfg.eval_batch:
        return tcfg.eval_batch
    T = mcfg.context_length
    if device.type != "cuda":
        return max(1, CPU_EVAL_TOKENS // T)
    total = torch.cuda.get_device_properties(device).total_memory
    resident = 16 * parameter_counts(mcfg)["total"]  # fp32 weights + AdamW moments + headroom
    per_sequence = T * (10 * mcfg.padded_vocab_size + 64 * mcfg.emb_dim)
    fits = int((EVAL_MEMORY_FRACTION * total - resident) // per_sequence)
    return max(1, min(fits, max(1, CUDA_EVAL_TOKENS // T)))


def peak_memory(device: torch.device) -> tuple[int, str]:
    """(this process's peak memory in bytes so far, what was measured): CUDA memory allocated, else
    the process's maximum resident set size."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device)), "torch.cuda.max_memory_allocated"
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "process peak RSS"  # Linux: KiB


def dropout_seed_for(dropout_seed: int, step: int, first_sequence: int | None) -> int:
    """torch's seed for one micro-step's dropout. On the eager CPU path the masks are keyed per
    sequence (harness.model.cpu_kernels.keep_mask), so one seed per step gives every sequence the same masks
    however the batch is placed (first_sequence None); the fused kernels elsewhere draw one
    stream per micro-batch, keyed by its first sequence (the same placement gives the same masks)."""
    key = f"harness-dropout/{dropout_seed}/{step}/{'' if first_sequence is None else first_sequence}"
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 1


def eager_cpu_step(device: torch.device, compiled: bool) -> bool:
    """Whether a step runs where the model takes harness.model.cpu_kernels (their takes_kernels):
    its dropout masks keyed per sequence, its own head and loss."""
    return cpu_kernels.takes_kernels(device.type, compiled)


def run_versions(device: torch.device, compiled: bool) -> dict[str, str]:
    """versions(), and where the step took harness.model.cpu_kernels, which of them ran
    ('cpu_kernels': the C kernels, or torch's operations and why: harness.model.native.state())."""
    found = versions()
    return found | {"cpu_kernels": native.state()} if eager_cpu_step(device, compiled) else found


def model_computes_loss(model, device: torch.device, compiled: bool = False) -> bool:
    """Whether to pass the targets to `model` (a module or its class) and take the loss it returns:
    GPTModel's own head and loss (forward_takes_targets) on the eager CPU path, where they are
    faster; CUDA and compiled steps keep F.cross_entropy outside the model. Never where code hooked
    or replaced the model itself (runs_fast_path): a hook on it must see the logits, on every device."""
    return (getattr(model, "forward_takes_targets", False) and runs_fast_path(model)
            and eager_cpu_step(device, compiled))


def eval_token_losses(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                      amp: torch.dtype | None) -> torch.Tensor:
    """Each target token's NLL of one batch, float64, flat, on the device (no host synchronisation)."""
    with autocast(x.device, amp):
        if model_computes_loss(model, x.device):
            return model(x, y, reduction="none").double()
        logits = model(x)
    return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="none").double()


def eval_loss_sum(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                  amp: torch.dtype | None) -> torch.Tensor:
    """Summed token NLL of one batch, float64, on the device."""
    return eval_token_losses(model, x, y, amp).sum()


def evaluate(model: torch.nn.Module, tokens, context_length: int, batch_size: int, d: Dist,
             amp: torch.dtype | None) -> tuple[float, int]:
    """Summed token NLL in float64 over every test token, divided by the token count."""
    return evaluate_batches(model, eval_batches(tokens, context_length, batch_size), d, amp)[:2]


@torch.inference_mode()
def evaluate_batches(model: torch.nn.Module, batches, d: Dist, amp: torch.dtype | None,
                     units: np.ndarray | None = None, n_units: int = 0):
    """Summed token NLL in float64 over (x, y) batches (every rank takes every world-th), divided by
    the token count; the model is in eval mode meanwhile (no dropout, no random draws). With
    `units` (a unit index per token position of the split: harness.data.batches.evaluation_units), the
    batches also carry their targets' positions, and the NLL sums and token counts per unit come
    back too (float64 and int64 arrays of n_units). Returns (loss, tokens, unit sums, unit tokens)."""
    was_training = model.training
    model.eval()
    nll, count = torch.zeros((), dtype=torch.float64, device=d.device), 0
    unit_nll = torch.zeros(n_units, dtype=torch.float64, device=d.device)
    unit_count = torch.zeros(n_units, dtype=torch.float64, device=d.device)
    unit_of = torch.from_numpy(units) if units is not None else None
    for i, batch in enumerate(batches):
        if i % d.world != d.rank:
            continue
        x, y = to_device(batch[0], d.device), to_device(batch[1], d.device)
        losses = eval_token_losses(model, x, y, amp)
        nll += losses.sum()
        count += y.numel()
        if unit_of is not None:
            u = to_device(unit_of[batch[2].flatten()].long(), d.device)
            unit_nll.index_add_(0, u, losses)
            unit_count.index_add_(0, u, torch.ones_like(losses))
    total_nll, total_count = all_reduce_sum([nll.item(), float(count)], d)
    if unit_of is not None and d.world > 1:
        dist.all_reduce(unit_nll)
        dist.all_reduce(unit_count)
    model.train(was_training)
    return (total_nll / total_count, int(total_count), unit_nll.cpu().numpy(),
            unit_count.cpu().numpy().astype(np.int64))


class Trainer:
    """One run's model, optimiser and training step, exactly as the worker runs them.

    Construction order is part of the determinism contract: build the model, initialise it per
    parameter name from init_seed, build AdamW and the scaler, restore a checkpoint (weights,
    optimiser) if given, then compile and wrap in DDP. `train_step(step)` does one optimiser step
    on the global batch of `step` (tcfg.global_batch sequences, split over the processes and then
    micro-steps by BatchShape); it never reads a value back to the host: the loss accumulates on
    the device until `window_loss()`. Dropout is seeded afresh for every micro-step from
    (dropout_seed, step), so neither a resume nor the placement changes the masks (dropout_seed_for).
    """

    def __init__(self, mcfg: ModelConfig, tcfg: TrainConfig, d: Dist, *, train_tokens, data_seed: int,
                 init_seed: int, dropout_seed: int, steps: int, tokens_per_step: int,
                 model_cls: type[torch.nn.Module] = GPTModel, compile: bool | None = None,
                 resume_from: Path | None = None, seams: Seams | None = None):
        # thirteen parameters: the run's three seeds and its shape are separate facts the spec
        # holds, named here one by one so that no call can swap two of them
        self.mcfg, self.tcfg, self.d = mcfg, tcfg, d
        self.steps = steps
        self.tokens_per_step = tokens_per_step
        self.shape = BatchShape.of(tcfg.global_batch, d.world, tcfg.micro_batch)
        if tokens_per_step != tcfg.global_batch * mcfg.context_length:
            raise ValueError(f"tokens_per_step {tokens_per_step} is not global_batch x context_length")
        self.accum = self.shape.accum
        self.amp = autocast_dtype(tcfg.precision, d.device)
        self.dropout_seed = dropout_seed

        self.seams = seams or Seams()
        model = model_cls(mcfg)
        if self.seams.has("convert"):  # code changed the network: no fast path may skip it
            mark_own(self.seams.convert(model))
        self.model = model.to(d.device)
        try:
            init_weights(self.model, init_seed, self.seams.initial_value())
        except TypeError as err:  # a parameter added by code, without an init seam
            raise UserError(str(err)) from None
        # fused: one multi-tensor kernel for the whole update (CUDA and CPU); with a GradScaler
        # it also takes the inf check on the device, so fp16 steps never wait for the host.
        optimizers = self.seams.optimizers(self.model) or [torch.optim.AdamW(
            self.model.parameters(), lr=tcfg.lr, betas=(tcfg.beta1, tcfg.beta2), weight_decay=tcfg.weight_decay,
            fused=True)]
        if len(optimizers) > 1 and self.amp is torch.float16:
            raise UserError("precision fp16 (its GradScaler) takes one optimiser; this run's optimizer seam "
                            f"builds {len(optimizers)}: use bf16 or fp32")
        self.optimizer = optimizers[0] if len(optimizers) == 1 else Optimizers(optimizers)
        self.scaler = torch.amp.GradScaler(d.device.type, enabled=self.amp is torch.float16)
        if resume_from is not None:
            state = checkpoint.load(resume_from, self.model, d.device)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])

        self.compiled = use_compile(tcfg, d.device) if compile is None else compile
        train_model = torch.compile(self.model) if self.compiled else self.model
        if d.world > 1:
            train_model = torch.nn.parallel.DistributedDataParallel(
                train_model, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
        self.train_model = train_model
        self.model_takes_targets = model_computes_loss(self.model, d.device, self.compiled) and not self.seams.has("loss")
        self._seams_checked = False  # the first step checks the seams' draws and loss (harness.training.seams)
        self.sampler = BatchSampler(train_tokens, mcfg.context_length, data_seed, shuffle=tcfg.shuffle)
        self.loss_sum = torch.zeros((), device=d.device)
        self.lr = tcfg.lr
        self._next: tuple[tuple[int, int], tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def dtype(self) -> str:
        return str(self.amp or torch.float32).replace("torch.", "")

    def _fetch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.sampler.batch(step, self.shape, self.d.rank, micro)
        return to_device(x, self.d.device), to_device(y, self.d.device)

    def _batch(self, step: int, micro: int) -> tuple[torch.Tensor, torch.Tensor]:
        ahead, self._next = self._next, None
        if ahead is not None and ahead[0] == (step, micro):
            return ahead[1]
        return self._fetch(step, micro)

    def _prefetch(self, step: int, micro: int) -> None:
        """CUDA: gather the next micro-batch on the host and queue its copy while the GPU works."""
        if self.d.device.type == "cuda" and step < self.steps:
            self._next = ((step, micro), self._fetch(step, micro))

    def train_step(self, step: int) -> None:
        """One optimiser step over the global batch of `step` (self.accum micro-steps on this process)."""
        checking, self._seams_checked = not self._seams_checked, True
        scheduled = dict(self.seams.schedule(step, check_random=checking) or {})
        if checking:
            self.seams.check_schedule_keys(scheduled, self.optimizer.param_groups)
        self.lr = float(scheduled.pop("lr")) if "lr" in scheduled else lr_at(step, self.steps, self.tcfg)
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr * group.get("lr_scale", 1.0)  # a code optimiser's groups may scale it
            group.update((k, v) for k, v in scheduled.items() if k in group)
        per_sequence = eager_cpu_step(self.d.device, self.compiled)  # harness.model.cpu_kernels.keep_mask's path
        for micro in range(self.accum):
            x, y = self._batch(step, micro)
            last = micro == self.accum - 1
            sync = last or self.d.world == 1  # DDP all-reduces gradients on the last micro-step only
            first = self.shape.first_sequence(self.d.rank, micro)
            torch.manual_seed(dropout_seed_for(self.dropout_seed, step, None if per_sequence else first))
            with (nullcontext() if sync else self.train_model.no_sync()), sequences_from(first):
                with autocast(self.d.device, self.amp):  # through DDP's forward, so its gradient hooks arm
                    if self.model_takes_targets:
                        loss = self.train_model(x, y)
                    elif self.seams.has("loss"):
                        loss = self.seams.loss(self.train_model(x).float(), y, check_random=checking and micro == 0)
                    else:
                        loss = F.cross_entropy(self.train_model(x).flatten(0, 1), y.flatten())
                self.scaler.scale(loss / self.accum).backward()
            self._prefetch(*((step, micro + 1) if not last else (step + 1, 0)))
            self.loss_sum += loss.detach() / self.accum
        if self.tcfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.tcfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)

    def window_loss(self, steps_in_window: int) -> float:
        """Mean training loss since the last call, over all ranks: the step loop's one host sync."""
        value = all_reduce_sum([self.loss_sum.item()], self.d)[0] / (self.d.world * steps_in_window)
        self.loss_sum.zero_()
        return value

    def eval_batch_size(self) -> int:
        return auto_eval_batch(self.mcfg, self.tcfg, self.d.device)

    def evaluate(self, tokens, batch_size: int | None = None) -> tuple[float, int]:
        return evaluate(self.model, tokens, self.mcfg.context_length, batch_size or self.eval_batch_size(),
                        self.d, self.amp)

    def evaluate_rows(self, rows) -> tuple[float, int]:
        """The held-out subset's loss (harness.data.batches.heldout_rows)."""
        return evaluate_batches(self.model, row_batches(rows, self.eval_batch_size()), self.d, self.amp)[:2]

    def evaluate_units(self, tokens, eot_id: int):
        """The final evaluation: the test loss over every token of the split, and its sums per unit
        (harness.data.batches.evaluation_units): (loss, tokens, unit sums, unit tokens, what a unit is)."""
        units, n_units, kind = evaluation_units(tokens, eot_id)
        batches = eval_batches(tokens, self.mcfg.context_length, self.eval_batch_size(), positions=True)
        return evaluate_batches(self.model, batches, self.d, self.amp, units, n_units) + (kind,)


HELDOUT_SPACING = 2 ** 0.5  # the points' ratio in tokens: power-law-like curves sampled evenly in log tokens


def heldout_steps(steps: int, points: int, anchors: tuple[int, ...] = ()) -> list[int]:
    """The steps of the held-out points: the budget's last step and the points - 1 before it at
    1/sqrt(2), 1/2, ... of it (rounded, at least 1, each once), plus `anchors` (an extended run's
    ordinary budget). Log-spaced because loss curves are close to power laws in tokens: the
    compute multiplier interpolates between neighbouring points in log tokens."""
    if points <= 0:
        return []
    marks = {max(1, round(steps / HELDOUT_SPACING ** k)) for k in range(points)} | {a for a in anchors if 0 < a <= steps}
    return sorted(marks)


def main(spec_path: str) -> int:
    """One run in this process: its spec, data, model, training with checkpoints and held-out
    points, the final evaluation, the result. One function (about 120 lines) on purpose: the
    run's lifecycle in reading order, each step using what the one before built."""
    spec = RunSpec.load(Path(spec_path))
    run_dir = Path(spec_path).parent
    d = setup_distributed(float(os.environ.get("HARNESS_COLLECTIVE_TIMEOUT", "600")))
    if d.world != spec.world_size:
        raise SystemExit(f"spec planned {spec.world_size} processes, torchrun started {d.world}")
    if d.world > 1:  # which rank runs where: a failed attempt's reason names the ranks of each node
        print(rank_line(d.rank, d.world, socket.gethostname(), os.getpid()), flush=True)
    mcfg, tcfg = full_config(spec.config, f"run {spec.run_id}'s spec")
    configure_threads(d.device)
    configure_backends(d.device)
    corpus = load_corpus(tcfg.data, tcfg.tokenizer)
    if spec.data_id and corpus.data_id != spec.data_id:
        return stop(DATA_CHANGED, f"the corpus {tcfg.data!r} changed since this run was planned (it was data "
                                  f"{spec.data_id}, it is now {corpus.data_id}): that is another experiment; plan "
                                  "it again (run the sweep command again: the new data gets new runs)")

    found = checkpoint.latest(run_dir)
    if found is None and spec.start_from:  # a longer run of a constant schedule: the shorter one's end is its start
        found = checkpoint.latest(run_dir.parent / spec.start_from)
        if found is not None and found[1]["step"] > spec.steps:
            found = None
    seams = Seams.load(spec.config.get("code", []), run_dir.parent.parent, mcfg, tcfg, spec.steps, spec.init_seed)
    trainer = Trainer(mcfg, tcfg, d, train_tokens=corpus.train, data_seed=spec.data_seed,
                      init_seed=spec.init_seed, dropout_seed=spec.dropout_seed, steps=spec.steps,
                      tokens_per_step=spec.tokens_per_step, resume_from=found[0] if found else None, seams=seams)
    start_step, curve, elapsed_before, heldout_before, checkpoint_before = 0, [], 0.0, 0.0, 0.0
    if found:
        meta = found[1]
        start_step, curve, elapsed_before = meta["step"], meta["curve"], meta["elapsed_s"]
        heldout_before, checkpoint_before = meta.get("heldout_s", 0.0), meta.get("checkpoint_s", 0.0)
    points = set(heldout_steps(spec.steps, tcfg.heldout_points, tuple(spec.anchor_steps)))
    rows = heldout_rows(corpus.test, mcfg.context_length, tcfg.heldout_tokens) if points and tcfg.heldout_tokens else None
    heldout_s = 0.0  # this attempt's time on held-out points: not training's
    checkpoint_s = 0.0  # this attempt's time writing checkpoints: not training's either (2 GB at gpt2-small)

    log_every = tcfg.log_every or max(1, spec.steps // 200)
    ckpt_every = tcfg.checkpoint_every or max(1, spec.steps // 10)
    steps_in_window, t_window = 0, time.perf_counter()
    t_start = time.perf_counter()
    status, reason, diverged_step = COMPLETED, "", None

    def training_time() -> float:
        return elapsed_before + time.perf_counter() - t_start - heldout_s - checkpoint_s

    def save(step: int) -> float:
        """Commit a checkpoint; returns the seconds it took (the barrier included)."""
        t_save = time.perf_counter()
        if d.main:
            checkpoint.commit(run_dir, trainer.model,
                              {"optimizer": trainer.optimizer.state_dict(), "scaler": trainer.scaler.state_dict()},
                              {"step": step, "curve": curve, "elapsed_s": training_time(),
                               "heldout_s": heldout_before + heldout_s,
                               "checkpoint_s": checkpoint_before + checkpoint_s})
        if d.world > 1:
            dist.barrier()
        return time.perf_counter() - t_save

    for step in range(start_step, spec.steps):
        trainer.train_step(step)
        steps_in_window += 1
        done = step + 1
        if done % log_every == 0 or done == spec.steps or done in points:
            window_loss = trainer.window_loss(steps_in_window)
            point = {"step": done, "tokens": done * spec.tokens_per_step, "train_loss": window_loss, "lr": trainer.lr}
            if done in points and math.isfinite(window_loss):
                t_point = time.perf_counter()
                point["heldout_loss"] = (trainer.evaluate_rows(rows) if rows is not None else trainer.evaluate(corpus.test))[0]
                heldout_s += time.perf_counter() - t_point
                t_window += time.perf_counter() - t_point
            now = time.perf_counter()
            rate = steps_in_window * spec.tokens_per_step / max(now - t_window, 1e-9)
            point["tokens_per_s"] = rate
            curve.append(point)
            if d.main:
                print(progress_line(done, spec.steps, done * spec.tokens_per_step, window_loss, rate), flush=True)
            steps_in_window, t_window = 0, now
            if not math.isfinite(window_loss):
                status, reason, diverged_step = DIVERGED, f"non-finite training loss at step {done}", done
                break
        if done % ckpt_every == 0 or done == spec.steps:
            took = save(done)
            checkpoint_s += took
            t_window += took  # the next window's rate is training's alone

    train_time = training_time()
    heldout_time = heldout_before + heldout_s
    checkpoint_time = checkpoint_before + checkpoint_s
    trained_steps = diverged_step or spec.steps
    test_loss, test_tokens, units = float("nan"), 0, {}
    if status == COMPLETED:
        t_eval = time.perf_counter()
        test_loss, test_tokens, unit_sums, unit_tokens, unit_kind = trainer.evaluate_units(corpus.test, corpus.eot_id)
        units = dict(zip(("unit_loss_sums", "unit_tokens"), pack_units(unit_sums.tolist(), unit_tokens.tolist())),
                     test_units=unit_kind)
        if not math.isfinite(test_loss):
            status, reason = DIVERGED, "non-finite test loss"
        eval_time = time.perf_counter() - t_eval
    else:
        eval_time = 0.0
    if d.main:
        result = RunResult(
            status=status, reason=reason, diverged_step=diverged_step, test_loss=test_loss,
            test_tokens=test_tokens, test_set_id=corpus.test_set_id,
            train_loss=curve[-1]["train_loss"] if curve else float("nan"),
            tokens_seen=trained_steps * spec.tokens_per_step, steps=trained_steps,
            wall_time_s=train_time + heldout_time + checkpoint_time + eval_time, train_time_s=train_time,
            eval_time_s=eval_time,
            heldout_time_s=heldout_time, heldout_tokens=0 if not points else test_tokens if rows is None
            else int(rows.shape[0] * mcfg.context_length),
            tokens_per_s=trained_steps * spec.tokens_per_step / max(train_time, 1e-9), dtype=trainer.dtype,
            peak_memory_bytes=peak_memory(d.device)[0],
            device=torch.cuda.get_device_name(d.device) if d.device.type == "cuda" else "cpu",
            versions=run_versions(d.device, trainer.compiled),
            finished_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            curve=curve, **units)
        atomic_write_json(run_dir / "result.json", result.to_dict())
    if d.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def stop(kind: str, message: str) -> int:
    """Tell the parent why this worker stops (harness.store.record.STOPPED) and exit non-zero."""
    print(stopped_line(kind, message), flush=True)
    return 3


def entry(spec_path: str) -> int:
    """The worker process's whole life as an exit code, for `python -m harness.training.worker` and
    for a warm worker's fork (harness.launch.warm) alike: Ctrl-C exits as the shell reports it (so
    the parent records the attempt as interrupted, not failed), the machine's failures and the
    configuration's are told to the parent (stop), anything else is a traceback and exit code 1."""
    try:
        return main(spec_path)
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    except Exception as err:  # noqa: BLE001 - classified, else shown as it was
        if environment_failure(err):  # the machine's failure (WriteError included), not the run's
            return stop(ENVIRONMENT, str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__)
        if isinstance(err, UserError):  # the configuration cannot run (checked at plan time where it can be)
            return stop(CONFIG, str(err))
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(entry(sys.argv[1]))
