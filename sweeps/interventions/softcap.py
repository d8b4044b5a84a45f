"""Logit soft-capping: the output head computes cap * tanh(logits / cap). The new head is a Linear
under the old name (out_head.weight, tied to the embedding where it was), so its weights start
from the baseline's."""

import torch
from torch import nn

SETTINGS = {"softcap": (30.0, "the cap: logits become cap * tanh(logits / cap)")}


class SoftcappedHead(nn.Linear):
    def __init__(self, head: nn.Linear, cap: float):
        super().__init__(head.in_features, head.out_features, bias=False, device=head.weight.device)
        self.weight = head.weight
        self.cap = cap

    def forward(self, x):
        return self.cap * torch.tanh(super().forward(x) / self.cap)


def convert(model, ctx):
    if ctx.settings["softcap"] <= 0:
        raise ValueError(f"softcap must be > 0, got {ctx.settings['softcap']}")
    model.out_head = SoftcappedHead(model.out_head, ctx.settings["softcap"])
