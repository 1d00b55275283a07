"""Example inputs: what the graph builder feeds a model to trace it.

Users may pass a tensor, a tuple of positional inputs, a dict of keyword inputs, or a callable returning one of
those. When they pass nothing, we use what the model declares about itself: timm's ``pretrained_cfg`` /
``default_cfg`` (``input_size``) or a transformers ``config`` (token ids). Otherwise we raise
:class:`~ghn.errors.ExampleInputError` instead of guessing an image shape.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn as nn

from .errors import ExampleInputError

__all__ = ["ExampleInputs", "resolve_example_inputs", "default_example_inputs", "inputs_of_shape"]

ExampleInputs = torch.Tensor | tuple | list | dict | Callable[[], Any] | None

#: batch size and sequence length of default inputs; tracing cost does not depend on them (fake tensors).
BATCH, SEQ_LEN = 2, 8


def resolve_example_inputs(model: nn.Module, example_inputs: ExampleInputs) -> tuple[tuple, dict]:
    """Normalise ``example_inputs`` into ``(args, kwargs)`` for ``model(*args, **kwargs)``.

    Raises:
        ExampleInputError: when nothing is given and the model declares no input, or the type is not supported.
    """
    if callable(example_inputs) and not isinstance(example_inputs, torch.Tensor | nn.Module):
        example_inputs = example_inputs()
    if example_inputs is None:
        example_inputs = default_example_inputs(model)
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, tuple | list):
        return tuple(example_inputs), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    raise ExampleInputError(
        f"example_inputs of type {type(example_inputs).__name__} is not supported; pass a tensor, a tuple of "
        "positional inputs, a dict of keyword inputs, or a callable returning one of those")


def default_example_inputs(model: nn.Module) -> torch.Tensor | dict:
    """Inputs from the model's own metadata (timm ``input_size``, transformers ``config``).

    Raises:
        ExampleInputError: if the model declares nothing usable.
    """
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and cfg.get("input_size"):
        c, h, w = cfg["input_size"]
        # timm models built with img_size=... keep the pretrained input_size; the patch embedding knows better.
        img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
        if isinstance(img_size, int):
            img_size = (img_size, img_size)
        if isinstance(img_size, tuple | list) and len(img_size) == 2:
            h, w = img_size
        # models built with in_chans=... also keep the pretrained channel count: the first conv knows better
        # (timm models record it as `in_chans`; a parameter-free stem such as space-to-depth changes what the
        # first conv sees, so that is only the fallback)
        first_conv = next((m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)), None)
        c = getattr(model, "in_chans", None) or getattr(first_conv, "in_channels", c)
        return torch.randn(BATCH, c, h, w, dtype=_float_dtype(model))
    hf_config = getattr(model, "config", None)
    if hf_config is not None and hasattr(hf_config, "to_dict"):
        return _transformers_inputs(model, hf_config)
    raise ExampleInputError(
        f"{type(model).__name__} does not declare its input, so the graph cannot be traced; pass "
        "example_inputs=..., e.g. torch.randn(2, 3, 224, 224) for an image model or "
        "{'input_ids': torch.zeros(2, 8, dtype=torch.long)} for a language model")


def inputs_of_shape(model: nn.Module, shape: tuple[int, ...], token_ids: bool) -> torch.Tensor | dict:
    """Example inputs of ``shape`` (batch ``BATCH`` prepended): token ids below the model's vocabulary, or floats of
    its dtype. A transformers model gets them as its main input (``input_ids``, ``pixel_values``,
    ``input_features``, ...), plus ``decoder_input_ids`` for an encoder-decoder, in a dict of keyword inputs.

    Whether the model reads token ids is the caller's to tell (:func:`ghn.domain.model_task`).
    """
    if token_ids:
        vocab = next((m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding | nn.EmbeddingBag)), 2)
        x = torch.arange(BATCH * math.prod(shape)).reshape(BATCH, *shape) % vocab
    else:
        x = torch.randn(BATCH, *shape, dtype=_float_dtype(model))
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        return x
    return _transformers_inputs(model, config, x)


def _transformers_inputs(model: nn.Module, config: Any, main_input: torch.Tensor | None = None) -> dict:
    """Keyword inputs of a transformers model: ``main_input`` (else a default one) under its main input name."""
    main = getattr(model, "main_input_name", "input_ids")
    inputs: dict[str, Any] = {}
    if main_input is not None:
        inputs[main] = main_input
    elif main == "input_ids":
        vocab = int(getattr(config, "vocab_size", 2) or 2)
        ids = torch.arange(BATCH * SEQ_LEN).reshape(BATCH, SEQ_LEN) % vocab
        inputs["input_ids"] = ids
        inputs["attention_mask"] = torch.ones_like(ids)
    elif main == "pixel_values":
        size = getattr(config, "image_size", 224)
        size = size if isinstance(size, int) else size[0]
        inputs["pixel_values"] = torch.randn(BATCH, getattr(config, "num_channels", 3), size, size,
                                             dtype=_float_dtype(model))
    else:
        raise ExampleInputError(
            f"{type(model).__name__} takes '{main}' as its main input, for which ghn has no default; "
            "pass example_inputs=... (a dict of keyword tensors)")
    if getattr(config, "is_encoder_decoder", False):  # token ids decode themselves; other inputs a start token
        inputs["decoder_input_ids"] = inputs[main] if main == "input_ids" else _decoder_start_ids(config)
    if getattr(config, "use_cache", False):
        inputs["use_cache"] = False  # a KV cache adds outputs and work, and is not part of the computation graph
    return inputs


def _decoder_start_ids(config: Any) -> torch.Tensor:
    """``decoder_input_ids`` of an encoder-decoder fed floats (speech features, images): its decoder start token,
    ``SEQ_LEN`` times (the values do not change the graph; a token outside the vocabulary would fail the lookup)."""
    start = getattr(config, "decoder_start_token_id", None)
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(start, int) or start < 0 or (isinstance(vocab, int) and start >= vocab):
        start = 0
    return torch.full((BATCH, SEQ_LEN), start)


def _float_dtype(model: nn.Module) -> torch.dtype:
    """The dtype of the model's first floating parameter (float32 if none): default inputs match the model."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
