"""QK-norm: each head's queries and keys RMS-normalised (no gain) before attention.

Forward hooks on the query and key projections: the parameters keep their names, so they start
from the baseline's values, and harness's fast attention path (which reads the projections'
weights) steps aside for the hooked modules.
"""

import torch.nn.functional as F

SETTINGS = {"qk_norm_eps": (1e-6, "epsilon of the per-head RMS norm of queries and keys")}


def convert(model, ctx):
    heads, eps = model.cfg.n_heads, ctx.settings["qk_norm_eps"]

    def per_head_rms_norm(module, inputs, output):
        *lead, width = output.shape
        head = width // heads
        return F.rms_norm(output.view(*lead, heads, head), (head,), eps=eps).view(*lead, width)

    for block in model.trf_blocks:
        block.att.W_query.register_forward_hook(per_head_rms_norm)
        block.att.W_key.register_forward_hook(per_head_rms_norm)
