"""The network: the book's GPT-2 (Raschka, "Build a Large Language Model (from Scratch)") with switches."""

from model.config import ModelConfig
from model.gpt import GPTModel, count_parameters, flops_per_token, init_weights, parameter_counts

__all__ = ["ModelConfig", "GPTModel", "count_parameters", "flops_per_token", "init_weights", "parameter_counts"]
