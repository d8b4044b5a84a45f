"""`harness bench`: time the real training step and evaluation, and compare with the book's code.

Everything timed here is harness.training.worker.Trainer, the object the torchrun worker trains with, on
the preset's real data: N warm-up steps (compilation, allocator and cache warm-up), then M timed
steps, then N + M evaluation batches of the automatic evaluation size. It prints tokens/s, step
time, MFU (nanoGPT's 6N + 12*L*H*Q*T FLOPs per token against the device's dense bf16 peak, when
the device is known) and peak memory, and appends one row to RESULTS/bench.parquet.

`--compare-book` builds two fresh trainers from the same seeds (so the same initial weights, the
same optimiser settings and the same batches): one with our GPTModel, one with the book's
BookGPTModel (manual masked-softmax attention), and times their steps interleaved (ours, book,
book, ours, ...), so drifting machine load hits both alike. It reports each one's tokens/s and
the per-pair ratio's median with its spread.
"""

from __future__ import annotations

import gc
import json
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq
import torch

from harness.core import config as cfgmod
from harness.core.definitions import Library
from harness.core.seeds import derive_seed
from harness.data.batches import eval_batches
from harness.data.corpus import load_corpus
from harness.core.errors import UserError
from harness.core.files import atomic_write_bytes
from harness.store.results import ResultsStore
from harness.training.worker import (Dist, Trainer, configure_backends, configure_threads, eval_loss_sum, peak_memory,
                           run_versions, to_device)
from harness.core.versions import git_commit
from harness.model import GPTModel, flops_per_token
from harness.training.seams import Seams
from harness.model.book import BookGPTModel

BENCH_FILE = "bench.parquet"
BENCH_SEED = 0
A100_40GB = 38 * 2**30  # a 40 GB A100 shows 40,536 MiB; keep ~1.5 GiB for the CUDA context and allocator slack
# Dense bf16 tensor-core peaks (FLOP/s), matched in order against torch.cuda.get_device_name().
PEAK_BF16: tuple[tuple[str, float, str], ...] = (
    ("H100 PCIe", 756e12, "H100 PCIe dense bf16"),
    ("H100 NVL", 835e12, "H100 NVL dense bf16"),
    ("H100", 989e12, "H100 SXM dense bf16"),
    ("H200", 989e12, "H200 dense bf16"),
    ("A100", 312e12, "A100 dense bf16"),
)


_S, _F, _I, _B = pa.string(), pa.float64(), pa.int64(), pa.bool_()
BENCH_SCHEMA = pa.schema([
    ("finished_at", _S), ("preset", _S), ("arm", _S), ("overrides", _S), ("config", _S), ("device", _S),
    ("device_type", _S), ("cpu_threads", _I), ("torch", _S), ("versions", _S), ("git_commit", _S),
    ("dtype", _S), ("compile", _B), ("params", _I), ("flops_per_token", _I), ("micro_batch", _I),
    ("grad_accum", _I), ("context_length", _I), ("tokens_per_step", _I), ("warmup", _I), ("steps", _I),
    ("train_step_s", _F), ("train_step_s_q1", _F), ("train_step_s_q3", _F), ("train_tokens_per_s", _F),
    ("train_loss", _F), ("mfu", _F), ("peak_flops", _F), ("peak_flops_source", _S),
    ("train_peak_memory_bytes", _I), ("memory_kind", _S), ("eval_batch", _I), ("eval_tokens_per_s", _F),
    ("eval_peak_memory_bytes", _I), ("eval_vs_train_per_token", _F), ("book_pairs", _I),
    ("ours_tokens_per_s", _F), ("book_tokens_per_s", _F), ("book_ratio_median", _F), ("book_ratio_q1", _F),
    ("book_ratio_q3", _F), ("book_ratio_min", _F), ("book_ratio_max", _F),
])


def peak_flops(device: torch.device) -> tuple[float | None, str]:
    """(peak FLOP/s, which peak) for MFU; (None, why not) where none is known."""
    if device.type != "cuda":
        return None, "no bf16 peak known for CPU"
    name = torch.cuda.get_device_name(device)
    for key, peak, label in PEAK_BF16:
        if key in name:
            return peak, f"{label}, {peak / 1e12:.0f} TFLOP/s"
    return None, f"no bf16 peak known for {name}"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {"median": statistics.median(ordered), "q1": q1, "q3": q3, "min": ordered[0], "max": ordered[-1]}


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _trainer(arm: cfgmod.ArmConfig, d: Dist, corpus, steps: int, compile: bool | None,
             model_cls=GPTModel) -> Trainer:
    tokens_per_step = arm.train.global_batch * arm.model.context_length
    init_seed = derive_seed(BENCH_SEED, "init")
    seams = Seams.load(arm.code, None, arm.model, arm.train, steps, init_seed, files=arm.code_files) if arm.code \
        else None  # a code intervention is timed as it trains, never as the network it changes
    return Trainer(arm.model, arm.train, d, train_tokens=corpus.train,
                   data_seed=derive_seed(BENCH_SEED, "data"), init_seed=init_seed,
                   dropout_seed=derive_seed(BENCH_SEED, "dropout"), steps=steps,
                   tokens_per_step=tokens_per_step, model_cls=model_cls, compile=compile, seams=seams)


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_bench(preset: str, arm: str = cfgmod.BASELINE, sets: dict[str, Any] | None = None, warmup: int = 5,
              steps: int = 30, compare_book: bool = False, compile: bool | None = None,
              results: Path | None = Path("results"), say: Callable[[str], None] = print,
              library: Library | None = None) -> dict[str, Any]:
    """Benchmark one arm on this machine's first device; returns the row it records. One function
    (about 120 lines) on purpose: the build, the warm-up, the timed steps, the evaluation and the
    row are one measurement, each timing taken on the state the step before left."""
    if warmup < 0:
        raise UserError(f"--warmup must be >= 0, got {warmup}")
    if steps < 1:
        raise UserError(f"--steps must be >= 1, got {steps}")
    resolved = cfgmod.resolve(preset, arm, sets, library)
    mcfg, tcfg = resolved.model, resolved.train
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    d = Dist(rank=0, world=1, local_rank=0, device=device)
    store = ResultsStore(results) if results is not None else None
    if store is not None:
        store.ensure_writable()
    threads = configure_threads(device)
    configure_backends(device)
    corpus = load_corpus(tcfg.data, tcfg.tokenizer)
    total = warmup + steps

    trainer = _trainer(resolved, d, corpus, total, compile)
    compiled = trainer.compiled
    T = mcfg.context_length
    tokens_per_step = trainer.tokens_per_step
    params = sum(p.numel() for p in trainer.model.parameters())  # as code changed it, if it did
    fpt = flops_per_token(mcfg)
    peak, peak_label = peak_flops(device)
    name = device_name(device)
    found_versions = run_versions(device, compiled)
    say(f"bench: preset {preset}, arm {arm}, {name} ({device.type}"
        + (f", {threads} CPU thread{'s' if threads != 1 else ''}" if device.type == "cpu" else "")
        + f"), torch {torch.__version__}, {trainer.dtype}, compile {'on' if compiled else 'off'}"
        + (f", CPU kernels: {found_versions['cpu_kernels']}" if "cpu_kernels" in found_versions else ""))
    say(f"model: {params:,} params, {fpt / 1e6:,.2f} MFLOP/token (6N + 12LHQT); "
        f"global batch {tcfg.global_batch} x context {T} = {tokens_per_step:,} tokens/step "
        f"(micro-batch {trainer.shape.micro_batch} x {trainer.accum} micro-steps on 1 process)")

    # --- training ---------------------------------------------------------------------------
    t0 = time.perf_counter()
    for step in range(warmup):
        trainer.train_step(step)
    _sync(device)
    warmup_s = time.perf_counter() - t0
    _reset_peak(device)
    step_times = [_timed(lambda s=step: trainer.train_step(s), device) for step in range(warmup, total)]
    train_loss = trainer.window_loss(total)
    train_peak, peak_kind = peak_memory(device)
    train_tps = steps * tokens_per_step / sum(step_times)
    step_spread = _spread(step_times)
    mfu = fpt * train_tps / peak if peak else None
    say(f"train: {warmup} warm-up steps ({warmup_s:.1f}s) + {steps} timed: {step_spread['median'] * 1e3:,.1f} ms/step "
        f"median (IQR {step_spread['q1'] * 1e3:,.1f}-{step_spread['q3'] * 1e3:,.1f}), {train_tps:,.0f} tokens/s, "
        f"mean loss {train_loss:.4f}")
    say("       MFU: " + (f"{100 * mfu:.1f}% (peak: {peak_label})" if mfu is not None else f"n/a ({peak_label})"))
    fits = f"; fits a 40 GB A100: {'yes' if train_peak < A100_40GB else 'no'}" if device.type == "cuda" else ""
    say(f"       peak memory: {train_peak / 2**20:,.0f} MiB ({peak_kind}{fits})")

    # --- evaluation -------------------------------------------------------------------------
    eval_batch = trainer.eval_batch_size()
    full = [b for b in _take(eval_batches(corpus.test, T, eval_batch), warmup + steps) if b[0].shape == (eval_batch, T)]
    if not full:
        raise UserError(f"the test split has fewer than {eval_batch} x {T} tokens; set eval_batch smaller")
    batches = [full[i % len(full)] for i in range(warmup + steps)]
    model = trainer.model
    model.eval()
    eval_times = []
    with torch.inference_mode():
        for i, (x, y) in enumerate(batches):
            if i == warmup:
                _reset_peak(device)

            def one(x=x, y=y):
                eval_loss_sum(model, to_device(x, device), to_device(y, device), trainer.amp)
            elapsed = _timed(one, device)
            if i >= warmup:
                eval_times.append(elapsed)
    model.train()
    eval_peak, _ = peak_memory(device)
    eval_tps = steps * eval_batch * T / sum(eval_times)
    eval_ratio = eval_tps / train_tps
    say(f"eval:  batch {eval_batch} x {T}, {warmup} warm-up + {steps} timed batches, inference mode: "
        f"{eval_tps:,.0f} tokens/s, {eval_ratio:.1f}x training's per-token speed")
    say(f"       peak memory: {eval_peak / 2**20:,.0f} MiB ({peak_kind})")

    row: dict[str, Any] = {
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "preset": preset, "arm": arm, "overrides": json.dumps(resolved.overrides, sort_keys=True, default=str),
        "config": json.dumps(resolved.as_dict(), sort_keys=True, default=str),
        "device": name, "device_type": device.type, "cpu_threads": threads if device.type == "cpu" else None,
        "torch": torch.__version__, "versions": json.dumps(found_versions, sort_keys=True),
        "git_commit": git_commit(),
        "dtype": trainer.dtype, "compile": compiled, "params": params, "flops_per_token": fpt,
        "micro_batch": trainer.shape.micro_batch, "grad_accum": trainer.accum, "context_length": T,
        "tokens_per_step": tokens_per_step, "warmup": warmup, "steps": steps,
        "train_step_s": step_spread["median"], "train_step_s_q1": step_spread["q1"],
        "train_step_s_q3": step_spread["q3"], "train_tokens_per_s": train_tps, "train_loss": train_loss,
        "mfu": mfu, "peak_flops": peak, "peak_flops_source": peak_label,
        "train_peak_memory_bytes": train_peak, "memory_kind": peak_kind,
        "eval_batch": eval_batch, "eval_tokens_per_s": eval_tps, "eval_peak_memory_bytes": eval_peak,
        "eval_vs_train_per_token": eval_ratio,
        "book_pairs": None, "ours_tokens_per_s": None, "book_tokens_per_s": None,
        "book_ratio_median": None, "book_ratio_q1": None, "book_ratio_q3": None,
        "book_ratio_min": None, "book_ratio_max": None,
    }
    del trainer, model, batches, full
    _free(device)

    # --- ours vs the book's implementation --------------------------------------------------
    if compare_book:
        row |= compare_with_book(resolved, d, corpus, warmup, steps, compiled, say)

    if store is not None:
        path = append_row(store, row)
        say(f"recorded: {path}")
    return row


def _take(iterator, n: int) -> list:
    out = []
    for item in iterator:
        out.append(item)
        if len(out) >= n:
            break
    return out


def compare_with_book(resolved: cfgmod.ArmConfig, d: Dist, corpus, warmup: int, steps: int, compiled: bool,
                      say: Callable[[str], None]) -> dict[str, Any]:
    """Interleaved timing of our training step and the book model's, from identical starts."""
    total = warmup + steps
    ours = _trainer(resolved, d, corpus, total, compiled)
    book = _trainer(resolved, d, corpus, total, compiled, model_cls=BookGPTModel)
    for name, p in ours.model.state_dict().items():  # identical by construction; make sure
        if not torch.equal(p, book.model.state_dict()[name]):
            raise RuntimeError(f"book and ours start from different weights in {name}")
    pairs = []
    for step in range(total):
        # Alternate who goes first, so neither always runs on the warmer cache or the quieter moment.
        order = (ours, book) if step % 2 == 0 else (book, ours)
        times = {id(t): _timed(lambda t=t: t.train_step(step), d.device) for t in order}
        if step >= warmup:
            pairs.append((times[id(ours)], times[id(book)]))
    ours.window_loss(total)
    book.window_loss(total)
    tokens = ours.tokens_per_step
    ours_tps = tokens * len(pairs) / sum(p[0] for p in pairs)
    book_tps = tokens * len(pairs) / sum(p[1] for p in pairs)
    ratio = _spread([b / o for o, b in pairs])  # per pair: how many times faster ours is
    say(f"book:  {len(pairs)} interleaved pairs, same weights, optimiser and batches"
        f" (compile {'on' if compiled else 'off'} for both): ours {ours_tps:,.0f} tokens/s, book {book_tps:,.0f} tokens/s")
    say(f"       ours/book speed: {ratio['median']:.2f}x median over pairs (IQR {ratio['q1']:.2f}-{ratio['q3']:.2f}, "
        f"min-max {ratio['min']:.2f}-{ratio['max']:.2f})")
    del ours, book
    _free(d.device)
    return {"book_pairs": len(pairs), "ours_tokens_per_s": ours_tps, "book_tokens_per_s": book_tps,
            "book_ratio_median": ratio["median"], "book_ratio_q1": ratio["q1"], "book_ratio_q3": ratio["q3"],
            "book_ratio_min": ratio["min"], "book_ratio_max": ratio["max"]}


def append_row(store: ResultsStore, row: dict[str, Any]) -> Path:
    """Append to RESULTS/bench.parquet under the results folder's lock, by atomic replacement."""
    path = store.root / BENCH_FILE
    new = pa.Table.from_pylist([{k: row.get(k) for k in BENCH_SCHEMA.names}], schema=BENCH_SCHEMA)
    with store.locked():
        if path.exists():
            old = pq.read_table(path, use_threads=False)
            new = pa.concat_tables([old, new], promote_options="permissive")
        sink = pa.BufferOutputStream()
        pq.write_table(new, sink, compression="zstd")
        atomic_write_bytes(path, sink.getvalue().to_pybytes())
    return path
