"""Fuzz cases: ``make_case(index, seed)`` is a pure function of both (model weights included)."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn

from ghn import init_empty_weights
from ghn.errors import GHNError, UnsupportedModuleError

from .models import USER_BUILDERS as _USER
from .models import parametrized

__all__ = ["Case", "KINDS", "ZOO_FAMILIES", "USER_KINDS", "EXPECTED_ERRORS", "FAILURES", "make_case"]

ZOO_FAMILIES = ("cnn", "vit", "mlp", "gpt", "llama", "timm")
USER_KINDS = ("mlp", "resmlp", "cnn1d", "cnn2d", "cnn3d", "convt", "rawparam", "tied", "unused", "embed_attn",
              "skipped", "intparam", "complex", "nested", "shapes", "parametrized", "quantized", "scripted",
              "dataparallel")
KINDS = tuple(f"zoo:{f}" for f in ZOO_FAMILIES) + tuple(f"user:{k}" for k in USER_KINDS)
#: kinds ghn refuses on purpose, with the typed error each must raise (anything else from them is a failure)
EXPECTED_ERRORS: dict[str, type[GHNError]] = {
    "user:complex": UnsupportedModuleError,  # a complex parameter: skip the module with register_op(..., None)
    "user:quantized": UnsupportedModuleError,  # packed integer weights: predict the float model, then quantize
    "user:scripted": UnsupportedModuleError,  # TorchScript: pass the original nn.Module
    "user:dataparallel": UnsupportedModuleError,  # a wrapper: pass model.module
}
FAILURES = ("untyped", "unexpected_typed", "missing_error", "non_finite", "bad_shape", "bad_coverage", "bad_write",
            "meta_differs", "wrong_effective")


@dataclass
class Case:
    """One fuzz case: a model, its example inputs, and the typed error it must raise (None: must succeed)."""

    index: int
    kind: str
    model: nn.Module
    inputs: Any
    expect: type[GHNError] | None = None
    note: str = ""
    meta: bool = False
    build: str = "cpu"  # how a meta model was built: "meta" (torch.device) or "init_empty_weights"
    dtype: torch.dtype = torch.float32
    extra: dict = field(default_factory=dict)


# ---- zoo archs ----------------------------------------------------------------------------------------------------
_ZOO_CONSTRAINTS: dict[str, dict] = {
    "cnn": dict(max_params=60_000, max_depth=3, max_nodes=3),
    "vit": dict(max_params=60_000, max_depth=2),
    "mlp": dict(max_params=120_000),
    "gpt": dict(max_params=120_000, min_params=None, max_depth=2, vocab_size=64, seq_len=8),
    "llama": dict(max_params=120_000, min_params=None, max_depth=2, vocab_size=64, seq_len=8),
    "timm": dict(max_params=300_000),
}


def _cast_inputs(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, tuple | list):
        return type(x)(_cast_inputs(v, dtype) for v in x)
    if isinstance(x, dict):
        return {k: _cast_inputs(v, dtype) for k, v in x.items()}
    return x


def make_case(index: int, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> Case:
    """Case ``index`` of the stream ``seed``: a pure function of both (model weights included)."""
    r = random.Random(f"ghn-fuzz/{seed}/{index}")
    kind = kinds[index % len(kinds)] if r.random() < 0.5 else r.choice(kinds)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(r.randrange(2 ** 31))
        if kind.startswith("zoo:"):
            import model_zoo as mz
            family = kind[4:]
            spec = mz.sample_arch(family, seed=r.randrange(10 ** 6), **_ZOO_CONSTRAINTS[family])
            meta = r.random() < 0.5
            build = ("meta" if r.random() < 0.5 else "init_empty_weights") if meta else "cpu"
            if build == "init_empty_weights":
                with init_empty_weights():
                    model = spec.build(device="cpu")
            else:
                model = spec.build(device=build)
            return Case(index, kind, model, spec.example_inputs(), meta=meta, build=build,
                        note=spec.hparams.get("name", "") or f"{family} seed {spec.seed}",
                        extra={"twin": lambda: spec.build(device="cpu")})
        extra = {}
        if kind == "user:parametrized":
            model, inputs, extra["plain"] = parametrized(r)
        else:
            model, inputs = _USER[kind[5:]](r)
    dtype = torch.float32
    expect = EXPECTED_ERRORS.get(kind)
    if expect is None and r.random() < 0.15:
        dtype = r.choice((torch.float16, torch.bfloat16, torch.float64))
        model = model.to(dtype)
        inputs = _cast_inputs(inputs, dtype)
    return Case(index, kind, model, inputs, expect=expect, dtype=dtype, extra=extra)
