"""Muon (torch.optim.Muon) on the transformer blocks' weight matrices, AdamW (the book's settings)
on everything else: embeddings, head, norms and biases. Muon's learning rate follows the run's
schedule scaled to muon_lr; its momentum rises linearly from muon_momentum_start to muon_momentum
over the first muon_momentum_warmup steps (the schedule seam), as in the modded-nanogpt speedrun."""

import torch

SETTINGS = {
    "muon_lr": (0.02, "Muon's learning rate where the schedule is at lr (AdamW keeps lr)"),
    "muon_momentum": (0.95, "Muon's momentum after the warmup"),
    "muon_momentum_start": (0.85, "Muon's momentum at step 0"),
    "muon_momentum_warmup": (300, "steps over which the momentum rises linearly; 0 = none"),
}


def hidden_matrix(name, param):
    return param.ndim == 2 and name.startswith("trf_blocks.")


def optimizer(model, ctx):
    train, s = ctx.train_config, ctx.settings
    named = list(model.named_parameters())
    hidden = [p for n, p in named if hidden_matrix(n, p)]
    rest = [p for n, p in named if not hidden_matrix(n, p)]
    muon = torch.optim.Muon([{"params": hidden, "lr_scale": s["muon_lr"] / train.lr}], lr=s["muon_lr"],
                            momentum=s["muon_momentum_start"], weight_decay=train.weight_decay)
    adamw = torch.optim.AdamW(rest, lr=train.lr, betas=(train.beta1, train.beta2),
                              weight_decay=train.weight_decay, fused=True)
    return [muon, adamw]


def schedule(step, ctx):
    s = ctx.settings
    warmup = s["muon_momentum_warmup"]
    done = min(1.0, step / warmup) if warmup > 0 else 1.0
    return {"momentum": s["muon_momentum_start"] + done * (s["muon_momentum"] - s["muon_momentum_start"])}
