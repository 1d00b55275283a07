"""The op vocabulary and the module → op registry.

Every graph node has one op from :data:`OPS`. Ids are frozen: a trained GHN embeds ops by id, so new ops are
only ever appended to the end of the tuple.

Two tables decide a node's op:

* modules that own parameters are looked up by type (walking the MRO, so subclasses inherit) in a registry
  that users extend with :func:`register_op`, with a fallback on class-name patterns (``*RMSNorm`` → ``rms_norm``)
  so that the many look-alike classes of timm and transformers need no registration;
* parameter-free ops are named from the autograd function that ran them (``ReluBackward0`` → ``relu``);
  autograd functions that only move data around (views, casts, indexing) are not ops and are collapsed.
"""
from __future__ import annotations

import difflib
import re
from typing import Callable

import torch.nn as nn

from .errors import ConfigError

__all__ = ["OPS", "OP_ID", "PARAM_OPS", "register_op", "module_op", "autograd_op", "SKIP"]

OPS: tuple[str, ...] = (
    # graph boundary
    "input", "output",
    # ops that own a weight matrix / kernel
    "conv", "dw_conv", "conv_transpose", "linear", "embedding",
    # normalisation
    "batch_norm", "layer_norm", "group_norm", "rms_norm", "instance_norm",
    # free parameters (a node of their own, feeding the op that uses them)
    "pos_embed", "cls_token", "layer_scale", "rel_pos_bias", "free_param",
    # parameter-free ops that shape the flow
    "add", "mul", "cat", "matmul", "attention", "softmax",
    "relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "activation",
    "max_pool", "avg_pool", "mean",
    # a module of unknown type that owns parameters
    "module",
)
OP_ID: dict[str, int] = {op: i for i, op in enumerate(OPS)}

#: normalisation ops (their weight is a gain, their bias a shift).
NORM_OPS = frozenset({"batch_norm", "layer_norm", "group_norm", "rms_norm", "instance_norm"})

#: ops whose module binds weight (and bias) parameters to a single node.
PARAM_OPS = frozenset({
    "conv", "dw_conv", "conv_transpose", "linear", "embedding",
    "batch_norm", "layer_norm", "group_norm", "rms_norm", "instance_norm",
})

#: returned by the registry for module types whose parameters the user asked to leave alone.
SKIP = "skip"

OpRule = str | Callable[[nn.Module], str]


def _conv_op(m: nn.Module) -> str:
    # A depthwise conv (one input channel per group) behaves very differently from a dense one.
    groups, c_in = getattr(m, "groups", 1), getattr(m, "in_channels", 0)
    return "dw_conv" if groups > 1 and groups == c_in else "conv"


_REGISTRY: dict[type, OpRule] = {
    nn.Conv1d: _conv_op, nn.Conv2d: _conv_op, nn.Conv3d: _conv_op,
    nn.ConvTranspose1d: "conv_transpose", nn.ConvTranspose2d: "conv_transpose", nn.ConvTranspose3d: "conv_transpose",
    nn.Linear: "linear", nn.Bilinear: "linear", nn.Embedding: "embedding", nn.EmbeddingBag: "embedding",
    nn.modules.batchnorm._BatchNorm: "batch_norm",
    nn.LayerNorm: "layer_norm", nn.GroupNorm: "group_norm", nn.RMSNorm: "rms_norm",
    nn.modules.instancenorm._InstanceNorm: "instance_norm",
    nn.MultiheadAttention: "attention",
}

# Class-name patterns for look-alikes in timm / transformers / user code (checked after the registry).
_NAME_PATTERNS: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(p, re.I), op) for p, op in (
        (r"rmsnorm", "rms_norm"),
        (r"batchnorm|bnact|frozenbn", "batch_norm"),
        (r"groupnorm", "group_norm"),
        (r"layernorm|^ln\d*$|^norm$", "layer_norm"),
        (r"^conv1d$", "linear"),  # transformers.pytorch_utils.Conv1D: a linear layer with a (in, out) weight
        (r"conv", "conv"),
        (r"linear", "linear"),
        (r"embedding", "embedding"),
    )
)


def register_op(module_type: type, op: OpRule | None) -> None:
    """Tell the graph builder which op a module type is.

    Args:
        module_type: an ``nn.Module`` subclass (subclasses of it inherit the rule).
        op: a name from :data:`OPS`, a callable ``module -> name``, or ``None`` to skip the module: its
            parameters keep their own initialisation and are listed in the coverage report as skipped.

    Raises:
        ConfigError: ``op`` is not a name from :data:`OPS` (the message suggests the closest ones).
        TypeError: ``module_type`` is not an ``nn.Module`` subclass.

    Example:
        >>> ghn.register_op(MyFancyNorm, "layer_norm")
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"register_op expects an nn.Module subclass, got {module_type!r}")
    if op is not None and not callable(op) and op not in OP_ID:
        close = difflib.get_close_matches(str(op), OPS, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(map(repr, close))}? " if close else ""
        raise ConfigError(f"unknown op {op!r} for register_op({module_type.__name__}, ...); {hint}choose one of "
                          f"{', '.join(OPS)} (or None to skip the module)")
    _REGISTRY[module_type] = SKIP if op is None else op


def module_op(module: nn.Module) -> str | None:
    """The op of a module, or ``None`` if neither the registry nor a name pattern knows its type."""
    for cls in type(module).__mro__:
        rule = _REGISTRY.get(cls)
        if rule is not None:
            return rule(module) if callable(rule) else rule
    name = type(module).__name__
    for pattern, op in _NAME_PATTERNS:
        if pattern.search(name):
            return _conv_op(module) if op == "conv" else op
    return None


# Autograd function names (without the trailing "Backward<N>") → op. Anything else is collapsed.
_AUTOGRAD_OPS: dict[str, str] = {
    "Convolution": "conv", "ConvolutionBackward": "conv",
    "Addmm": "linear", "Linear": "linear",
    "Embedding": "embedding",
    "NativeBatchNorm": "batch_norm", "CudnnBatchNorm": "batch_norm", "NativeLayerNorm": "layer_norm",
    "NativeGroupNorm": "group_norm", "FusedRmsNorm": "rms_norm",
    "Add": "add", "Sub": "add", "Mul": "mul", "Div": "mul", "Cat": "cat", "Stack": "cat",
    "Mm": "matmul", "Bmm": "matmul", "Matmul": "matmul", "Baddbmm": "matmul",
    "Softmax": "softmax", "LogSoftmax": "softmax",
    "Relu": "relu", "Relu6": "relu", "Hardtanh": "relu", "Threshold": "relu",
    "Gelu": "gelu", "Silu": "silu", "Sigmoid": "sigmoid", "Tanh": "tanh",
    "Hardswish": "hardswish", "Hardsigmoid": "activation", "LeakyRelu": "activation", "Elu": "activation",
    "Mish": "activation", "Softplus": "activation", "Prelu": "activation", "PreluKernel": "activation",
    "MaxPool2DWithIndices": "max_pool", "MaxPool3DWithIndices": "max_pool", "MaxPool1DWithIndices": "max_pool",
    "AvgPool2D": "avg_pool", "AvgPool3D": "avg_pool", "AdaptiveAvgPool2D": "avg_pool",
    "AdaptiveAvgPool3D": "avg_pool", "AdaptiveMaxPool2D": "max_pool",
    "Mean": "mean", "Sum": "mean",
}
_ATTENTION = re.compile(r"ScaledDotProduct|Attention", re.I)
_BINARY = frozenset({"add", "mul", "cat", "matmul"})
_SUFFIX = re.compile(r"Backward\d*$")


def autograd_op(fn_name: str, n_tensor_inputs: int) -> str | None:
    """Map an autograd function's class name to an op, or ``None`` if it only moves data (collapsed).

    Binary ops with a single tensor input (``x + 1``, ``x * 0.5``) are arithmetic on a constant and collapse too.
    """
    base = _SUFFIX.sub("", fn_name)
    op = _AUTOGRAD_OPS.get(base)
    if op is None and _ATTENTION.search(base):
        op = "attention"
    if op in _BINARY and n_tensor_inputs < 2:
        return None
    return op
