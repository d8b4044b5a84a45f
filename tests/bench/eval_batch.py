"""The evaluation's speed and peak memory by batch size, on this machine's first device.

    python tests/bench/eval_batch.py [--preset gpt2-small] [--batches 8,16,32,64,128] [--repeats 10]

Why: on CUDA the automatic evaluation batch (harness.training.worker.auto_eval_batch) is capped at
CUDA_EVAL_TOKENS tokens; this prints what each size gives, so the cap can be the smallest size at
full speed (a larger one only takes memory that concurrent runs on the same GPU need). Random
tokens, the preset's model in eval mode under inference_mode, the worker's own per-token losses
(eval_token_losses) and precision (bf16 autocast on CUDA).
"""

from __future__ import annotations

import argparse
import time

import torch

from harness.core import config as cfgmod
from harness.model import GPTModel
from harness.training.worker import autocast_dtype, configure_backends, eval_token_losses


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="gpt2-small")
    parser.add_argument("--batches", default="8,16,32,64,128")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    configure_backends(device)
    mcfg = cfgmod.resolve(args.preset, cfgmod.BASELINE).model
    amp = autocast_dtype("auto", device)
    model = GPTModel(mcfg).to(device).eval()
    T = mcfg.context_length
    print(f"eval by batch: preset {args.preset}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}, {amp or torch.float32}")
    for batch in (int(b) for b in args.batches.split(",")):
        x = torch.randint(0, mcfg.vocab_size, (batch, T), device=device)
        y = torch.randint(0, mcfg.vocab_size, (batch, T), device=device)
        with torch.inference_mode():
            eval_token_losses(model, x, y, amp)  # warm-up: kernels chosen, memory pooled
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            for _ in range(args.repeats):
                eval_token_losses(model, x, y, amp).sum()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            elapsed = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
        print(f"batch {batch:4d} x {T}: {args.repeats * batch * T / elapsed:12,.0f} tokens/s, peak {peak:6.1f} GiB")
        del x, y
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
