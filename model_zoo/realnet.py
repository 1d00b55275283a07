"""Small, width/depth-scaled versions of the real-world image families users bring, built with timm's own classes.

Seven kinds, each the library's block structure at a CPU-friendly size (1x28x28 inputs by default):

| kind | built with (timm) | what varies |
|---|---|---|
| ``resnet`` | ``resnet.ResNet`` | BasicBlock / Bottleneck, 1-2 blocks per stage, base width 8-32, deep stem, avg-down |
| ``regnet`` | ``regnet.RegNet`` | RegNetCfg depth 4-10 (four stages), w0 / wa / wm, group size, SE (RegNetY) |
| ``mobilenetv3`` | the MobileNetV3 generator | small / large, channel multiplier 0.1-0.35, depth multiplier |
| ``efficientnet`` | the EfficientNet / MobileNetV2 generators | channel multiplier 0.1-0.35, depth multiplier 0.2-0.5 |
| ``convnext`` | ``convnext.ConvNeXt`` | 1-2 blocks per stage, dims base 8-32, 1x1 stem, kernel 3/5/7, conv MLP |
| ``vit`` | ``vision_transformer.VisionTransformer`` | patch 4/7, depth 1-4, heads, width, MLP ratio, pooling |
| ``mixer`` | ``mlp_mixer.MlpMixer`` | patch 4/7, blocks 1-4, width 32-96 |

Every kind keeps timm's own initialisation (zero-init last BN of residual blocks, layer scale, ...), so the GHN
meta-trains on the structures users' nets have. **Split by name**: the sampled widths and depths stop below the
named real-world evaluation nets of ``benchmarks.quality`` (ResNet-18: base width 64, RegNetX-200MF: depth 13,
MobileNetV3-Small-050 and EfficientNet-B0: multipliers 0.5 and 1.0, ConvNeXt-Atto: dims 40+, DeiT-Tiny: width 192,
depth 12, Mixer: width 128), so no training arch is one of them.

Shapes: input ``(B, C, H, W)`` floats; output logits ``(B, num_classes)``.
"""
from __future__ import annotations

import random

from torch import nn

from ghn.errors import ConfigError

from .registry import register_arch, register_family, sample_within
from .spec import ArchSpec

__all__ = ["KINDS", "build", "sample"]

KINDS = ("resnet", "regnet", "mobilenetv3", "efficientnet", "convnext", "vit", "mixer")


def _resnet(hp: dict, c: int, n: int) -> nn.Module:
    from timm.models.resnet import BasicBlock, Bottleneck, ResNet

    block = Bottleneck if hp["block"] == "bottleneck" else BasicBlock
    w = hp["width"]
    return ResNet(block, layers=tuple(hp["layers"]), channels=tuple(w * m for m in (1, 2, 4, 8)), stem_width=w,
                  stem_type=hp["stem"], avg_down=hp["avg_down"], in_chans=c, num_classes=n)


def _regnet(hp: dict, c: int, n: int) -> nn.Module:
    from timm.models.regnet import RegNet, RegNetCfg

    cfg = RegNetCfg(depth=hp["depth"], w0=hp["w0"], wa=hp["wa"], wm=hp["wm"], group_size=hp["group_size"],
                    se_ratio=hp["se_ratio"], stem_width=hp["stem_width"])
    return RegNet(cfg, in_chans=c, num_classes=n)


def _efficient(hp: dict, c: int, n: int) -> nn.Module:
    # timm's generators are the only place the block strings of these families live; pretrained=False never
    # downloads anything.
    from timm.models import efficientnet, mobilenetv3

    gen = {"mobilenetv3_small_100": mobilenetv3._gen_mobilenet_v3,
           "mobilenetv3_large_100": mobilenetv3._gen_mobilenet_v3,
           "efficientnet_b0": efficientnet._gen_efficientnet,
           "mobilenetv2_100": efficientnet._gen_mobilenet_v2}[hp["base"]]
    kw = {"depth_multiplier": hp["depth_multiplier"]}
    return gen(hp["base"], hp["channel_multiplier"], pretrained=False, in_chans=c, num_classes=n, **kw)


def _convnext(hp: dict, c: int, n: int) -> nn.Module:
    from timm.models.convnext import ConvNeXt

    w = hp["width"]
    return ConvNeXt(in_chans=c, num_classes=n, depths=tuple(hp["depths"]), dims=tuple(w * m for m in (1, 2, 4, 8)),
                    patch_size=hp["patch_size"], kernel_sizes=hp["kernel_size"], conv_mlp=hp["conv_mlp"])


def _vit(hp: dict, c: int, n: int, size: list) -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(img_size=size, patch_size=hp["patch_size"], in_chans=c, num_classes=n,
                             embed_dim=hp["width"], depth=hp["depth"], num_heads=hp["heads"],
                             mlp_ratio=hp["mlp_ratio"], global_pool=hp["pool"], qkv_bias=hp["qkv_bias"],
                             class_token=hp["pool"] == "token")


def _mixer(hp: dict, c: int, n: int, size: list) -> nn.Module:
    from timm.models.mlp_mixer import MlpMixer

    return MlpMixer(img_size=size, patch_size=hp["patch_size"], in_chans=c, num_classes=n,
                    num_blocks=hp["depth"], embed_dim=hp["width"])


def build(hparams: dict) -> nn.Module:
    """The timm model of ``hparams`` (``kind``, ``input_shape``, ``num_classes`` and the kind's own keys)."""
    try:
        kind, (c, h, w), n = hparams["kind"], hparams["input_shape"], hparams["num_classes"]
        if kind in ("vit", "mixer"):
            return (_vit if kind == "vit" else _mixer)(hparams, c, n, [h, w])
        make = {"resnet": _resnet, "regnet": _regnet, "mobilenetv3": _efficient, "efficientnet": _efficient,
                "convnext": _convnext}[kind]
    except KeyError as e:
        raise ConfigError(f"realnet hparams: missing or unknown {e} (kinds: {', '.join(KINDS)})") from None
    return make(hparams, c, n)


def _propose(rng: random.Random, kind: str, h: int) -> dict:
    """Hparams of one ``kind``, before the parameter-count check."""
    patches = [p for p in (4, 7) if h % p == 0] or [1]
    if kind == "resnet":
        return dict(block=rng.choice(("basic", "basic", "bottleneck")), layers=[rng.randint(1, 2) for _ in range(4)],
                    width=rng.choice((8, 12, 16, 24, 32)), stem=rng.choice(("", "", "deep")),
                    avg_down=rng.random() < 0.3)
    if kind == "regnet":
        from timm.models.regnet import generate_regnet

        while True:  # timm's RegNet needs exactly four stages
            hp = dict(depth=rng.randint(4, 10), w0=rng.choice((8, 16, 24)), wa=round(rng.uniform(4, 24), 2),
                      wm=round(rng.uniform(1.5, 2.7), 2), group_size=rng.choice((4, 8)),
                      se_ratio=rng.choice((0.0, 0.0, 0.25)), stem_width=rng.choice((8, 16, 32)))
            if generate_regnet(hp["wa"], hp["w0"], hp["wm"], hp["depth"], hp["group_size"])[1] == 4:
                return hp
    if kind == "mobilenetv3":
        return dict(base=rng.choice(("mobilenetv3_small_100", "mobilenetv3_large_100")),
                    channel_multiplier=rng.choice((0.1, 0.15, 0.2, 0.25, 0.35)),
                    depth_multiplier=rng.choice((0.5, 1.0)))
    if kind == "efficientnet":
        return dict(base=rng.choice(("efficientnet_b0", "mobilenetv2_100")),
                    channel_multiplier=rng.choice((0.1, 0.15, 0.2, 0.25, 0.35)),
                    depth_multiplier=rng.choice((0.2, 0.34, 0.5)))
    if kind == "convnext":
        return dict(depths=[rng.randint(1, 2) for _ in range(4)], width=rng.choice((8, 12, 16, 24, 32)),
                    patch_size=1, kernel_size=rng.choice((3, 5, 7)), conv_mlp=rng.random() < 0.3)
    heads = rng.choice((1, 2, 4))
    if kind == "vit":
        return dict(patch_size=rng.choice(patches), depth=rng.randint(1, 4), heads=heads,
                    width=heads * rng.choice((16, 24, 32)), mlp_ratio=rng.choice((2.0, 4.0)),
                    pool=rng.choice(("token", "avg")), qkv_bias=rng.random() < 0.7)
    return dict(patch_size=rng.choice(patches), depth=rng.randint(1, 4), width=rng.choice((32, 48, 64, 96)))


def sample(rng: random.Random, *, input_shape: tuple | list = (1, 28, 28), num_classes: int = 10,
           min_params: int | None = 5_000, max_params: int | None = 500_000, kinds: tuple | list = KINDS) -> dict:
    """Sample a kind uniformly from ``kinds``, then its hparams, within the parameter bounds.

    Raises:
        ConfigError: an unknown kind, or no arch of the kind fits the bounds.
    """
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown or not kinds:
        raise ConfigError(f"realnet kinds {unknown or '[]'} unknown; choose from {', '.join(KINDS)}")
    kind = rng.choice(list(kinds))
    base = dict(kind=kind, input_shape=list(input_shape), num_classes=num_classes)
    return sample_within(rng, lambda r: {**base, **_propose(r, kind, input_shape[1])}, build, min_params,
                         max_params, what=f"realnet {kind}")


register_family("realnet", task="image", sample=sample, build=build)


@register_arch
def test_realnet_regnet() -> ArchSpec:
    """A 4-block RegNetX (grouped convs, zero-init last BN), one block per stage, 1x28x28."""
    return ArchSpec("realnet", dict(kind="regnet", input_shape=[1, 28, 28], num_classes=10, depth=4, w0=8, wa=12.0,
                                    wm=1.5, group_size=4, se_ratio=0.0, stem_width=8))
