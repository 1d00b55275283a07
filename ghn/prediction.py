"""Predicted parameters and how they are written into a model.

``Prediction`` is what :meth:`GHN.predict_params` returns; the functions below are the steps of
:meth:`GHN.predict`: check everything first, then write (so a failure leaves the model unchanged), then
optionally re-initialise the classifier and recalibrate BatchNorm statistics.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping

import torch
import torch.nn as nn

from .binding import CoverageReport
from .errors import ExampleInputError, GHNError
from .graph import Graph

__all__ = ["Prediction", "check_prediction", "write_params", "materialize", "reinit_classifier",
           "recalibrate_bn", "classifier_module"]

logger = logging.getLogger(__name__)


class Prediction(Mapping[str, torch.Tensor]):
    """Predicted tensors keyed by the model's canonical parameter names (fp32, on the GHN's device).

    Attributes:
        coverage: the :class:`~ghn.CoverageReport` (what was predicted, what was not and why).
        graph: the :class:`~ghn.Graph` the prediction was made from.
    """

    def __init__(self, params: dict[str, torch.Tensor], coverage: CoverageReport, graph: Graph):
        self._params = params
        self.coverage = coverage
        self.graph = graph

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._params[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._params)

    def __len__(self) -> int:
        return len(self._params)

    def __repr__(self) -> str:
        return f"Prediction({len(self)} tensors, {self.coverage.summary()})"

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors with tied aliases added back (loadable with ``model.load_state_dict(strict=False)``)."""
        out = dict(self._params)
        for alias, name in self.coverage.tied.items():
            if name in out:
                out[alias] = out[name]
        return out


def check_prediction(model: nn.Module, params: Mapping[str, torch.Tensor]) -> None:
    """Raise before anything is written if a tensor does not fit its parameter or is not finite."""
    own = dict(model.named_parameters())
    for name, t in params.items():
        if name not in own:
            raise GHNError(f"predicted tensor {name!r} is not a parameter of {type(model).__name__}; the graph was "
                           "built from another model — build it from this one")
        if tuple(own[name].shape) != tuple(t.shape):
            raise GHNError(f"predicted {name} has shape {tuple(t.shape)} but the model's is "
                           f"{tuple(own[name].shape)}; the graph was built from another model")
        if not torch.isfinite(t).all():
            raise GHNError(f"predicted {name} has non-finite values; the GHN checkpoint is broken (re-train or "
                           "re-download it)")


@torch.no_grad()
def write_params(model: nn.Module, params: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Copy tensors into the model's parameters in place (cast to their dtype, moved to their device)."""
    own = dict(model.named_parameters())
    for name, t in params:
        p = own[name]
        p.copy_(t.to(device=p.device, dtype=p.dtype))


def materialize(model: nn.Module, device: torch.device | str) -> list[str]:
    """Allocate a ``meta``-device model on ``device`` (uninitialised), re-creating the buffers we know how to.

    Returns:
        names of buffers that were on ``meta`` and could not be re-created (left zero).
    """
    meta_buffers = [n for n, b in model.named_buffers() if b.is_meta]
    model.to_empty(device=device)
    unknown = []
    for name, module in model.named_modules():
        own = [n for n, b in module.named_buffers(recurse=False) if f"{name}.{n}".lstrip(".") in meta_buffers]
        if not own:
            continue
        if hasattr(module, "reset_running_stats"):
            module.reset_running_stats()
        elif hasattr(module, "config") and not any(True for _ in module.parameters()):
            # e.g. transformers' rotary embeddings: buffers computed from the config in __init__; rebuild them
            with torch.device(device):
                fresh = type(module)(module.config)
            for n in own:
                getattr(module, n).copy_(getattr(fresh, n))
        else:
            for n in own:
                getattr(module, n).zero_()
            unknown += [f"{name}.{n}".lstrip(".") for n in own]
    return unknown


def classifier_module(model: nn.Module, graph: Graph) -> tuple[str, nn.Module] | None:
    """The last linear/conv module before the output (the classifier or LM head), if any."""
    for node in reversed(graph.nodes):
        if node.op in ("linear", "conv") and node.params and node.module:
            return node.module, model.get_submodule(node.module)
    return None


@torch.no_grad()
def reinit_classifier(model: nn.Module, graph: Graph) -> str | None:
    """Reset the classifier to its own default initialisation; returns its path (None if none was found)."""
    found = classifier_module(model, graph)
    if found is None or not hasattr(found[1], "reset_parameters"):
        return None
    found[1].reset_parameters()
    return found[0]


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Iterable, max_batches: int = 20) -> int:
    """Reset BatchNorm running statistics and recompute them as a cumulative average over ``data``.

    ``data`` yields inputs (a tensor, a tuple whose first item is the input, or a dict of keyword inputs).
    Returns the number of batches used.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bns}
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    n = 0
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch counts equally
        model.train()
        for batch in data:
            if n >= max_batches:
                break
            if isinstance(batch, dict):
                model(**{k: v.to(device) for k, v in batch.items()})
            else:
                x = batch[0] if isinstance(batch, tuple | list) else batch
                model(x.to(device))
            n += 1
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
    if n == 0:
        raise ExampleInputError("bn='recalibrate' needs data: bn_data yielded no batch; pass an iterable of "
                                "input batches (e.g. a DataLoader over training images)")
    return n
