"""LM families of the kinds users bring (issue 22): parallel residual blocks, partial rotary, few KV heads, and
encoder-style LMs run with a causal mask.

``neox``: ``transformers.GPTNeoXConfig`` -> ``GPTNeoXForCausalLM`` (fused qkv, partial rotary, attention and MLP
in parallel or in sequence, LayerNorm, untied or tied head).
``phi_gemma``: ``PhiConfig`` (attention and MLP in parallel on one shared LayerNorm, partial rotary, GQA) or
``GemmaConfig`` (RMSNorm, GeGLU MLP, 1..n_head KV heads, head_dim free of the width, scaled embeddings), picked by
the hparam ``model_type``.
``torchlm``: :class:`EncoderLM`, a token embedding (+ learned positions) and PyTorch's own
``nn.TransformerEncoder`` run with a causal mask, then a final LayerNorm and a linear head.

Defaults fit the byte-level fortunes task: ``vocab_size=256``, ``seq_len=64``. The transformers models use eager
attention and no KV cache (see :func:`model_zoo.decoders.causal_lm`).

Shapes: input ``(B, T)`` long token ids, ``T <= seq_len``; output logits ``(B, T, vocab_size)``: ``.logits`` of a
transformers output for ``neox`` / ``phi_gemma``, a plain tensor for ``torchlm``.
"""
from __future__ import annotations

import random

import torch
from torch import nn

from ghn.errors import ConfigError

from .decoders import causal_lm
from .registry import register_arch, register_family, sample_within
from .spec import ArchSpec

__all__ = ["EncoderLM", "build_neox", "build_phi_gemma", "build_torchlm", "sample_neox", "sample_phi_gemma",
           "sample_torchlm", "ROTARY_FRACTIONS", "PHI_GEMMA_TYPES"]

ROTARY_FRACTIONS = (0.25, 0.5, 1.0)  # the fraction of each head's dims that is rotated (GPT-NeoX 0.25, Phi-2 0.4)
HEAD_DIMS = (8, 16, 24, 32, 48, 64)  # multiples of 8: a quarter of each is even, so every rotary fraction applies
HEADS = (1, 2, 4, 8)
WIDTHS = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512)
NEOX_ACTS = ("gelu", "gelu_new", "relu")
PHI_GEMMA_TYPES = ("phi", "gemma")
# Phi-2 uses gelu_new; Gemma's GeGLU is the tanh GELU (its config rewrites "gelu" to it, with a warning)
PHI_GEMMA_ACTS = {"phi": ("gelu_new", "gelu", "relu"), "gemma": ("gelu_pytorch_tanh",)}
TORCH_ACTS = ("relu", "gelu")
POS = ("learned", "none")


def _check_keys(what: str, hparams: dict, keys: tuple[str, ...]) -> dict:
    """A copy of ``hparams``; ConfigError naming the missing and unknown keys when they differ from ``keys``."""
    missing, unknown = [k for k in keys if k not in hparams], sorted(set(hparams) - set(keys))
    if missing or unknown:
        raise ConfigError(f"{what} hparams: missing {missing}, unknown {unknown}; expected exactly {list(keys)}")
    return dict(hparams)


def _check_choice(what: str, key: str, value, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{what}: {key} must be one of {tuple(choices)}, got {value!r}")


def _check_heads(what: str, width: int, n_head: int, head_dim: int | None, rotary: float) -> None:
    """Heads split the width (``head_dim is None``: the width is ``n_head`` heads) and rotate an even, non-zero
    number of dims per head (``rotate_half`` splits the rotated part in two halves)."""
    if n_head < 1 or head_dim is None and width % n_head:
        raise ConfigError(f"{what}: width {width} must split into n_head={n_head} heads")
    hd = width // n_head if head_dim is None else head_dim
    if not 0 < rotary <= 1:  # any fraction builds (Phi-2 rotates 0.4); the samplers draw from ROTARY_FRACTIONS
        raise ConfigError(f"{what}: rotary fraction must be in (0, 1], got {rotary}")
    if int(hd * rotary) < 2 or int(hd * rotary) % 2:
        raise ConfigError(f"{what}: head dim {hd} x rotary fraction {rotary} must be an even number >= 2 of rotated "
                          "dims; pick a head dim divisible by 8")


def _check_kv(what: str, n_head: int, n_kv_head: int) -> None:
    if n_kv_head < 1 or n_head % n_kv_head:
        raise ConfigError(f"{what}: n_kv_head={n_kv_head} must divide n_head={n_head}")


def _no_special_tokens() -> dict:
    """Config kwargs shared by the transformers families: no KV cache, no special token ids (bytes are all data)."""
    return dict(use_cache=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)


def _common(rng: random.Random, vocab_size: int, seq_len: int, max_depth: int) -> tuple[int, int, int]:
    """Validated constraints, then the blocks, width and heads (of a size in HEAD_DIMS) of one proposal.

    The width is drawn first and the heads among those that split it: drawing heads and head size first makes
    the width grow with the heads, and the parameter bounds would then reject most multi-head proposals.
    """
    if max_depth < 1 or vocab_size < 2 or seq_len < 1:
        raise ConfigError(f"need max_depth >= 1, vocab_size >= 2, seq_len >= 1; got {max_depth}, {vocab_size}, "
                          f"{seq_len}")
    width = rng.choice(WIDTHS)
    heads = [h for h in HEADS if width % h == 0 and width // h in HEAD_DIMS]
    return rng.randint(1, max_depth), width, rng.choice(heads + heads[1:])  # multi-head twice as likely


# --- neox ---------------------------------------------------------------------------------------------------------

NEOX_KEYS = ("vocab_size", "seq_len", "n_layer", "width", "n_head", "intermediate_size", "activation", "rotary_pct",
             "parallel_residual", "tie_word_embeddings")


def build_neox(hparams: dict) -> nn.Module:
    """``GPTNeoXForCausalLM`` from hparams: vocab_size, seq_len, n_layer, width, n_head, intermediate_size,
    activation, rotary_pct, parallel_residual, tie_word_embeddings."""
    from transformers import GPTNeoXConfig

    hp = _check_keys("neox", hparams, NEOX_KEYS)
    _check_choice("neox", "activation", hp["activation"], NEOX_ACTS)
    _check_heads("neox", hp["width"], hp["n_head"], None, hp["rotary_pct"])
    cfg = GPTNeoXConfig(vocab_size=hp["vocab_size"], max_position_embeddings=hp["seq_len"],
                        num_hidden_layers=hp["n_layer"], hidden_size=hp["width"], num_attention_heads=hp["n_head"],
                        intermediate_size=hp["intermediate_size"], hidden_act=hp["activation"],
                        rotary_pct=hp["rotary_pct"], use_parallel_residual=hp["parallel_residual"],
                        tie_word_embeddings=hp["tie_word_embeddings"], **_no_special_tokens())
    return causal_lm(cfg)


def sample_neox(rng: random.Random, *, vocab_size: int = 256, seq_len: int = 64, min_params: int | None = 10_000,
                max_params: int | None = 2_000_000, max_depth: int = 8) -> dict:
    """Sample neox hparams: 1..max_depth layers, 1-8 heads of 8-64 dims, MLP ratio 1-4, activation, rotary
    fraction, parallel residual (p = 0.75), tying (p = 0.3)."""

    def propose(rng: random.Random) -> dict:
        n_layer, width, n_head = _common(rng, vocab_size, seq_len, max_depth)
        return dict(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, width=width, n_head=n_head,
                    intermediate_size=width * rng.choice((1, 2, 3, 4)), activation=rng.choice(NEOX_ACTS),
                    rotary_pct=rng.choice(ROTARY_FRACTIONS), parallel_residual=rng.random() < 0.75,
                    tie_word_embeddings=rng.random() < 0.3)

    def lower_bound(hp: dict) -> int:  # qkv + dense (4 w^2) and the MLP's two matrices, per layer
        return hp["n_layer"] * (4 * hp["width"] ** 2 + 2 * hp["width"] * hp["intermediate_size"])

    return sample_within(rng, propose, build_neox, min_params, max_params, what="neox", lower_bound=lower_bound)


# --- phi_gemma ----------------------------------------------------------------------------------------------------

PHI_GEMMA_KEYS = ("model_type", "vocab_size", "seq_len", "n_layer", "width", "n_head", "n_kv_head", "head_dim",
                  "intermediate_size", "activation", "partial_rotary_factor", "tie_word_embeddings")


def build_phi_gemma(hparams: dict) -> nn.Module:
    """``PhiForCausalLM`` or ``GemmaForCausalLM`` (``model_type``) from hparams: vocab_size, seq_len, n_layer,
    width, n_head, n_kv_head, head_dim, intermediate_size, activation, partial_rotary_factor, tie_word_embeddings.

    Phi has no free head dim (``head_dim`` must be ``width // n_head``); Gemma rotates whole heads
    (``partial_rotary_factor`` must be 1.0) and its head dim is free of the width.
    """
    from transformers import GemmaConfig, PhiConfig

    hp = _check_keys("phi_gemma", hparams, PHI_GEMMA_KEYS)
    mt = hp["model_type"]
    _check_choice("phi_gemma", "model_type", mt, PHI_GEMMA_TYPES)
    what = f"phi_gemma ({mt})"
    _check_choice(what, "activation", hp["activation"], PHI_GEMMA_ACTS[mt])
    _check_kv(what, hp["n_head"], hp["n_kv_head"])
    _check_heads(what, hp["width"], hp["n_head"], hp["head_dim"], hp["partial_rotary_factor"])
    kw = dict(vocab_size=hp["vocab_size"], max_position_embeddings=hp["seq_len"], num_hidden_layers=hp["n_layer"],
              hidden_size=hp["width"], num_attention_heads=hp["n_head"], num_key_value_heads=hp["n_kv_head"],
              intermediate_size=hp["intermediate_size"], hidden_act=hp["activation"],
              tie_word_embeddings=hp["tie_word_embeddings"], **_no_special_tokens())
    if mt == "phi":
        if hp["head_dim"] * hp["n_head"] != hp["width"]:
            raise ConfigError(f"{what}: head_dim must be width // n_head = {hp['width'] // hp['n_head']} "
                              f"(Phi has no free head dim), got {hp['head_dim']}")
        return causal_lm(PhiConfig(**kw, partial_rotary_factor=hp["partial_rotary_factor"]))
    if hp["partial_rotary_factor"] != 1.0:
        raise ConfigError(f"{what}: partial_rotary_factor must be 1.0 (Gemma rotates whole heads), "
                          f"got {hp['partial_rotary_factor']}")
    return causal_lm(GemmaConfig(**kw, head_dim=hp["head_dim"]))  # set explicitly: Gemma's default is 256


def sample_phi_gemma(rng: random.Random, *, vocab_size: int = 256, seq_len: int = 64,
                     min_params: int | None = 10_000, max_params: int | None = 2_000_000, max_depth: int = 8) -> dict:
    """Sample phi_gemma hparams: Phi or Gemma (even odds), 1..max_depth layers, 1-8 heads of 8-64 dims, KV heads a
    divisor of the heads (Gemma: often 1, MQA), MLP ratio, activation, Phi's rotary fraction, tying (Gemma
    p = 0.8, Phi p = 0.3)."""

    def propose(rng: random.Random) -> dict:
        n_layer, width, n_head = _common(rng, vocab_size, seq_len, max_depth)
        mt = rng.choice(PHI_GEMMA_TYPES)
        kv = [d for d in HEADS if n_head % d == 0]
        if mt == "phi":
            head_dim, n_kv, rotary = width // n_head, rng.choice(kv), rng.choice(ROTARY_FRACTIONS)
            ratio, tie = rng.choice((1, 2, 3, 4)), rng.random() < 0.3
        else:  # few KV heads: MQA half the time; head_dim within a factor 2 of width // n_head, not tied to it
            base = width // n_head
            head_dim = rng.choice([d for d in HEAD_DIMS if base <= 2 * d and d <= 2 * base])
            n_kv, rotary = 1 if rng.random() < 0.5 else rng.choice(kv), 1.0
            ratio, tie = rng.choice((2, 8 / 3, 4)), rng.random() < 0.8
        return dict(model_type=mt, vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, width=width,
                    n_head=n_head, n_kv_head=n_kv, head_dim=head_dim, intermediate_size=int(width * ratio),
                    activation=rng.choice(PHI_GEMMA_ACTS[mt]), partial_rotary_factor=rotary,
                    tie_word_embeddings=tie)

    def lower_bound(hp: dict) -> int:  # q + o projections and the MLP (Gemma gated: three matrices), per layer
        w, mlp = hp["width"], 2 if hp["model_type"] == "phi" else 3
        return hp["n_layer"] * (2 * w * hp["n_head"] * hp["head_dim"] + mlp * w * hp["intermediate_size"])

    return sample_within(rng, propose, build_phi_gemma, min_params, max_params, what="phi_gemma",
                         lower_bound=lower_bound)


# --- torchlm ------------------------------------------------------------------------------------------------------

class EncoderLM(nn.Module):
    """What a user writes with PyTorch's own layers: token embedding (+ learned positions), an
    ``nn.TransformerEncoder`` run with a causal mask, a final LayerNorm and a linear head (tied to the token
    embedding or not).

    Init: PyTorch's defaults for the encoder (``nn.TransformerEncoder`` clones one layer, so its layers start
    equal), and U(-0.1, 0.1) embeddings / head with a zero head bias as in PyTorch's word_language_model example
    (N(0, 1) embeddings behind a tied head would give logits of std ~sqrt(width)).
    """

    def __init__(self, vocab_size: int, seq_len: int, n_layer: int, width: int, n_head: int, ffn: int,
                 activation: str = "gelu", norm_first: bool = True, pos: str = "learned", tie: bool = False):
        super().__init__()
        self.tok = nn.Embedding(vocab_size, width)
        self.pos = nn.Embedding(seq_len, width) if pos == "learned" else None
        layer = nn.TransformerEncoderLayer(width, n_head, ffn, dropout=0.0, activation=activation,
                                           batch_first=True, norm_first=norm_first)
        # no nested tensors: they only apply to padding masks, and warn for norm_first layers
        self.encoder = nn.TransformerEncoder(layer, n_layer, enable_nested_tensor=False)
        self.norm, self.head = nn.LayerNorm(width), nn.Linear(width, vocab_size)
        nn.init.uniform_(self.tok.weight, -0.1, 0.1)
        if self.pos is not None:
            nn.init.uniform_(self.pos.weight, -0.1, 0.1)
        nn.init.zeros_(self.head.bias)
        if tie:
            self.head.weight = self.tok.weight
        else:
            nn.init.uniform_(self.head.weight, -0.1, 0.1)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1]
        x = self.tok(input_ids)
        if self.pos is not None:
            x = x + self.pos(torch.arange(t, device=input_ids.device))
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=input_ids.device, dtype=x.dtype)
        return self.head(self.norm(self.encoder(x, mask=mask, is_causal=True)))


TORCHLM_KEYS = ("vocab_size", "seq_len", "n_layer", "width", "n_head", "ffn", "activation", "norm_first", "pos",
                "tie")


def build_torchlm(hparams: dict) -> EncoderLM:
    """EncoderLM from hparams: vocab_size, seq_len, n_layer, width, n_head, ffn, activation, norm_first, pos, tie."""
    hp = _check_keys("torchlm", hparams, TORCHLM_KEYS)
    _check_choice("torchlm", "activation", hp["activation"], TORCH_ACTS)
    _check_choice("torchlm", "pos", hp["pos"], POS)
    if hp["n_head"] < 1 or hp["width"] % hp["n_head"]:
        raise ConfigError(f"torchlm: width {hp['width']} must split into n_head={hp['n_head']} heads")
    return EncoderLM(**hp)


def sample_torchlm(rng: random.Random, *, vocab_size: int = 256, seq_len: int = 64, min_params: int | None = 10_000,
                   max_params: int | None = 2_000_000, max_depth: int = 8) -> dict:
    """Sample torchlm hparams: 1..max_depth layers, 1-8 heads of 8-64 dims, FFN ratio 1-4, relu/gelu, pre- or
    post-norm, learned or no positions, tying (p = 0.4)."""

    def propose(rng: random.Random) -> dict:
        n_layer, width, n_head = _common(rng, vocab_size, seq_len, max_depth)
        return dict(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, width=width, n_head=n_head,
                    ffn=width * rng.choice((1, 2, 3, 4)), activation=rng.choice(TORCH_ACTS),
                    norm_first=rng.random() < 0.5, pos=rng.choice(("learned", "learned", "none")),
                    tie=rng.random() < 0.4)

    def lower_bound(hp: dict) -> int:  # in_proj + out_proj (4 w^2) and the FFN's two matrices, per layer
        return hp["n_layer"] * (4 * hp["width"] ** 2 + 2 * hp["width"] * hp["ffn"])

    return sample_within(rng, propose, build_torchlm, min_params, max_params, what="torchlm",
                         lower_bound=lower_bound)


register_family("neox", task="lm", sample=sample_neox, build=build_neox)
register_family("phi_gemma", task="lm", sample=sample_phi_gemma, build=build_phi_gemma)
register_family("torchlm", task="lm", sample=sample_torchlm, build=build_torchlm)


@register_arch
def test_neox() -> ArchSpec:
    """GPT-NeoX block of width 16 (2 heads of 8), parallel residual, a quarter of each head rotated, vocabulary 32."""
    return ArchSpec("neox", dict(vocab_size=32, seq_len=16, n_layer=1, width=16, n_head=2, intermediate_size=32,
                                 activation="gelu", rotary_pct=0.25, parallel_residual=True,
                                 tie_word_embeddings=False), task="lm")


@register_arch
def test_phi_gemma() -> ArchSpec:
    """Gemma block of width 16, 2 query heads of 8 sharing 1 KV head (MQA), GeGLU MLP, tied, vocabulary 32."""
    return ArchSpec("phi_gemma", dict(model_type="gemma", vocab_size=32, seq_len=16, n_layer=1, width=16, n_head=2,
                                      n_kv_head=1, head_dim=8, intermediate_size=32, activation="gelu_pytorch_tanh",
                                      partial_rotary_factor=1.0, tie_word_embeddings=True), task="lm")


@register_arch
def test_torchlm() -> ArchSpec:
    """``nn.TransformerEncoder`` LM of width 16 (2 heads), pre-norm, learned positions, tied head, vocabulary 32."""
    return ArchSpec("torchlm", dict(vocab_size=32, seq_len=16, n_layer=1, width=16, n_head=2, ffn=32,
                                    activation="gelu", norm_first=True, pos="learned", tie=True), task="lm")
