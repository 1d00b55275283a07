"""Tasks: what data an arch sees during meta-training and how its loss is computed from predicted parameters.

A task owns its data stream, the model_zoo constraints that make sampled archs fit its data (input shape and
classes, or vocabulary and context length), and the loss of one arch run *functionally* with predicted parameters:
``torch.func.functional_call(model, {**params, **buffers}, (x,))``. Nothing is copied into the module, so the
loss stays differentiable with respect to the GHN.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .config import TrainConfig
from .data import ImageStream, TextStream

__all__ = ["Task", "ImageTask", "LMTask", "make_task", "run_functional", "task_constraints", "zoo_constraints"]

IMAGE_SHAPE = (1, 28, 28)
NUM_CLASSES = 10
VOCAB_SIZE = 256  # byte-level tokens (see train.data)


def run_functional(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with ``params`` in place of its parameters; returns the logits tensor.

    The model's own buffers are passed explicitly (BatchNorm statistics update in place, as in ``model(x)``);
    parameters the GHN did not predict fall back to the module's own tensors. Tied parameters are handled by
    functional_call (``tie_weights=True``). Hugging Face models return an output object: its ``logits`` is used.
    """
    out = functional_call(model, {**params, **dict(model.named_buffers())}, (x,))
    return out.logits if hasattr(out, "logits") else out


class Task:
    """Base class. Subclasses set ``name`` and implement :meth:`batch` and :meth:`loss`."""

    name = ""

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared data batch of ``step`` (inputs, targets), on CPU."""
        raise NotImplementedError

    def loss(self, model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
             y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar task loss of ``model`` run with ``params`` on ``(x, y)``, plus float metrics to log."""
        raise NotImplementedError



class ImageTask(Task):
    """Fashion-MNIST classification: cross-entropy of ``(B, 10)`` logits; logs top-1 accuracy on the batch."""

    name = "image"

    def __init__(self, cfg: TrainConfig, rank: int = 0):
        self.stream = ImageStream(cfg.batch_size, cfg.seed, rank, cfg.data_dir)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stream.batch(step)

    def loss(self, model, params, x, y):
        logits = run_functional(model, params, x).float()  # (B, 10); fp32 loss also under bf16 autocast
        loss = F.cross_entropy(logits, y)
        return loss, {"acc": (logits.argmax(1) == y).float().mean().item() * 100}


class LMTask(Task):
    """Causal byte-level language modelling on fortunes: next-byte cross-entropy of ``(B, T, 256)`` logits."""

    name = "lm"

    def __init__(self, cfg: TrainConfig, rank: int = 0):
        self.stream = TextStream(cfg.batch_size, cfg.seq_len, cfg.seed, rank, cfg.data_dir)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stream.batch(step)

    def loss(self, model, params, x, y):
        logits = run_functional(model, params, x).float()  # (B, T, 256)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        return loss, {"bits_per_byte": loss.item() / 0.6931471805599453}


def task_constraints(cfg: TrainConfig) -> dict[str, Any]:
    """model_zoo sampler constraints every arch of ``cfg.task`` needs to fit its data."""
    if cfg.task == "image":
        return dict(input_shape=IMAGE_SHAPE, num_classes=NUM_CLASSES)
    return dict(vocab_size=VOCAB_SIZE, seq_len=cfg.seq_len)


def zoo_constraints(cfg: TrainConfig) -> dict[str, Any]:
    """Sampler constraints of a run: the task's shapes, the size limit, then the user's extra constraints.

    ``cfg.zoo_constraints`` is either shared by all families (``{max_depth: 4}``) or per family
    (``{cnn: {max_nodes: 2}, vit: {max_tokens: 49}}``, when every key is a model_zoo family), as model_zoo's
    ArchDataset takes them; per-family entries of families the run does not sample are ignored. The result is
    per family when the input is.
    """
    from model_zoo import list_families

    base = {**task_constraints(cfg), "max_params": cfg.max_params}
    extra = cfg.zoo_constraints
    if extra and set(extra) <= set(list_families()):
        return {f: {**base, **extra.get(f, {})} for f in cfg.families}
    return {**base, **extra}


def make_task(cfg: TrainConfig, rank: int = 0) -> Task:
    """The task named by ``cfg.task`` with its data stream for ``rank``."""
    return {"image": ImageTask, "lm": LMTask}[cfg.task](cfg, rank)
