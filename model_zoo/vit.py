"""Vision transformers on small images, built from timm classes.

One hparam set covers three timm implementations, picked by ``pos_embed``:
``"learn"`` / ``"none"``: ``timm VisionTransformer`` (learned absolute position embedding or none);
``"rope"``: ``timm Eva`` with rotary position embedding (optionally also a learned one, ``abs_pos=True``);
``"relpos"``: ``timm VisionTransformerRelPos`` (relative position bias, "mlp" or "bias" type).
Knobs: depth, width (heads x head_dim), heads, KV heads (rope), MLP ratio and type (GELU MLP or SwiGLU), patch
size, class token vs pooling (token/avg/max/map), register tokens, layer-scale (``init_values``), qkv bias,
qk-norm, LayerNorm vs RMSNorm, activation.

Shapes: input ``(B, C, H, W)`` floats; output logits ``(B, num_classes)``.
"""
from __future__ import annotations

import random

from torch import nn

from ghn.errors import ConfigError

from .registry import register_arch, register_family, sample_within
from .spec import ArchSpec

__all__ = ["build", "sample", "POS_EMBEDS"]

POS_EMBEDS = ("learn", "none", "rope", "relpos")
# Hparams only some implementations accept, with the neutral value every implementation accepts.
_ONLY = {
    "act": ("gelu", ("learn", "none")),
    "no_embed_class": (False, ("learn",)),
    "pre_norm": (False, ("learn", "none")),
    "num_kv_heads": (None, ("rope",)),
    "abs_pos": (False, ("rope",)),
    "rel_pos_type": ("mlp", ("relpos",)),
    "reg_tokens": (0, ("learn", "none", "rope")),
    "mlp": ("mlp", ("learn", "none", "rope")),
}


def build(hparams: dict) -> nn.Module:
    """Build the timm ViT described by ``hparams`` (see the module docstring)."""
    from timm.layers import get_norm_layer
    from timm.layers.mlp import Mlp, SwiGLU
    from timm.models.eva import Eva
    from timm.models.vision_transformer import VisionTransformer
    from timm.models.vision_transformer_relpos import VisionTransformerRelPos

    hp = {k: v for k, v in hparams.items()}
    pe = hp.get("pos_embed")
    if pe not in POS_EMBEDS:
        raise ConfigError(f"vit pos_embed must be one of {POS_EMBEDS}, got {pe!r}")
    for k, (neutral, impls) in _ONLY.items():
        if hp.get(k, neutral) != neutral and pe not in impls:
            raise ConfigError(f"vit hparam {k}={hp[k]!r} needs pos_embed in {impls}, not {pe!r}")
    c, h, w = hp["input_shape"]
    common = dict(img_size=(h, w), patch_size=hp["patch_size"], in_chans=c, num_classes=hp["num_classes"],
                  embed_dim=hp["embed_dim"], depth=hp["depth"], num_heads=hp["num_heads"],
                  mlp_ratio=hp["mlp_ratio"], qkv_bias=hp["qkv_bias"], qk_norm=hp["qk_norm"],
                  init_values=hp["init_values"], class_token=hp["class_token"], global_pool=hp["global_pool"])
    norm = get_norm_layer(hp["norm"])
    if pe in ("learn", "none"):
        return VisionTransformer(**common, pos_embed=pe, reg_tokens=hp["reg_tokens"],
                                 no_embed_class=hp["no_embed_class"], pre_norm=hp["pre_norm"], norm_layer=norm,
                                 act_layer=hp["act"], mlp_layer=SwiGLU if hp["mlp"] == "swiglu" else Mlp)
    if pe == "rope":
        # timm supports grouped KV heads only in its "rope" attention with separate q/k/v projections.
        gqa = {} if hp["num_kv_heads"] is None else dict(attn_type="rope", qkv_fused=False)
        return Eva(**common, num_reg_tokens=hp["reg_tokens"], num_kv_heads=hp["num_kv_heads"],
                   swiglu_mlp=hp["mlp"] == "swiglu", use_abs_pos_emb=hp["abs_pos"], use_rot_pos_emb=True,
                   norm_layer=norm, **gqa)
    return VisionTransformerRelPos(**common, rel_pos_type=hp["rel_pos_type"], norm_layer=norm)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def sample(rng: random.Random, *, input_shape: tuple | list = (1, 28, 28), num_classes: int = 10,
           min_params: int | None = 5_000, max_params: int | None = 500_000, max_depth: int = 8,
           max_tokens: int = 196) -> dict:
    """Sample vit hparams.

    Args:
        input_shape: ``(C, H, W)``; the patch size divides both H and W.
        min_params, max_params: parameter-count bounds; max_depth: at most this many blocks.
        max_tokens: at most this many patches (bounds attention cost; 196 = 14x14 patches of 2x2 on 28x28).
    """
    c, h, w = input_shape
    patches = [p for p in _divisors(h) if w % p == 0 and (h // p) * (w // p) <= max_tokens and h // p >= 2]
    if not patches or max_depth < 1:
        raise ConfigError(f"no vit for input_shape={tuple(input_shape)}, max_tokens={max_tokens}, "
                          f"max_depth={max_depth}: need a patch size dividing H and W with <= max_tokens patches")

    def propose(rng: random.Random) -> dict:
        pe = rng.choice(("learn", "learn", "learn", "none", "rope", "relpos"))
        heads = rng.choice((1, 2, 3, 4, 6, 8))
        cls = rng.random() < (0.3 if pe == "relpos" else 0.6)
        pools = ["avg"] + (["token", "token"] if cls else []) + (["map", "max"] if pe in ("learn", "none") else [])
        hp = dict(input_shape=list(input_shape), num_classes=num_classes, pos_embed=pe,
                  patch_size=rng.choice(patches), depth=rng.randint(1, max_depth), num_heads=heads,
                  embed_dim=heads * rng.choice((8, 16, 24, 32)), mlp_ratio=rng.choice((1.0, 2.0, 2.5, 3.0, 4.0)),
                  qkv_bias=rng.random() < 0.7, qk_norm=rng.random() < 0.2,
                  init_values=rng.choice((None, None, 1e-5, 0.1)), class_token=cls, global_pool=rng.choice(pools),
                  norm=rng.choice(("layernorm", "layernorm", "rmsnorm")))
        hp.update({k: neutral for k, (neutral, _) in _ONLY.items()})
        if pe in ("learn", "none"):
            hp.update(act=rng.choice(("gelu", "gelu", "silu", "relu")), pre_norm=rng.random() < 0.2)
        if pe == "learn":
            hp["no_embed_class"] = rng.random() < 0.2
        if pe in ("learn", "none", "rope"):
            hp.update(mlp=rng.choice(("mlp", "mlp", "swiglu")), reg_tokens=rng.choice((0, 0, 0, 1, 4)))
        if pe == "rope":
            hp.update(num_kv_heads=rng.choice([None] + _divisors(heads)[:-1]), abs_pos=rng.random() < 0.3)
        if pe == "relpos":
            hp["rel_pos_type"] = rng.choice(("mlp", "bias"))
        return hp

    def lower_bound(hp: dict) -> int:  # q/out projections + MLP matrices per block, patch embedding, classifier
        d = hp["embed_dim"]
        return hp["depth"] * d * d * (2 + 2 * hp["mlp_ratio"]) + d * (c * hp["patch_size"] ** 2 + num_classes)

    return sample_within(rng, propose, build, min_params, max_params, what="vit", lower_bound=lower_bound)


register_family("vit", task="image", sample=sample, build=build)


def _tiny(**kw) -> dict:
    base = dict(input_shape=[1, 28, 28], num_classes=10, pos_embed="learn", patch_size=7, depth=1, num_heads=2,
                embed_dim=8, mlp_ratio=2.0, qkv_bias=True, qk_norm=False, init_values=None, class_token=True,
                global_pool="token", norm="layernorm")
    base.update({k: neutral for k, (neutral, _) in _ONLY.items()})
    return {**base, **kw}


@register_arch
def test_vit() -> ArchSpec:
    """One block, width 8, 2 heads, 7x7 patches (16 tokens) + class token, learned position embedding."""
    return ArchSpec("vit", _tiny())


@register_arch
def test_vit_rope() -> ArchSpec:
    """Eva-style block: rotary positions, SwiGLU MLP, RMSNorm, grouped KV heads, layer-scale, avg pooling."""
    return ArchSpec("vit", _tiny(pos_embed="rope", mlp="swiglu", norm="rmsnorm", num_kv_heads=1, init_values=0.1,
                                 class_token=False, global_pool="avg"))


@register_arch
def test_vit_relpos() -> ArchSpec:
    """Relative position bias, no class token, avg pooling."""
    return ArchSpec("vit", _tiny(pos_embed="relpos", class_token=False, global_pool="avg", rel_pos_type="bias"))
