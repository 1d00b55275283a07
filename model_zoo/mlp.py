"""MLPs on flattened images: the simplest family, mostly for tiny test archs and as a held-out shape of net.

Shapes: input ``(B, C, H, W)`` floats (flattened to ``(B, C*H*W)``); output logits ``(B, num_classes)``.
"""
from __future__ import annotations

import math
import random

from torch import nn

from ghn.errors import ConfigError

from .registry import register_arch, register_family, sample_within
from .spec import ArchSpec

__all__ = ["build", "sample"]

ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}


def build(hparams: dict) -> nn.Sequential:
    """``Flatten -> [Linear -> (LayerNorm|BatchNorm1d) -> act] * len(widths) -> Linear``.

    hparams: ``input_shape`` (C, H, W), ``num_classes``, ``widths`` (hidden sizes), ``norm`` ("none"|"ln"|"bn"),
    ``act`` (one of ACTS), ``bias`` (bool).
    """
    hp = dict(hparams)
    try:
        input_shape, num_classes, widths = hp.pop("input_shape"), hp.pop("num_classes"), hp.pop("widths")
        norm, act, bias = hp.pop("norm", "none"), hp.pop("act", "relu"), hp.pop("bias", True)
    except KeyError as e:
        raise ConfigError(f"mlp hparams miss {e}") from None
    if hp or act not in ACTS or norm not in ("none", "ln", "bn"):
        raise ConfigError(f"invalid mlp hparams: unknown keys {sorted(hp)}, act {act!r} (choices {sorted(ACTS)}), "
                          f"norm {norm!r} (choices none/ln/bn)")
    layers: list[nn.Module] = [nn.Flatten()]
    d = math.prod(input_shape)
    for w in widths:
        layers.append(nn.Linear(d, w, bias=bias))
        if norm != "none":
            layers.append(nn.LayerNorm(w) if norm == "ln" else nn.BatchNorm1d(w))
        layers.append(ACTS[act]())
        d = w
    layers.append(nn.Linear(d, num_classes))
    return nn.Sequential(*layers)


def sample(rng: random.Random, *, input_shape: tuple | list = (1, 28, 28), num_classes: int = 10,
           min_params: int | None = 5_000, max_params: int | None = 500_000, max_depth: int = 4) -> dict:
    """Sample mlp hparams: 0..max_depth hidden layers of 8..512 units."""
    if max_depth < 0:
        raise ConfigError(f"max_depth must be >= 0, got {max_depth}")

    def propose(rng: random.Random) -> dict:
        widths = [rng.choice((8, 16, 32, 64, 128, 256, 512)) for _ in range(rng.randint(0, max_depth))]
        return dict(input_shape=list(input_shape), num_classes=num_classes, widths=widths,
                    norm=rng.choice(("none", "none", "ln", "bn")), act=rng.choice(sorted(ACTS)),
                    bias=rng.random() < 0.8)

    return sample_within(rng, propose, build, min_params, max_params, what="mlp")


register_family("mlp", task="image", sample=sample, build=build)


@register_arch
def test_mlp() -> ArchSpec:
    """784 -> 4 -> 10 with LayerNorm: about 3.2k parameters."""
    return ArchSpec("mlp", dict(input_shape=[1, 28, 28], num_classes=10, widths=[4], norm="ln", act="relu", bias=True))
