"""A GHN's *domain* (what it was trained to predict) against what a model is, so that predictions out of domain
are never silent.

A GHN's config records its task: ``"image"`` (classifiers of ``input_shape`` ``[C, H, W]`` images with
``num_classes`` outputs) or ``"lm"`` (language models over ``vocab_size`` tokens, ``input_shape`` ``[T]``). A model's
task is told from its inputs (integer token ids: ``"lm"``; float ``(B, C, H, W)``: ``"image"``), from its graph
(the input feeds an ``embedding`` or a ``conv`` node) or from its first layer.

:func:`graph_for` builds the graph :meth:`GHN.predict` uses; without example inputs it traces with the GHN's own
training input (so a plain ``nn.Module`` needs none), falling back to what the model declares.
:func:`warn_domain` raises a :class:`~ghn.errors.DomainWarning` naming each mismatch and the predictor to use.
"""
from __future__ import annotations

import logging
import warnings
from typing import Any

import torch
import torch.nn as nn

from .config import GHNConfig
from .errors import DomainWarning, ExampleInputError
from .build import build_graph
from .graph import Graph
from .inputs import ExampleInputs, default_example_inputs
from .prediction import classifier_nodes

__all__ = ["TASKS", "SHIPPED_PREDICTORS", "ghn_task", "model_task", "training_inputs", "graph_for",
           "domain_mismatches", "warn_domain"]

logger = logging.getLogger(__name__)

TASKS = {"image": "image classification", "lm": "language modelling"}
#: the predictor shipped for each task (directories of this repository; ``ghn-predict`` picks from these)
SHIPPED_PREDICTORS = {"image": "checkpoints/ghn-fmnist", "lm": "checkpoints/ghn-fortunes"}
#: how to train a predictor of each task on your own data (named in warnings)
TRAIN_HINT = {"image": "python -m train --dataset imagefolder:DIR (or torchvision:NAME:ROOT)",
              "lm": "python -m train --task lm --families gpt llama --dataset text:FILE"}
_TOKEN_MODEL = "a language model (token ids feed an nn.Embedding)"
_IMAGE_MODEL = "an image model (float (B, C, H, W) inputs)"


def ghn_task(config: GHNConfig) -> str | None:
    """The task a GHN was trained on: ``config.task``, else the ``task`` of its provenance notes (checkpoints
    written before the field existed), else None (unknown: nothing is checked)."""
    if config.task in TASKS:
        return config.task
    legacy = config.notes.get("task") if isinstance(config.notes, dict) else None
    return legacy if legacy in TASKS else None


def _main_input(inputs: Any) -> torch.Tensor | None:
    """The model's main input tensor: the first positional one, else ``input_ids`` / ``pixel_values`` / the first
    keyword tensor."""
    if isinstance(inputs, torch.Tensor):
        return inputs
    if isinstance(inputs, tuple | list):
        return next((x for x in inputs if isinstance(x, torch.Tensor)), None)
    if isinstance(inputs, dict):
        for key in ("input_ids", "pixel_values"):
            if isinstance(inputs.get(key), torch.Tensor):
                return inputs[key]
        return next((x for x in inputs.values() if isinstance(x, torch.Tensor)), None)
    return None


def _inputs_task(x: torch.Tensor | None) -> str | None:
    if x is None:
        return None
    if not (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        return "lm"  # integer inputs are token ids
    return "image" if x.ndim == 4 else None


def _declared_inputs(model: nn.Module) -> Any:
    """What the model declares about its input (timm ``pretrained_cfg``, transformers ``config``), or None."""
    try:
        return default_example_inputs(model)
    except ExampleInputError:
        return None


def _graph_task(graph: Graph) -> str | None:
    ops = {graph.nodes[d].op for s, d in graph.edges if s == 0}  # the ops the input feeds
    if "embedding" in ops:
        return "lm"
    return "image" if ops & {"conv", "dw_conv"} else None


#: the layers that can be a model's first (input-facing) one, for model_task's last resort
_EMBEDDINGS = (nn.Embedding, nn.EmbeddingBag)
_FIRST_LAYERS = (*_EMBEDDINGS, nn.modules.conv._ConvNd, nn.Linear)


def model_task(model: nn.Module, example_inputs: ExampleInputs = None, *, graph: Graph | None = None) -> str | None:
    """Tell a model's task: ``"lm"`` (it reads token ids), ``"image"`` (float ``(B, C, H, W)`` images) or None.

    Evidence, first that decides: the example inputs (integer → lm, 4-D float → image; integer
    ``decoder_input_ids`` → lm: speech to text); the graph (the input feeds an embedding → lm, a conv → image); the
    inputs the model declares (timm, transformers); its first layer (the first ``nn.Embedding`` /
    ``nn.EmbeddingBag`` / conv / ``nn.Linear`` in module order: an embedding → lm, ``nn.Conv2d`` → image). This is
    the package's one rule for a token model: ``ghn-predict`` feeds token ids exactly to "lm" models.

    Example:
        >>> model_task(timm.create_model("resnet18")), model_task(GPT2LMHeadModel(GPT2Config()))
        ('image', 'lm')
    """
    if callable(example_inputs) and not isinstance(example_inputs, torch.Tensor | nn.Module):
        example_inputs = example_inputs()
    task = _inputs_task(_main_input(example_inputs))
    if task is None and isinstance(example_inputs, dict):  # an encoder-decoder that writes tokens (speech to text)
        task = _inputs_task(example_inputs.get("decoder_input_ids"))
    if task is None and graph is not None:
        task = _graph_task(graph)
    if task is None:
        task = _inputs_task(_main_input(_declared_inputs(model)))
    if task is None:  # norms, scales and other free parameters before the first layer say nothing
        first = next((m for m in model.modules() if isinstance(m, _FIRST_LAYERS)), None)
        task = "lm" if isinstance(first, _EMBEDDINGS) else "image" if isinstance(first, nn.Conv2d) else None
    return task


def training_inputs(config: GHNConfig, model: nn.Module) -> torch.Tensor | None:
    """Example inputs shaped like the GHN's training data, for a model of its task; None if there are none.

    Image GHNs: zeros ``(2, *input_shape)`` (tracing needs shapes, not values), unless the model declares token
    inputs. LM GHNs: token ids ``(2, T)`` below ``vocab_size``, only for models that declare nothing (a
    transformers model's own inputs also set its attention mask and cache options).
    """
    task, shape = ghn_task(config), config.input_shape
    declared = _declared_inputs(model)
    if task == "image" and shape and len(shape) == 3:
        if _inputs_task(_main_input(declared)) == "lm":
            return None
        dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        return torch.zeros(2, *shape, dtype=dtype)
    if task == "lm" and declared is None and model_task(model) in (None, "lm"):
        t = shape[0] if shape and len(shape) == 1 else 8
        return (torch.arange(2 * t) % (config.vocab_size or 2)).reshape(2, t)
    return None


def graph_for(config: GHNConfig, model: nn.Module, example_inputs: ExampleInputs = None,
              max_hops: int | None = None) -> tuple[Graph, Any]:
    """Build the graph a GHN of ``config`` predicts ``model`` from; returns ``(graph, the inputs traced with)``.

    Without ``example_inputs``: the GHN's training input (:func:`training_inputs`) if the model runs on it, else
    what the model declares, else :class:`~ghn.errors.ExampleInputError` asking for inputs.
    """
    hops = {} if max_hops is None else {"max_hops": max_hops}
    if callable(example_inputs) and not isinstance(example_inputs, torch.Tensor | nn.Module):
        example_inputs = example_inputs()
    if example_inputs is None:
        mine = training_inputs(config, model)
        if mine is not None:
            try:
                return build_graph(model, mine, **hops), mine
            except ExampleInputError:
                if _declared_inputs(model) is None:
                    raise
                logger.info("%s does not run on this GHN's training input %s; tracing with its declared input",
                            type(model).__name__, tuple(mine.shape))
        example_inputs = _declared_inputs(model)
    return build_graph(model, example_inputs, **hops), example_inputs


def _num_outputs(graph: Graph) -> int | None:
    """Output width of the classifier (:func:`~ghn.prediction.classifier_nodes`); None for a model without one
    (hidden states or features are no classes), or with several heads of different widths."""
    widths = {graph.nodes[i].shape[0] for i in classifier_nodes(graph)}
    return widths.pop() if len(widths) == 1 else None


def _vocab(graph: Graph) -> int | None:
    """Rows of the embedding the input feeds (the token vocabulary)."""
    node = next((graph.nodes[d] for s, d in graph.edges if s == 0 and graph.nodes[d].op == "embedding"), None)
    return node.shape[0] if node is not None else None


def _ghn_domain(config: GHNConfig, task: str) -> str:
    if task == "image":
        shape = "x".join(map(str, config.input_shape)) if config.input_shape else "unknown shape"
        return f"image classification ({shape}, {config.num_classes or 'unknown'} classes)"
    return f"language modelling (vocabulary {config.vocab_size or 'unknown'})"


def domain_mismatches(config: GHNConfig, model: nn.Module, graph: Graph, example_inputs: Any = None, *,
                      check_classes: bool = True) -> list[str]:
    """How ``model`` differs from what a GHN of ``config`` was trained on; one sentence (with the fix) per
    difference, empty when the GHN's task is unknown or everything matches.

    Args:
        graph: the model's graph; example_inputs: the inputs it was traced with (None: input shape not checked).
        check_classes: compare the classifier's width with ``num_classes`` (off for ``classifier="reinit"``).
    """
    task = ghn_task(config)
    if task is None:
        return []
    name = type(model).__name__
    have = model_task(model, example_inputs, graph=graph)
    if have is not None and have != task:
        return [f"{name} is {_TOKEN_MODEL if have == 'lm' else _IMAGE_MODEL}, but this GHN was trained on "
                f"{_ghn_domain(config, task)}: its predictions are out of domain. Use a GHN trained on "
                f"{TASKS[have]} ({SHIPPED_PREDICTORS[have]}, or train one: {TRAIN_HINT[have]})"]
    out = []
    x = _main_input(example_inputs)
    if task == "image":
        want = tuple(config.input_shape or ())
        if x is not None and want and tuple(x.shape[1:]) != want:
            out.append(f"{name} takes inputs of shape {tuple(x.shape[1:])}, but this GHN was trained on {want}: pass "
                       f"example_inputs of shape (B, {', '.join(map(str, want))}) if the model takes them, or train a "
                       f"GHN for this shape ({TRAIN_HINT['image']})")
        n = _num_outputs(graph)
        if check_classes and n and config.num_classes and n != config.num_classes:
            out.append(f"{name} has {n} outputs, but this GHN was trained with {config.num_classes} classes: pass "
                       "classifier='reinit' to keep the model's own classifier initialisation")
    else:
        v = _vocab(graph)
        if v and config.vocab_size and v != config.vocab_size:
            out.append(f"{name} has a vocabulary of {v} tokens, but this GHN was trained on {config.vocab_size}: "
                       f"train a GHN on this vocabulary ({TRAIN_HINT['lm']} --tokenizer DIR)")
    return out


def warn_domain(config: GHNConfig, model: nn.Module, graph: Graph, example_inputs: Any = None, *,
                check_classes: bool = True, stacklevel: int = 3) -> list[str]:
    """Warn with :class:`~ghn.errors.DomainWarning` if :func:`domain_mismatches` finds any; returns them."""
    found = domain_mismatches(config, model, graph, example_inputs, check_classes=check_classes)
    if found:
        warnings.warn("; ".join(found), DomainWarning, stacklevel=stacklevel)
    return found
