"""The network: the book's GPT-2 (Raschka, "Build a Large Language Model (from Scratch)") with switches.

harness.model.config is plain data; the names from harness.model.gpt (sequences_from: harness.model.cpu_kernels)
load torch on first use, so that reading configs (the harness command line, plans, errors) starts in a
fraction of a second.
"""

from harness.model.config import ModelConfig

__all__ = ["ModelConfig", "GPTModel", "count_parameters", "flops_per_token", "init_weights", "parameter_counts",
           "sequences_from"]


def __getattr__(name: str):
    if name == "sequences_from":
        from harness.model import cpu_kernels
        return cpu_kernels.sequences_from
    if name in __all__:
        from harness.model import gpt
        return getattr(gpt, name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
