"""Decoder-only language models (GPT-2 and Llama style) from transformers configs.

``gpt``: ``transformers.GPT2Config`` -> ``GPT2LMHeadModel`` (learned positions, LayerNorm, GELU-family MLP).
``llama``: ``LlamaConfig`` (or the near-identical ``Qwen2Config`` / ``MistralConfig``, ``model_type``) ->
``*ForCausalLM`` (rotary positions, RMSNorm, gated MLP, grouped KV heads).
Defaults fit the byte-level fortunes task: ``vocab_size=256``, ``seq_len=64``. Models use eager attention and
no KV cache, so tracing does not depend on SDPA kernels.

Shapes: input ``(B, T)`` long token ids, ``T <= seq_len``; output ``.logits`` ``(B, T, vocab_size)``.
"""
from __future__ import annotations

import random

from torch import nn

from ghn.errors import ConfigError

from .registry import register_arch, register_family, sample_within
from .spec import ArchSpec

__all__ = ["build_gpt", "build_llama", "causal_lm", "sample_gpt", "sample_llama", "LLAMA_TYPES"]

GPT_ACTS = ("gelu_new", "gelu", "relu", "silu")
LLAMA_TYPES = ("llama", "qwen2", "mistral")


def causal_lm(cfg) -> nn.Module:
    """The transformers causal LM of config ``cfg``, untrained, with eager attention (traceable without SDPA)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_config(cfg, attn_implementation="eager")


def build_gpt(hparams: dict) -> nn.Module:
    """``GPT2LMHeadModel`` from hparams: vocab_size, seq_len, n_layer, n_embd, n_head, n_inner (None = 4 x width),
    activation, tie_word_embeddings."""
    from transformers import GPT2Config

    hp = dict(hparams)
    try:
        cfg = GPT2Config(vocab_size=hp.pop("vocab_size"), n_positions=hp.pop("seq_len"), n_layer=hp.pop("n_layer"),
                         n_embd=hp.pop("n_embd"), n_head=hp.pop("n_head"), n_inner=hp.pop("n_inner"),
                         activation_function=hp.pop("activation"), tie_word_embeddings=hp.pop("tie_word_embeddings"),
                         use_cache=False, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    except KeyError as e:
        raise ConfigError(f"gpt hparams miss {e}") from None
    if hp:
        raise ConfigError(f"unknown gpt hparams {sorted(hp)}")
    return causal_lm(cfg)


def build_llama(hparams: dict) -> nn.Module:
    """``LlamaForCausalLM`` (or Qwen2/Mistral, ``model_type``) from hparams: vocab_size, seq_len, n_layer, width,
    n_head, n_kv_head, head_dim, intermediate_size, activation, tie_word_embeddings, attention_bias, mlp_bias."""
    from transformers import LlamaConfig, MistralConfig, Qwen2Config

    hp = dict(hparams)
    mt = hp.pop("model_type", "llama")
    if mt not in LLAMA_TYPES:
        raise ConfigError(f"llama model_type must be one of {LLAMA_TYPES}, got {mt!r}")
    try:
        kw = dict(vocab_size=hp.pop("vocab_size"), max_position_embeddings=hp.pop("seq_len"),
                  num_hidden_layers=hp.pop("n_layer"), hidden_size=hp.pop("width"),
                  num_attention_heads=hp.pop("n_head"), num_key_value_heads=hp.pop("n_kv_head"),
                  head_dim=hp.pop("head_dim"), intermediate_size=hp.pop("intermediate_size"),
                  hidden_act=hp.pop("activation"), tie_word_embeddings=hp.pop("tie_word_embeddings"),
                  use_cache=False)
        attention_bias, mlp_bias = hp.pop("attention_bias"), hp.pop("mlp_bias")
    except KeyError as e:
        raise ConfigError(f"llama hparams miss {e}") from None
    if hp:
        raise ConfigError(f"unknown llama hparams {sorted(hp)}")
    if mt != "llama" and mlp_bias or mt == "mistral" and attention_bias:
        raise ConfigError(f"{mt} has fixed biases: attention_bias/mlp_bias are only free for model_type='llama'")
    if mt == "llama":
        cfg = LlamaConfig(**kw, attention_bias=attention_bias, mlp_bias=mlp_bias)
    elif mt == "qwen2":  # Qwen2 always has q/k/v biases
        cfg = Qwen2Config(**kw)
    else:
        cfg = MistralConfig(**kw)
    return causal_lm(cfg)


def _lm_common(rng: random.Random, vocab_size: int, seq_len: int, max_depth: int) -> tuple[int, int]:
    if max_depth < 1 or vocab_size < 2 or seq_len < 1:
        raise ConfigError(f"need max_depth >= 1, vocab_size >= 2, seq_len >= 1; got {max_depth}, {vocab_size}, "
                          f"{seq_len}")
    return rng.randint(1, max_depth), rng.choice((1, 2, 4, 8))


def sample_gpt(rng: random.Random, *, vocab_size: int = 256, seq_len: int = 64, min_params: int | None = 10_000,
               max_params: int | None = 2_000_000, max_depth: int = 8) -> dict:
    """Sample gpt hparams: 1..max_depth layers, 1-8 heads of 8-64 dims, MLP ratio 1-4, activation, tying."""

    def propose(rng: random.Random) -> dict:
        n_layer, n_head = _lm_common(rng, vocab_size, seq_len, max_depth)
        width = n_head * rng.choice((8, 16, 32, 64))
        return dict(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, n_embd=width, n_head=n_head,
                    n_inner=int(width * rng.choice((1, 2, 3, 4))), activation=rng.choice(GPT_ACTS),
                    tie_word_embeddings=rng.random() < 0.7)

    def lower_bound(hp: dict) -> int:  # attention (4 w^2) and MLP (2 w n_inner) matrices, per layer
        return hp["n_layer"] * (4 * hp["n_embd"] ** 2 + 2 * hp["n_embd"] * hp["n_inner"])

    return sample_within(rng, propose, build_gpt, min_params, max_params, what="gpt", lower_bound=lower_bound)


def sample_llama(rng: random.Random, *, vocab_size: int = 256, seq_len: int = 64, min_params: int | None = 10_000,
                 max_params: int | None = 2_000_000, max_depth: int = 8) -> dict:
    """Sample llama hparams: layers, heads, KV heads (a divisor of heads), head_dim, gated-MLP width, activation,
    tying, biases, and the config class (llama / qwen2 / mistral)."""

    def propose(rng: random.Random) -> dict:
        n_layer, n_head = _lm_common(rng, vocab_size, seq_len, max_depth)
        head_dim = rng.choice((8, 16, 32, 64))
        width = n_head * head_dim * rng.choice((1, 1, 1, 2))  # head_dim * heads may differ from the width
        mt = rng.choice(("llama", "llama", "qwen2", "mistral"))
        return dict(model_type=mt, vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, width=width,
                    n_head=n_head, n_kv_head=rng.choice([d for d in (1, 2, 4, 8) if n_head % d == 0]),
                    head_dim=head_dim, intermediate_size=int(width * rng.choice((1, 2, 8 / 3, 4))),
                    activation=rng.choice(("silu", "silu", "gelu")), tie_word_embeddings=rng.random() < 0.5,
                    attention_bias=mt == "llama" and rng.random() < 0.2, mlp_bias=mt == "llama" and rng.random() < 0.1)

    def lower_bound(hp: dict) -> int:  # q/o projections and the gated MLP's three matrices, per layer
        w = hp["width"]
        return hp["n_layer"] * (2 * w * hp["n_head"] * hp["head_dim"] + 3 * w * hp["intermediate_size"])

    return sample_within(rng, propose, build_llama, min_params, max_params, what="llama", lower_bound=lower_bound)


register_family("gpt", task="lm", sample=sample_gpt, build=build_gpt)
register_family("llama", task="lm", sample=sample_llama, build=build_llama)


@register_arch
def test_gpt() -> ArchSpec:
    """GPT-2 block of width 8 (2 heads), vocabulary 32, tied embeddings: about 1.4k parameters."""
    return ArchSpec("gpt", dict(vocab_size=32, seq_len=16, n_layer=1, n_embd=8, n_head=2, n_inner=16,
                                activation="gelu_new", tie_word_embeddings=True), task="lm")


@register_arch
def test_llama() -> ArchSpec:
    """Llama block of width 8, 2 heads / 1 KV head, gated MLP, untied head, vocabulary 32."""
    return ArchSpec("llama", dict(model_type="llama", vocab_size=32, seq_len=16, n_layer=1, width=8, n_head=2,
                                  n_kv_head=1, head_dim=4, intermediate_size=16, activation="silu",
                                  tie_word_embeddings=False, attention_bias=False, mlp_bias=False), task="lm")


@register_arch
def test_qwen2() -> ArchSpec:
    """Qwen2 block (Llama with q/k/v biases), tied embeddings."""
    return ArchSpec("llama", dict(model_type="qwen2", vocab_size=32, seq_len=16, n_layer=1, width=8, n_head=2,
                                  n_kv_head=2, head_dim=4, intermediate_size=16, activation="silu",
                                  tie_word_embeddings=True, attention_bias=False, mlp_bias=False), task="lm")
