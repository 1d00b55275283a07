"""Trainability diagnostics: predicted vs default init, layer by layer, on the named real-world image nets.

Why fine-tuning from predicted parameters can end below fine-tuning from default init (issue 11): for each net of
``benchmarks.quality.REAL_IMAGE_NETS`` (1x28x28, 10 classes), with ``ghn.predict`` and with the default init:

* ``erank``: effective rank of each conv/linear weight (reshaped to ``c_out x rest``; singular values above 1 % of
  the largest, over the smaller side), averaged over layers;
* ``act``: the std of each conv/linear output on a Fashion-MNIST training batch (train mode: BatchNorm uses the
  batch), reported for the first, middle and last layer in forward order and as the ratio last / first (how the
  signal grows or dies through depth);
* ``grad``: the norm of each conv/linear weight's gradient of the cross-entropy on that batch, first / middle /
  last and the ratio first / last (vanishing or exploding gradients);
* ``loss``: that batch's loss and how much one SGD step (lr 0.05, momentum 0) lowers it.

Run: ``python -m benchmarks.trainability [--ghn checkpoints/ghn-fmnist]``. Writes ``results/trainability.{md,json}``.
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import (add_common_args, as_matrix, effective_rank as rank_count, env_info, ghn_label, load_ghn,
                     md_table, setup, write_results)

__all__ = ["effective_rank", "diagnose", "main"]


def effective_rank(w: torch.Tensor, rel: float = 0.01) -> float:
    """:func:`benchmarks.common.effective_rank` as a fraction of the smaller side of ``w`` (as ``rows x rest``)."""
    return rank_count(w, rel) / min(as_matrix(w).shape)


def _three(xs: list[float]) -> tuple[float, float, float]:
    return xs[0], xs[len(xs) // 2], xs[-1]


def diagnose(model: nn.Module, x: torch.Tensor, y: torch.Tensor, lr: float = 0.05) -> dict:
    """Per-layer effective rank, activation std and gradient norm of ``model`` on ``(x, y)`` (see the module
    docstring); the model is left as it was."""
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    acts: dict[nn.Module, float] = {}

    def record(mod: nn.Module, inputs, out: torch.Tensor) -> None:  # returns None: the output is left as is
        acts.setdefault(mod, float(out.detach().float().std()))

    hooks = [m.register_forward_hook(record) for m in layers]
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}  # BatchNorm statistics included
    model.train()
    try:
        loss = F.cross_entropy(model(x), y)
    finally:
        for h in hooks:
            h.remove()
    model.zero_grad(set_to_none=True)
    loss.backward()
    order = [m for m in acts]  # forward order of first use
    act = [acts[m] for m in order]
    grad = [float(m.weight.grad.norm()) if m.weight.grad is not None else 0.0 for m in order]
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p.add_(p.grad, alpha=-lr)
        after = F.cross_entropy(model(x), y).item()
    model.load_state_dict(before)
    model.zero_grad(set_to_none=True)
    return {"layers": len(order), "erank": statistics.fmean(effective_rank(m.weight) for m in layers),
            "act": _three(act), "act_ratio": act[-1] / max(act[0], 1e-12), "grad": _three(grad),
            "grad_ratio": grad[0] / max(grad[-1], 1e-12), "loss": loss.item(), "loss_after_step": after}


def main(argv: list[str] | None = None) -> None:
    from train.data import fashion_mnist, normalize

    from .quality import real_image_archs

    p = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument("--batch", type=int, default=128)
    args = p.parse_args(argv)
    device = setup(args)
    ghn = load_ghn(args.ghn, device)
    px, labels = fashion_mnist("train")
    g = torch.Generator().manual_seed(0)
    idx = torch.randperm(len(px), generator=g)[:args.batch]
    x, y = normalize(px[idx]).to(device), labels[idx].to(device)
    rows, res = [], {}
    for arch in real_image_archs():
        res[arch.name] = {}
        for init in ("default", "ghn"):
            model = arch.build().to(device)
            if init == "ghn":
                ghn.predict(model, x[:2])
            d = diagnose(model, x, y)
            res[arch.name][init] = d
            rows.append({"net": arch.name, "init": init, "layers": d["layers"], "erank": d["erank"],
                         "act first/mid/last": "/".join(f"{v:.2g}" for v in d["act"]), "act last/first":
                         d["act_ratio"], "grad first/mid/last": "/".join(f"{v:.2g}" for v in d["grad"]),
                         "grad first/last": d["grad_ratio"], "loss": d["loss"],
                         "loss after 1 SGD step": d["loss_after_step"]})
    env = env_info(device)
    label = ghn_label(ghn, args.ghn)
    md = (f"# Trainability: predicted vs default init, layer by layer\n\nGHN: {label}. `python -m "
          f"benchmarks.trainability` on {env['device']}, commit {env['git_commit']}, {env['date']}. One Fashion-MNIST "
          f"training batch of {args.batch} (train mode); conv/linear layers in forward order (see the module "
          "docstring for each column).\n\n" + md_table(rows))
    write_results(args.out, "trainability", {"env": env, "ghn": label, "nets": res}, md)
    print(md)


if __name__ == "__main__":
    main()
