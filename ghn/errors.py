"""Typed errors of the ghn package.

Each error subclasses :class:`GHNError` *and* the builtin it resembles, so callers can catch either
``GHNError`` (anything from this package) or the usual builtin (``ValueError``, ``OSError``, ...).
Messages always name the problem and the fix.
"""
from __future__ import annotations

__all__ = [
    "GHNError",
    "UnsupportedModuleError",
    "ExampleInputError",
    "CheckpointError",
    "ConfigError",
    "GraphError",
    "DeviceError",
    "DomainWarning",
    "UnverifiedWeightsWarning",
    "NotAModuleError",
    "OutputError",
]


class GHNError(Exception):
    """Base class of every error raised on purpose by ghn."""


class UnsupportedModuleError(GHNError, ValueError):
    """A module or parameter the graph builder cannot bind to an op.

    Example message: ``model.blocks.0.foo (mylib.Foo) owns parameter 'scale' of shape (3, 3, 3, 3, 3, 3)
    that no op accepts; register the module with ghn.register_op(mylib.Foo, "conv") or ...``
    """


class ExampleInputError(GHNError, ValueError):
    """The model could not be run on the example inputs (missing, wrong shape or dtype)."""


class CheckpointError(GHNError, OSError):
    """A GHN checkpoint is missing files, corrupt, non-finite or does not match its config."""


class ConfigError(GHNError, ValueError):
    """An unknown or invalid configuration key or value (GHNConfig, CLI flags, YAML files)."""


class GraphError(GHNError, ValueError):
    """A graph is malformed (e.g. loaded from a cache file written by another version)."""


class DeviceError(GHNError, RuntimeError):
    """A tensor is on a device (or in a dtype) the operation cannot use."""


class DomainWarning(UserWarning):
    """A GHN predicts a model outside the domain it was trained on (see ``ghn.domain``).

    Example message: ``GPT2LMHeadModel is a language model (token ids feed an nn.Embedding), but this GHN was
    trained on image classification (1x28x28, 10 classes): ... use a GHN trained on language models
    (checkpoints/ghn-fortunes) ...``
    """


class UnverifiedWeightsWarning(UserWarning):
    """A GHN checkpoint's config.json records no checksum of its weights, so corruption that leaves them finite
    (a flipped bit) cannot be detected; re-saving it with ``GHN.save_pretrained`` records one."""


class NotAModuleError(GHNError, TypeError):
    """``build_graph`` / ``predict`` got something that is not an ``nn.Module`` (e.g. a class, a state dict)."""


class OutputError(GHNError, OSError):
    """An output could not be written: a missing or read-only directory, a directory where a file name is expected,
    a full disk. Nothing partial is left behind."""
