"""The family table: which families exist, how each samples hparams and builds a model.

Kept apart from :mod:`model_zoo.registry` so that :mod:`model_zoo.spec` (``ArchSpec.build`` looks its family up
here) and the registry (whose verbs return ``ArchSpec``) do not import each other.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Callable

from torch import nn

from ghn.errors import ConfigError

__all__ = ["Family", "register_family", "get_family", "list_families", "unknown_name"]


@dataclass(frozen=True)
class Family:
    """One architecture family.

    Args:
        name: registry key, also ``ArchSpec.family``.
        task: "image" or "lm".
        sample: ``sample(rng: random.Random, **constraints) -> hparams`` (JSON-able dict that ``build`` accepts).
        build: ``build(hparams) -> nn.Module``; called inside ``with torch.device(...)`` so it must create
            tensors on the current default device (plain ``nn.Module`` constructors do).
    """

    name: str
    task: str
    sample: Callable[..., dict]
    build: Callable[[dict], nn.Module]


_FAMILIES: dict[str, Family] = {}


def unknown_name(kind: str, name: str, choices: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, choices, n=3)
    hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
    return ConfigError(f"unknown {kind} {name!r}{hint} (choices: {', '.join(sorted(choices))})")


def register_family(name: str, *, task: str, sample: Callable[..., dict],
                    build: Callable[[dict], nn.Module]) -> Family:
    """Register (or replace) a family; returns it."""
    fam = Family(name, task, sample, build)
    _FAMILIES[name] = fam
    return fam


def get_family(name: str) -> Family:
    """The registered family ``name``. Raises ConfigError (with the nearest names) when unknown."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise unknown_name("arch family", name, list(_FAMILIES)) from None


def list_families() -> list[str]:
    """Registered family names, sorted."""
    return sorted(_FAMILIES)
