"""The same GPT-2 trainer (gpt2_script.py) with its settings as command-line arguments: an example of
a script that knows nothing of harness's environment variables. Its sweep file (gpt2_args.toml)
passes everything through {placeholders} in the command.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import gpt2_script


def flag(text: str) -> bool:
    if text not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
    return text == "true"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("init-seed", "data-seed", "dropout-seed", "tokens", "global-batch", "context-length"):
        p.add_argument(f"--{name}", type=int, required=True)
    p.add_argument("--run-dir", type=Path, required=True)
    p.add_argument("--result", type=Path, required=True)
    p.add_argument("--resume", type=int, choices=(0, 1), default=0)
    p.add_argument("--probe", type=int, choices=(0, 1), default=0)
    p.add_argument("--qkv-bias", type=flag, default=False)
    p.add_argument("--drop-rate", type=float, default=gpt2_script.SETTINGS["drop_rate"])
    p.add_argument("--lr", type=float, default=gpt2_script.SETTINGS["lr"])
    a = p.parse_args()
    settings = gpt2_script.SETTINGS | {"qkv_bias": a.qkv_bias, "drop_rate": a.drop_rate, "lr": a.lr}
    gpt2_script.train({"settings": settings, "context_length": a.context_length, "global_batch": a.global_batch,
                       "tokens": a.tokens, "run_dir": a.run_dir, "result": a.result, "resume": bool(a.resume),
                       "probe": bool(a.probe),
                       "seeds": {"init": a.init_seed, "data": a.data_seed, "dropout": a.dropout_seed}})


if __name__ == "__main__":
    main()
