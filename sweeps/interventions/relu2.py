"""ReLU^2: the GELU MLP's activation replaced by max(x, 0)^2 (the activation has no parameters,
so every parameter keeps its name and its baseline value)."""

import torch
from torch import nn


class ReLUSquared(nn.Module):
    def forward(self, x):
        return torch.relu(x).square()


def convert(model, ctx):
    if model.cfg.mlp != "gelu":
        raise ValueError(f"relu2 replaces the GELU MLP's activation; mlp={model.cfg.mlp} has none")
    for block in model.trf_blocks:
        block.ff.layers[1] = ReLUSquared()
