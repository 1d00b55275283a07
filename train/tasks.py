"""Tasks: what data an arch sees during meta-training and how its loss is computed from predicted parameters.

A task owns its data (a :mod:`train.datasets` source and its stream), the model_zoo constraints that make sampled
archs fit that data (input shape and classes, or vocabulary and context length, read from the data), the metadata
the trained GHN records about it, and the loss of one arch run *functionally* with predicted parameters:
``torch.func.functional_call(model, {**params, **buffers}, (x,))``. Nothing is copied into the module, so the
loss stays differentiable with respect to the GHN.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ghn.errors import ConfigError

from .config import TrainConfig
from .datasets import ImageEvalData, ImageSource, TextSource, open_source
from .streams import ImageStream, TextStream

__all__ = ["Task", "ImageTask", "LMTask", "make_task", "logits_of", "run_functional", "task_constraints",
           "zoo_constraints"]


def logits_of(out: Any) -> torch.Tensor:
    """A model's logits: Hugging Face models return an output object with ``.logits``, plain modules the tensor."""
    return out.logits if hasattr(out, "logits") else out


def run_functional(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``model(x)`` with ``params`` in place of its parameters; returns the logits tensor.

    The model's own buffers are passed explicitly (BatchNorm statistics update in place, as in ``model(x)``);
    parameters the GHN did not predict fall back to the module's own tensors. Tied parameters are handled by
    functional_call (``tie_weights=True``). Hugging Face models return an output object: its ``logits`` is used.
    """
    return logits_of(functional_call(model, {**params, **dict(model.named_buffers())}, (x,)))


class Task:
    """Base class. Subclasses set ``name`` and ``source`` and implement :meth:`batch`, :meth:`loss`,
    :meth:`constraints`, :meth:`metadata` and :meth:`eval_data`."""

    name = ""
    source: ImageSource | TextSource

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The shared data batch of ``step`` (inputs, targets), on CPU."""
        raise NotImplementedError

    def loss(self, model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
             y: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Scalar task loss of ``model`` run with ``params`` on ``(x, y)``, plus float metrics to log."""
        raise NotImplementedError

    def constraints(self) -> dict[str, Any]:
        """model_zoo sampler constraints that make an arch fit this task's data."""
        raise NotImplementedError

    def metadata(self) -> dict[str, Any]:
        """GHNConfig fields describing the data (written to the trained GHN's config.json)."""
        raise NotImplementedError

    def eval_data(self, n: int) -> dict[str, Any]:
        """Keyword arguments of :func:`train.evaluate.evaluate_archs` for this data (``n`` test images)."""
        raise NotImplementedError


class ImageTask(Task):
    """Image classification (Fashion-MNIST by default): cross-entropy of ``(B, num_classes)`` logits; logs top-1
    accuracy on the batch."""

    name = "image"

    def __init__(self, cfg: TrainConfig, rank: int = 0, source: ImageSource | None = None):
        self.source = source if source is not None else open_source(cfg)
        self.stream = ImageStream(cfg.batch_size, cfg.seed, rank, source=self.source)
        self._eval: dict[int, Any] = {}

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stream.batch(step)

    def loss(self, model, params, x, y):
        logits = run_functional(model, params, x).float()  # (B, 10); fp32 loss also under bf16 autocast
        loss = F.cross_entropy(logits, y)
        return loss, {"acc": (logits.argmax(1) == y).float().mean().item() * 100}

    def constraints(self) -> dict[str, Any]:
        return dict(input_shape=tuple(self.source.input_shape), num_classes=self.source.num_classes)

    def metadata(self) -> dict[str, Any]:
        s = self.source
        return dict(task="image", input_shape=list(s.input_shape), num_classes=s.num_classes, vocab_size=None,
                    input_mean=s.mean, input_std=s.std)

    def eval_data(self, n: int) -> dict[str, Any]:
        if n not in self._eval:  # loaded once per run (image folders decode files)
            self._eval[n] = ImageEvalData.from_source(self.source, n)
        return {"image_data": self._eval[n]}


class LMTask(Task):
    """Causal language modelling (fortunes bytes by default): next-token cross-entropy of ``(B, T, vocab)``
    logits."""

    name = "lm"

    def __init__(self, cfg: TrainConfig, rank: int = 0, source: TextSource | None = None):
        self.source = source if source is not None else open_source(cfg)
        self.seq_len = cfg.seq_len
        self.stream = TextStream(cfg.batch_size, cfg.seq_len, cfg.seed, rank, source=self.source)

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.stream.batch(step)

    def loss(self, model, params, x, y):
        logits = run_functional(model, params, x).float()  # (B, T, vocab)
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        # bits per token: per byte when the tokens are bytes
        return loss, {"bits_per_byte" if self.source.tokenizer is None else "bits_per_token":
                      loss.item() / 0.6931471805599453}

    def constraints(self) -> dict[str, Any]:
        return dict(vocab_size=self.source.vocab_size, seq_len=self.seq_len)

    def metadata(self) -> dict[str, Any]:
        return dict(task="lm", input_shape=[self.seq_len], vocab_size=self.source.vocab_size, num_classes=None,
                    input_mean=None, input_std=None)

    def eval_data(self, n: int) -> dict[str, Any]:
        return {"lm_val": self.source.val}


def task_constraints(cfg: TrainConfig, source: ImageSource | TextSource | None = None) -> dict[str, Any]:
    """model_zoo sampler constraints every arch of ``cfg.task`` needs to fit its data: the input shape and class
    count of the images, or the vocabulary of the text and ``cfg.seq_len`` (``source``: the opened data; None
    opens ``cfg.dataset``)."""
    source = source if source is not None else open_source(cfg)
    if source.task == "image":
        return dict(input_shape=tuple(source.input_shape), num_classes=source.num_classes)
    return dict(vocab_size=source.vocab_size, seq_len=cfg.seq_len)


def zoo_constraints(cfg: TrainConfig, source: ImageSource | TextSource | None = None) -> dict[str, Any]:
    """Sampler constraints of a run: the data's shapes, the size limit, then the user's extra constraints.

    ``cfg.zoo_constraints`` is either shared by all families (``{max_depth: 4}``) or per family
    (``{cnn: {max_nodes: 2}, vit: {max_tokens: 49}}``, when every key is a model_zoo family), as model_zoo's
    ArchDataset takes them; per-family entries of families the run does not sample are ignored. The result is
    per family when the input is.
    """
    from model_zoo import list_families

    base = {**task_constraints(cfg, source), "max_params": cfg.max_params}
    extra = cfg.zoo_constraints
    if extra and set(extra) <= set(list_families()):
        return {f: {**base, **extra.get(f, {})} for f in cfg.families}
    return {**base, **extra}


def make_task(cfg: TrainConfig, rank: int = 0, source: ImageSource | TextSource | None = None) -> Task:
    """The task named by ``cfg.task`` with its data stream for ``rank`` (``source``: the data, already opened;
    None opens ``cfg.dataset``)."""
    if source is not None and source.task != cfg.task:
        raise ConfigError(f"the data is for task {source.task!r} but the config says task {cfg.task!r}")
    return {"image": ImageTask, "lm": LMTask}[cfg.task](cfg, rank, source)
