"""Tensors a module computes from other tensors at every forward: weight norm, spectral norm, and any
``torch.nn.utils.parametrize`` parametrization.

``torch.nn.utils.parametrizations.weight_norm(conv)`` moves ``conv.weight`` into ``g`` and ``v``
(``conv.parametrizations.weight.original0`` / ``original1``) and computes ``weight = g·v/‖v‖`` at each forward.
Predicting ``g`` and ``v`` as two free tensors gives a weight of the wrong size (``g`` comes out near 0), so ghn
instead binds and predicts the *effective* tensor ``conv.weight`` exactly as for the plain layer (same node, same
role), then writes the tensors it is computed from so that the module computes the prediction:

===============================================  ==============================================================
how the tensor is computed                       what is written
===============================================  ==============================================================
``parametrizations.weight_norm``                 ``original0 = ‖w‖`` (per output row), ``original1 = w``: exactly w
legacy ``torch.nn.utils.weight_norm`` hook       ``weight_g = ‖w‖``, ``weight_v = w``: exactly w
``parametrizations.spectral_norm``               ``original = w``, and ``_u``/``_v`` set to w's top singular vectors
                                                 (power iteration's fixed point): the module computes w / σ_max(w)
legacy ``torch.nn.utils.spectral_norm`` hook     ``weight_orig = w``, ``weight_u``/``weight_v`` as above
another parametrization with ``right_inverse``   what ``module.weight = w`` writes (``right_inverse``; for
                                                 ``orthogonal`` the nearest orthogonal matrix): its image of w
a parametrization without ``right_inverse``      nothing: the coverage lists its parameters as not predicted, and why
===============================================  ==============================================================

The values are computed on a copy of the parametrization (never in the model), so that :meth:`GHN.predict` can
check everything before writing, and :meth:`GHN.predict_params` returns the written tensors under the names
``model.state_dict()`` uses (``conv.parametrizations.weight.original0``, ``conv.weight_g``, ...), plus the buffers
it refreshes (``_u``/``_v``, orthogonal's ``base``) in ``Prediction.buffers``.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import sys
from collections.abc import Mapping
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize
from torch.nn.utils.parametrizations import _SpectralNorm, _WeightNorm

from .errors import UnsupportedModuleError

__all__ = ["Parametrized", "find_parametrized", "overriding", "effective_value", "write_through"]

# the legacy hooks live in modules that torch.nn.utils shadows with functions of the same names
_LegacyWeightNorm = sys.modules["torch.nn.utils.weight_norm"].WeightNorm
_LegacySpectralNorm = sys.modules["torch.nn.utils.spectral_norm"].SpectralNorm


@dataclasses.dataclass(frozen=True)
class Parametrized:
    """A tensor computed from others at each forward, predicted under its effective name.

    Attributes:
        name: the effective tensor, e.g. ``conv.weight``; bound to ``conv``'s node like a plain weight.
        module: path of the module that owns it (``conv``).
        attr: its attribute name there (``weight``).
        via: how it is computed: ``weight_norm``, ``spectral_norm`` or the parametrization classes' names.
        originals: the parameters written (full names, as in ``model.named_parameters()``).
        buffers: the buffers refreshed with them (full names, as in ``model.named_buffers()``).
        shape: the effective tensor's shape.
    """

    name: str
    module: str
    attr: str
    via: str
    originals: tuple[str, ...]
    buffers: tuple[str, ...] = ()
    shape: tuple[int, ...] = ()

    @property
    def how(self) -> str:
        """What is written, for the coverage report."""
        written = ", ".join(self.originals)
        if self.via == "weight_norm":
            return f"weight_norm: predicted as a plain {self.attr}, written as g=‖w‖, v=w ({written})"
        if self.via == "spectral_norm":
            return (f"spectral_norm: predicted as a plain {self.attr}, written as {written} with its power-iteration "
                    "vectors refreshed; the module divides it by its largest singular value")
        return (f"{self.via}: predicted as a plain {self.attr}, written through right_inverse ({written}); the "
                "module computes the parametrization of the prediction")

    def to_list(self) -> list:
        """JSON-able form (graph caches); :meth:`from_list` inverts it."""
        return [self.name, self.module, self.attr, self.via, list(self.originals), list(self.buffers),
                list(self.shape)]

    @classmethod
    def from_list(cls, v: list) -> Parametrized:
        return cls(v[0], v[1], v[2], v[3], tuple(v[4]), tuple(v[5]), tuple(v[6]))


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _legacy_hook(module: nn.Module):
    """The module's legacy weight-norm / spectral-norm forward pre-hook, or None."""
    return next((h for h in module._forward_pre_hooks.values()
                 if isinstance(h, _LegacyWeightNorm | _LegacySpectralNorm)), None)


def find_parametrized(model: nn.Module) -> tuple[dict[str, Parametrized], dict[str, str]]:
    """The parametrized tensors of ``model`` that ghn can write through, and the parameters it cannot predict.

    Returns:
        ``{effective name: Parametrized}``, in module order; and ``{parameter name: reason}`` for the originals of a
        parametrization without ``right_inverse`` and for the parametrization modules' own parameters.

    Raises:
        UnsupportedModuleError: a parametrized tensor whose value cannot be computed (e.g. ``orthogonal`` built on the
            ``meta`` device).
    """
    found: dict[str, Parametrized] = {}
    unsupported: dict[str, str] = {}
    for path, module in model.named_modules():
        hook = _legacy_hook(module)
        if hook is not None:
            attr = hook.name
            weight_norm = isinstance(hook, _LegacyWeightNorm)
            originals = (f"{attr}_g", f"{attr}_v") if weight_norm else (f"{attr}_orig",)
            buffers = () if weight_norm else (f"{attr}_u", f"{attr}_v")
            found[_join(path, attr)] = Parametrized(
                _join(path, attr), path, attr, "weight_norm" if weight_norm else "spectral_norm",
                tuple(_join(path, o) for o in originals), tuple(_join(path, b) for b in buffers),
                tuple(getattr(module, originals[-1]).shape))
        if not parametrize.is_parametrized(module):
            continue
        for attr, chain in module.parametrizations.items():
            prefix = _join(path, "parametrizations", attr)
            originals = tuple(_join(prefix, n) for n, _ in chain.named_parameters(recurse=False))
            if not originals:  # a parametrized buffer: nothing to predict
                continue
            for i, step in enumerate(chain):
                for n, _ in step.named_parameters():
                    unsupported[_join(prefix, str(i), n)] = (
                        f"a parameter of the parametrization {type(step).__name__} of {_join(path, attr)}: ghn "
                        f"predicts the effective {attr}, not the parametrization's own parameters")
            kinds = [type(step) for step in chain]
            names = "+".join(k.__name__.lstrip("_") for k in kinds)
            if not all(hasattr(step, "right_inverse") for step in chain):
                for o in originals:
                    unsupported[o] = (f"computed by the parametrization {names} of {_join(path, attr)}, which has no "
                                      f"right_inverse to write a predicted {attr} through; it keeps its own "
                                      "initialisation")
                continue
            via = {(_WeightNorm,): "weight_norm", (_SpectralNorm,): "spectral_norm"}.get(tuple(kinds), names)
            buffers = tuple(_join(prefix, n) for n, _ in chain.named_buffers())
            found[_join(path, attr)] = Parametrized(_join(path, attr), path, attr, via, originals, buffers,
                                                    tuple(_template(model, path, attr).shape))
    return found, unsupported


def _template(model: nn.Module, path: str, attr: str) -> torch.Tensor:
    """The effective tensor as a fake tensor (shape and dtype, no values, nothing computed or changed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    try:
        with FakeTensorMode(allow_non_fake_inputs=True):
            return effective_value(model, path, attr)
    except Exception as e:  # noqa: BLE001 - the parametrization's own code failed: say which one, typed
        raise UnsupportedModuleError(
            f"{_join(path, attr)} is computed by a parametrization that cannot be evaluated ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); build the model on CPU, "
            "or remove the parametrization (torch.nn.utils.parametrize.remove_parametrizations) before predicting"
        ) from e


@torch.no_grad()
def effective_value(model: nn.Module, path: str, attr: str) -> torch.Tensor:
    """The tensor ``model.<path>.<attr>`` that the module's forward uses, computed without changing anything (in
    eval mode: spectral norm does no power iteration)."""
    module = model.get_submodule(path)
    hook = _legacy_hook(module)
    if hook is not None and hook.name == attr:
        return (hook.compute_weight(module) if isinstance(hook, _LegacyWeightNorm)
                else hook.compute_weight(module, do_power_iteration=False))
    chain = module.parametrizations[attr]
    modes = {m: m.training for m in chain.modules()}
    chain.eval()
    try:
        return chain()
    finally:
        for m, training in modes.items():
            m.training = training


_ABSENT = object()


@contextlib.contextmanager
def overriding(model: nn.Module, found: Mapping[str, Parametrized], values: Mapping[str, torch.Tensor]):
    """Within the block, the model's forward uses ``values[name]`` as each parametrized tensor (for tracing, so the
    autograd graph has the effective tensor as a leaf that feeds its layer, as a plain parameter would).

    ``torch.nn.utils.parametrize`` reads a parametrized tensor from its cache when caching is on, so the values are
    put there; a legacy hook recomputes the attribute before each forward, so it is swapped for one that sets the
    value. Everything is put back on exit, whatever happens.
    """
    hooks: list[tuple[dict, int, object]] = []
    attrs: list[tuple[nn.Module, str, object]] = []
    keys: list[tuple[tuple[int, str], object]] = []
    with parametrize.cached():
        before = set(parametrize._cache)  # a caller's own cached() block may hold entries: keep exactly those
        try:
            for name, spec in found.items():
                if name not in values:
                    continue
                module = model.get_submodule(spec.module)
                hook = _legacy_hook(module)
                if hook is not None and hook.name == spec.attr:
                    table = module._forward_pre_hooks
                    key = next(k for k, h in table.items() if h is hook)
                    hooks.append((table, key, hook))
                    attrs.append((module, spec.attr, module.__dict__.get(spec.attr, _ABSENT)))
                    table[key] = lambda m, args, attr=spec.attr, value=values[name]: setattr(m, attr, value)
                else:
                    key = (id(module), spec.attr)
                    keys.append((key, parametrize._cache.get(key)))
                    parametrize._cache[key] = values[name]
            yield
        finally:
            for key in set(parametrize._cache) - before:  # ours, and what the traced forward cached
                del parametrize._cache[key]
            for key, old in keys:
                if old is not None:
                    parametrize._cache[key] = old
            for table, key, hook in hooks:
                table[key] = hook
            for module, attr, old in attrs:
                if old is not _ABSENT:
                    setattr(module, attr, old)
                elif attr in module.__dict__:
                    delattr(module, attr)


@torch.no_grad()
def write_through(model: nn.Module, spec: Parametrized, w: torch.Tensor) -> dict[str, torch.Tensor]:
    """The values of ``spec.originals`` and ``spec.buffers`` with which the module computes the prediction ``w``.

    Computed on a CPU copy of the parametrization in fp32 (fp64 for a float64 model), with a fixed random seed
    (``orthogonal`` completes non-square matrices with random columns); the model is not changed. Returned on
    ``w``'s device.

    Raises:
        UnsupportedModuleError: the parametrization refuses the value (its ``right_inverse`` raised), or computes a
            non-finite tensor from it (e.g. weight norm of a zero row).
    """
    module = model.get_submodule(spec.module)
    hook = _legacy_hook(module)
    legacy = hook is not None and hook.name == spec.attr
    first = (getattr(module, spec.originals[0].rpartition(".")[2]) if legacy
             else next(module.parametrizations[spec.attr].parameters(recurse=False)))
    dtype = torch.float64 if torch.float64 in (w.dtype, first.dtype) else torch.float32
    target = w.detach().to("cpu", dtype)
    try:
        if legacy:
            values, effective = _write_legacy(hook, spec, target)
        else:
            values, effective = _write_chain(module.parametrizations[spec.attr], spec, target, dtype)
    except (RuntimeError, ValueError, NotImplementedError) as e:
        raise UnsupportedModuleError(
            f"{spec.name}: its parametrization {spec.via} cannot be assigned the predicted {spec.attr} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); remove it before predicting "
            "(torch.nn.utils.parametrize.remove_parametrizations) and apply it again after") from e
    if not torch.isfinite(effective).all():
        raise UnsupportedModuleError(
            f"{spec.name}: {spec.via} computes non-finite values from the predicted {spec.attr} (a row or column of "
            "zeros, such as an embedding's padding row?); remove the parametrization before predicting and apply it "
            "again after, or skip the module with ghn.register_op(<its class>, None)")
    return {n: t.to(w.device) for n, t in values.items()}


def _write_legacy(hook, spec: Parametrized, w: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Values for a legacy ``torch.nn.utils.weight_norm`` / ``spectral_norm`` hook, and the weight they give."""
    if isinstance(hook, _LegacyWeightNorm):
        g = torch.norm_except_dim(w, 2, hook.dim)
        ns = SimpleNamespace(**{f"{hook.name}_g": g, f"{hook.name}_v": w})
        return dict(zip(spec.originals, (g, w))), hook.compute_weight(ns)
    u, v = _top_singular_vectors(hook.reshape_weight_to_matrix(w))
    ns = SimpleNamespace(**{f"{hook.name}_orig": w, f"{hook.name}_u": u, f"{hook.name}_v": v})
    return dict(zip((*spec.originals, *spec.buffers), (w, u, v))), hook.compute_weight(ns, do_power_iteration=False)


def _write_chain(chain: nn.Module, spec: Parametrized, w: torch.Tensor,
                 dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Values for a ``torch.nn.utils.parametrize`` chain: ``right_inverse`` on a copy, then spectral norms'
    power-iteration vectors set to the top singular vectors of what each receives."""
    twin = copy.deepcopy(chain)
    if any(t.is_meta for t in (*twin.parameters(), *twin.buffers())):
        twin = twin.to_empty(device="cpu")  # a model built on meta: right_inverse sets every value used below
    twin = twin.to(device="cpu", dtype=dtype).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        twin.right_inverse(w)
    x = (twin.original,) if twin.is_tensor else tuple(getattr(twin, f"original{i}") for i in range(twin.ntensors))
    for i, step in enumerate(twin):
        if isinstance(step, _SpectralNorm) and hasattr(step, "_u"):  # (1-D weights are normalised, no vectors)
            u, v = _top_singular_vectors(step._reshape_weight_to_matrix(x[0]))
            step._u.copy_(u)
            step._v.copy_(v)
        x = (step(*x),)
    prefix = _join(spec.module, "parametrizations", spec.attr)
    named = {_join(prefix, n): t for n, t in (*twin.named_parameters(recurse=False), *twin.named_buffers())}
    return {n: named[n] for n in (*spec.originals, *spec.buffers)}, x[0]


def _top_singular_vectors(mat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(u, v)``: the first left and right singular vectors of ``mat``, the fixed point of spectral norm's power
    iteration (so ``uᵀ·mat·v`` is the largest singular value, in eval and in train mode alike)."""
    u, _, vh = torch.linalg.svd(mat, full_matrices=False)
    return u[:, 0].contiguous(), vh[0].contiguous()
