"""harness: seed-sweep benchmarking for from-scratch GPT-2 training.

Modules: config (presets, interventions, overrides), budget (Chinchilla), tokenizers and data,
train (the torchrun worker), checkpoint, results (Parquet store), sweep, stats, report, cli.
"""

__version__ = "0.1.0"
