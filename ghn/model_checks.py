"""What a GHN can predict into: a plain ``nn.Module`` holding float ``nn.Parameter`` tensors.

:func:`check_model` is the entry check of every public function that takes a model (:func:`ghn.build_graph`,
:meth:`GHN.predict`, :meth:`GHN.predict_params`). It refuses, before anything runs or changes, the things that look
like a model but whose parameters the graph builder cannot reach or a prediction could not be written into, each
with a typed error that says what to pass instead:

* not a module at all (a state dict, a list of models, the class ``nn.Linear``): :class:`NotAModuleError`;
* a data-parallel wrapper (``nn.DataParallel``, ``DistributedDataParallel``): :class:`UnsupportedModuleError` asking
  for ``model.module``. It is refused, not unwrapped: the wrapper names every parameter ``module.<name>``, so a
  prediction keyed by the inner names would not load into it, and a DDP replica predicted alone would diverge from
  the others;
* a TorchScript module (``torch.jit.script`` / ``torch.jit.trace``): its parameters live in C++ and cannot be
  swapped for tracing; pass the original ``nn.Module`` (script it after predicting);
* a quantized model (``torch.ao.quantization.quantize_dynamic`` / ``convert``): its weights are packed integers, not
  parameters, so nothing would be predicted; predict the float model, then quantize it.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn as nn

from .errors import NotAModuleError, UnsupportedModuleError

__all__ = ["check_model"]

# Module namespaces of PyTorch's quantized (integer) layers: eager dynamic/static quantization and the fused
# intrinsic ones. QAT modules (``torch.ao.nn.qat``) are not here: they keep float weights and predict as usual.
_QUANTIZED_NAMESPACES = ("torch.ao.nn.quantized", "torch.nn.quantized", "torch.ao.nn.intrinsic.quantized",
                         "torch.nn.intrinsic.quantized")
_DATA_PARALLEL = (nn.DataParallel, nn.parallel.DistributedDataParallel)


def check_model(model: object, caller: str) -> None:
    """Raise unless ``model`` is an ``nn.Module`` a GHN can build a graph of and predict into.

    Args:
        model: what the user passed as the model.
        caller: the public function's name, used in messages (``"build_graph"``, ``"predict"``, ...).

    Raises:
        NotAModuleError: ``model`` is not an ``nn.Module`` (a state dict, a list, a class, a function, ...).
        UnsupportedModuleError: a data-parallel wrapper, a TorchScript module or a quantized model (anywhere in the
            module tree); the message names the module and what to pass instead.
    """
    if not isinstance(model, nn.Module):
        raise NotAModuleError(f"{caller} expects a torch.nn.Module, got {_describe(model)}")
    for path, module in model.named_modules():
        where = f"{path} ({type(module).__name__})" if path else type(module).__name__
        if isinstance(module, _DATA_PARALLEL):
            inner = "model.module" if not path else f"the model with {path} replaced by {path}.module"
            raise UnsupportedModuleError(
                f"{where} is a data-parallel wrapper, which {caller} cannot trace; pass {inner} instead (the wrapper "
                "shares its parameters, so it gets the prediction too)")
        if isinstance(module, torch.jit.ScriptModule):
            raise UnsupportedModuleError(
                f"{where} is a TorchScript module (torch.jit.script / torch.jit.trace), whose parameters ghn cannot "
                "trace; pass the original nn.Module, and script or trace it after predicting")
        if type(module).__module__.startswith(_QUANTIZED_NAMESPACES) or any(
                t.is_quantized for t in (*module.parameters(recurse=False), *module.buffers(recurse=False))):
            raise UnsupportedModuleError(
                f"{path or 'the model'} ({type(module).__module__}.{type(module).__name__}) is quantized: its "
                "weights are packed integers that ghn cannot predict; predict the float model, then quantize it "
                "(e.g. torch.ao.quantization.quantize_dynamic(ghn.predict(model), ...))")


def _describe(thing: object) -> str:
    """What ``thing`` is, and what to pass instead of it."""
    if isinstance(thing, type) and issubclass(thing, nn.Module):
        return (f"the class {thing.__module__}.{thing.__name__}; pass an instance of it, e.g. "
                f"{thing.__name__}(...)")
    if isinstance(thing, Mapping):
        return (f"a mapping ({type(thing).__name__}; a state dict?); pass the model object itself, e.g. the module "
                "whose state_dict() this is")
    if isinstance(thing, (list, tuple, set)):
        return f"a {type(thing).__name__}; pass one model at a time, e.g. [ghn.predict(m) for m in models]"
    return f"{type(thing).__name__}; pass the model object itself (e.g. timm.create_model(...))"
