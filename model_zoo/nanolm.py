"""Hand-written causal decoders (nanoGPT style): the LMs users write themselves, not a library's classes.

One fused ``qkv`` projection per block, ``F.scaled_dot_product_attention(is_causal=True)``, pre-norm residual
blocks, LayerNorm or RMSNorm, learned positions or rotary embeddings (computed in ``forward``: no buffers), a plain
or gated (SwiGLU) MLP, tied or untied output head.

Shapes: input ``(B, T)`` long token ids, ``T <= seq_len``; output logits ``(B, T, vocab_size)`` (a tensor).
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from ghn.errors import ConfigError

from .registry import register_arch, register_family, sample_within
from .spec import ArchSpec

__all__ = ["NanoLM", "build", "sample"]

ACTS = {"gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU}
MLPS = ("gelu", "relu", "silu", "swiglu")


def rotate(x: torch.Tensor) -> torch.Tensor:
    """Rotary position embedding of ``x`` ``(B, heads, T, head_dim)`` (even head_dim), base 10000."""
    t, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / 10000 ** (torch.arange(0, d, 2, device=x.device, dtype=torch.float32) / d)
    ang = torch.arange(t, device=x.device, dtype=torch.float32)[:, None] * inv  # (T, d/2)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class Attention(nn.Module):
    def __init__(self, width: int, n_head: int, rope: bool, bias: bool):
        super().__init__()
        self.n_head, self.rope = n_head, rope
        self.qkv = nn.Linear(width, 3 * width, bias=bias)
        self.proj = nn.Linear(width, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in self.qkv(x).split(c, dim=2))
        if self.rope:
            q, k = rotate(q), rotate(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, kind: str, bias: bool):
        super().__init__()
        self.gated = kind == "swiglu"
        self.up = nn.Linear(width, hidden, bias=bias)
        self.gate = nn.Linear(width, hidden, bias=bias) if self.gated else None
        self.act = nn.SiLU() if self.gated else ACTS[kind]()
        self.down = nn.Linear(hidden, width, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.gate(x)) * self.up(x) if self.gated else self.act(self.up(x))
        return self.down(h)


class Block(nn.Module):
    def __init__(self, width: int, n_head: int, hidden: int, mlp: str, norm: str, rope: bool, bias: bool):
        super().__init__()
        make_norm = (lambda: nn.LayerNorm(width, bias=bias)) if norm == "layer" else (lambda: nn.RMSNorm(width))
        self.norm1, self.attn = make_norm(), Attention(width, n_head, rope, bias)
        self.norm2, self.mlp = make_norm(), MLP(width, hidden, mlp, bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class NanoLM(nn.Module):
    """Token embedding (+ learned positions) -> pre-norm blocks -> final norm -> linear head over the vocabulary."""

    def __init__(self, vocab_size: int, seq_len: int, n_layer: int, width: int, n_head: int, hidden: int,
                 mlp: str = "gelu", norm: str = "layer", pos: str = "learned", tie: bool = True, bias: bool = True):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(seq_len, width) if pos == "learned" else None
        self.blocks = nn.ModuleList(Block(width, n_head, hidden, mlp, norm, pos == "rope", bias)
                                    for _ in range(n_layer))
        self.norm = nn.LayerNorm(width, bias=bias) if norm == "layer" else nn.RMSNorm(width)
        self.head = nn.Linear(width, vocab_size, bias=False)
        if tie:
            self.head.weight = self.tok.weight
        for name, p in self.named_parameters():  # GPT-2's init: N(0, 0.02), residual projections scaled by depth
            if p.dim() == 2:
                std = 0.02 / (2 * n_layer) ** 0.5 if name.endswith(("proj.weight", "down.weight")) else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(input_ids)
        if self.pos is not None:
            x = x + self.pos(torch.arange(input_ids.shape[1], device=input_ids.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x))


def build(hparams: dict) -> NanoLM:
    """NanoLM from hparams: vocab_size, seq_len, n_layer, width, n_head, hidden, mlp, norm, pos, tie, bias."""
    hp = dict(hparams)
    keys = ("vocab_size", "seq_len", "n_layer", "width", "n_head", "hidden", "mlp", "norm", "pos", "tie", "bias")
    missing, unknown = [k for k in keys if k not in hp], sorted(set(hp) - set(keys))
    if missing or unknown:
        raise ConfigError(f"nanolm hparams: missing {missing}, unknown {unknown}")
    if hp["mlp"] not in MLPS or hp["norm"] not in ("layer", "rms") or hp["pos"] not in ("learned", "rope"):
        raise ConfigError(f"nanolm: mlp must be one of {MLPS}, norm 'layer'|'rms', pos 'learned'|'rope'; got "
                          f"{hp['mlp']!r}, {hp['norm']!r}, {hp['pos']!r}")
    if hp["width"] % hp["n_head"] or hp["pos"] == "rope" and (hp["width"] // hp["n_head"]) % 2:
        raise ConfigError(f"nanolm: width {hp['width']} must split into {hp['n_head']} heads (of even size for rope)")
    return NanoLM(**hp)


def sample(rng: random.Random, *, vocab_size: int = 256, seq_len: int = 64, min_params: int | None = 10_000,
           max_params: int | None = 2_000_000, max_depth: int = 8) -> dict:
    """Sample nanolm hparams: 1..max_depth blocks, 1-8 heads of 8-64 dims, MLP kind and ratio, norm, positions,
    tying and biases."""
    if max_depth < 1:
        raise ConfigError(f"max_depth must be >= 1, got {max_depth}")

    def propose(rng: random.Random) -> dict:
        n_head = rng.choice((1, 2, 4, 8))
        width = n_head * rng.choice((8, 16, 32, 64))
        mlp = rng.choice(MLPS)
        ratio = rng.choice((2, 8 / 3, 4)) if mlp == "swiglu" else rng.choice((1, 2, 4))
        return dict(vocab_size=vocab_size, seq_len=seq_len, n_layer=rng.randint(1, max_depth), width=width,
                    n_head=n_head, hidden=int(width * ratio), mlp=mlp, norm=rng.choice(("layer", "rms")),
                    pos=rng.choice(("learned", "rope")), tie=rng.random() < 0.5, bias=rng.random() < 0.5)

    def lower_bound(hp: dict) -> int:  # qkv + proj and the MLP matrices, per block
        return hp["n_layer"] * (4 * hp["width"] ** 2 + (3 if hp["mlp"] == "swiglu" else 2) * hp["width"] * hp["hidden"])

    return sample_within(rng, propose, build, min_params, max_params, what="nanolm", lower_bound=lower_bound)


register_family("nanolm", task="lm", sample=sample, build=build)


@register_arch
def test_nanolm() -> ArchSpec:
    """Hand-written decoder of width 8 (2 heads), RMSNorm, rotary positions, SwiGLU MLP, vocabulary 32."""
    return ArchSpec("nanolm", dict(vocab_size=32, seq_len=16, n_layer=1, width=8, n_head=2, hidden=16, mlp="swiglu",
                                   norm="rms", pos="rope", tie=True, bias=False), task="lm")
