"""Registries, timm style: named archs and the verbs over families (the family table is in ``families.py``).

Verbs: :func:`list_archs` (fnmatch patterns), :func:`create_arch` (a named arch with overrides),
:func:`sample_arch` (a seeded random arch of a family) and the :func:`register_arch` decorator.
All of them return :class:`~model_zoo.spec.ArchSpec` (JSON), never modules: call ``spec.build()`` for the model.
"""
from __future__ import annotations

import fnmatch
import inspect
import random
from typing import Any, Callable

from torch import nn

from ghn.errors import ConfigError

from .families import Family, get_family, list_families, register_family, unknown_name
from .spec import ArchSpec, count_params

__all__ = ["Family", "register_family", "get_family", "list_families", "register_arch", "list_archs",
           "create_arch", "sample_arch", "sample_within"]


_ARCHS: dict[str, Callable[[], ArchSpec]] = {}


def register_arch(fn: Callable[[], ArchSpec]) -> Callable[[], ArchSpec]:
    """Decorator: register ``fn`` (no arguments, returns an ArchSpec) under ``fn.__name__``.

    Example:
        >>> @register_arch
        ... def my_cnn() -> ArchSpec:
        ...     return ArchSpec("cnn", dict(...))
    """
    _ARCHS[fn.__name__] = fn
    return fn


def list_archs(pattern: str | list[str] = "*", exclude: str | list[str] = ()) -> list[str]:
    """Sorted names of registered archs matching any fnmatch ``pattern`` and no ``exclude`` pattern.

    Example:
        >>> list_archs("test_*")
        ['test_cnn', 'test_gpt', ...]
    """
    pats = [pattern] if isinstance(pattern, str) else list(pattern)
    excl = [exclude] if isinstance(exclude, str) else list(exclude)
    return sorted(n for n in _ARCHS if any(fnmatch.fnmatch(n, p) for p in pats)
                  and not any(fnmatch.fnmatch(n, p) for p in excl))


def create_arch(name: str, seed: int | None = None, **overrides: Any) -> ArchSpec:
    """The registered arch ``name``, with hparams ``overrides`` (``None`` values are ignored, as in timm).

    Args:
        name: a name from :func:`list_archs`.
        seed: replaces the spec's seed (weight init of ``build()``) when given.
        **overrides: hparams to replace; each must already be a key of the arch's hparams.
    Returns:
        ArchSpec; ``create_arch("test_cnn").build()`` gives the model.
    Raises:
        ConfigError: unknown name or unknown hparam key (the message lists the valid ones).
    """
    try:
        fn = _ARCHS[name]
    except KeyError:
        raise unknown_name("arch", name, list(_ARCHS)) from None
    spec = fn()
    overrides = {k: v for k, v in overrides.items() if v is not None}
    bad = sorted(set(overrides) - set(spec.hparams))
    if bad:
        raise ConfigError(f"create_arch({name!r}): unknown hparams {bad}; valid: {sorted(spec.hparams)}")
    return ArchSpec(spec.family, {**spec.hparams, **overrides}, spec.seed if seed is None else seed, spec.task)


def sample_arch(family: str, seed: int = 0, **constraints: Any) -> ArchSpec:
    """A random arch of ``family``, a pure function of ``(family, seed, constraints)``.

    Args:
        family: one of :func:`list_families` ("cnn", "vit", "mlp", "realnet", "timm", "gpt", "llama", "nanolm", "neox",
            "phi_gemma", "torchlm").
        seed: sampling seed (any int).
        **constraints: the family sampler's keywords, e.g. ``max_params``, ``min_params``, ``max_depth``,
            ``input_shape=(1, 28, 28)``, ``num_classes=10`` (image) or ``vocab_size``, ``seq_len`` (lm).
    Raises:
        ConfigError: unknown family or constraint, or constraints no arch of the family satisfies.
    Example:
        >>> spec = sample_arch("cnn", seed=0, max_params=200_000, input_shape=(1, 28, 28), num_classes=10)
    """
    fam = get_family(family)
    try:
        inspect.signature(fam.sample).bind(None, **constraints)
    except TypeError:
        valid = [p for p in inspect.signature(fam.sample).parameters if p != "rng"]
        raise ConfigError(f"family {family!r} takes constraints {valid}; got {sorted(constraints)}") from None
    # A string seed makes the streams of different families independent (random.Random hashes str with sha512).
    rng = random.Random(f"model_zoo/{family}/{int(seed)}")
    return ArchSpec(family, fam.sample(rng, **constraints), seed, fam.task)


def sample_within(rng: random.Random, propose: Callable[[random.Random], dict], build: Callable[[dict], nn.Module],
                  min_params: int | None, max_params: int | None, tries: int = 200, what: str = "arch",
                  lower_bound: Callable[[dict], int] | None = None) -> dict:
    """Rejection-sample ``propose(rng)`` until its meta-built model has ``min_params <= n <= max_params``.

    Args:
        lower_bound: optional cheap lower bound on a proposal's parameter count; proposals whose bound exceeds
            ``max_params`` are dropped without building them (up to ``20 * tries`` of them).
    Raises:
        ConfigError: no proposal fits after ``tries`` attempts (the bounds are probably too tight).
    """
    import torch

    seen: list[int] = []
    skipped = 0
    while len(seen) < tries:
        hp = propose(rng)
        if min_params is None and max_params is None:
            return hp
        if lower_bound is not None and max_params is not None and skipped < 20 * tries:
            bound = lower_bound(hp)
            if bound > max_params:
                skipped += 1
                continue
        with torch.device("meta"):
            n = count_params(build(hp))
        if (min_params is None or n >= min_params) and (max_params is None or n <= max_params):
            return hp
        seen.append(n)
    raise ConfigError(f"no {what} with {min_params} <= params <= {max_params} in {tries} tries "
                      f"(sampled sizes ranged {min(seen)}..{max(seen)}, {skipped} more were too large); "
                      "widen min_params/max_params")
