"""Run a model once and keep the autograd graph of its forward pass.

This is the one place that decides *how* we trace (DESIGN.md: keep the choice behind one function). We run
``torch.func.functional_call`` with stand-in parameters that require grad, then read the ``grad_fn`` graph.

* First choice: **fake tensors** (``FakeTensorMode``): shapes and dtypes propagate, no memory is allocated and
  no arithmetic runs, so tracing GPT-2-large built on the ``meta`` device is as cheap as tracing a toy model.
  transformers treats fake tensors as "tracing" and skips its data-dependent shortcuts.
* Fallback: **real CPU tensors** sharing the model's storage (models with data-dependent Python control flow).
  Buffers are cloned so that BatchNorm statistics are not touched.

Tracing always runs in eval mode (no dropout nodes, no running-stat updates) and restores the model's modes.
It never depends on random state or on which SDPA kernel is available: the graph is read from autograd
functions, not from kernels' outputs.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch.func import functional_call
from torch.utils._python_dispatch import TorchDispatchMode

from .errors import ExampleInputError
from .parametrized import Parametrized, effective_value, overriding

__all__ = ["Trace", "trace_model"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Trace:
    """The autograd graph of one forward pass.

    Attributes:
        outputs: output tensors that carry a ``grad_fn`` (or are leaves requiring grad).
        leaves: ``id(leaf tensor)`` → canonical parameter name, or ``None`` for a model input.
        fake: whether fake tensors were used.
    """

    outputs: list[torch.Tensor]
    leaves: dict[int, str | None]
    fake: bool
    keep_alive: list = dataclasses.field(default_factory=list, repr=False)  # keeps ids in `leaves` valid


def trace_model(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, torch.Tensor],
                parametrized: Mapping[str, Parametrized] | None = None) -> Trace:
    """Trace ``model(*args, **kwargs)``; ``params`` maps canonical names to the model's (untied) parameters.

    ``parametrized`` tensors (weight norm, ...; :mod:`ghn.parametrized`) become leaves of their own, named by their
    effective name, in place of what their parametrization computes: the graph then binds them to the layer that
    uses them, as plain parameters.

    Raises:
        ExampleInputError: if the model cannot run on the inputs, with or without fake tensors.
    """
    modes = {m: m.training for m in model.modules()}
    # functional_call swaps stand-ins into the model and swaps the originals back, but a module registered under two
    # names (``self.alias = self.block``) gets its stand-in restored last, leaving fake tensors in the user's model.
    # So we keep every module's own tensor slots and put them back ourselves, whatever happens in between.
    slots = [(m, dict(m._parameters), dict(m._buffers)) for m in model.modules()]
    model.eval()
    try:
        try:
            with _quiet_fake_tensor_log():
                return _run(model, args, kwargs, params, parametrized or {}, fake=True)
        except ExampleInputError:
            raise
        except Exception as fake_error:  # noqa: BLE001 - any failure under fake tensors means: try real ones
            if any(t.is_meta for t in params.values()) or _has_meta(args, kwargs):
                raise _input_error(model, args, kwargs, fake_error) from fake_error
            logger.debug("fake-tensor trace failed (%s); tracing with real tensors", fake_error)
            try:
                return _run(model, args, kwargs, params, parametrized or {}, fake=False)
            except Exception as real_error:  # noqa: BLE001
                raise _input_error(model, args, kwargs, real_error) from real_error
    finally:
        for m, training in modes.items():
            m.training = training
        _restore_slots(slots)


class _DropAll(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


@contextlib.contextmanager
def _quiet_fake_tensor_log():
    """Drop torch's fake-tensor log records while we trace.

    When an op's meta kernel raises, torch logs the whole traceback at ERROR level before the exception reaches us.
    We turn that exception into an :class:`ExampleInputError` (or retry with real tensors), so the log only
    buries our message under torch internals. Our own ``logger.debug`` keeps the cause for debugging.
    """
    log = logging.getLogger("torch._subclasses.fake_tensor")
    drop = _DropAll()
    log.addFilter(drop)
    try:
        yield
    finally:
        log.removeFilter(drop)


def _restore_slots(slots: list) -> None:
    for m, params, buffers in slots:
        for table, saved in ((m._parameters, params), (m._buffers, buffers)):
            for k in [k for k in table if k not in saved]:
                del table[k]
            for k, v in saved.items():
                if table.get(k, _NOTHING) is not v:
                    table[k] = v


_NOTHING = object()


def _run(model: nn.Module, args: tuple, kwargs: dict, params: dict[str, torch.Tensor],
         parametrized: Mapping[str, Parametrized], fake: bool) -> Trace:
    leaves: dict[int, str | None] = {}
    keep: list = []
    if fake:
        from torch._subclasses.fake_tensor import FakeTensorMode
        mode: Any = FakeTensorMode(allow_non_fake_inputs=True)
        check: Any = _DtypeCheck()  # entered after (inside) fake mode, so it sees each op first
    else:
        mode = check = contextlib.nullcontext()
    # Real runs happen where the model's parameters are (inputs are moved there, as a user's own loop would).
    device = next((p.device for p in params.values()), torch.device("cpu"))
    with torch.enable_grad(), mode, check:
        def stand_in(t: torch.Tensor, grad: bool) -> torch.Tensor:
            if fake:
                s = torch.empty(t.shape, dtype=t.dtype, device="cpu")
            else:
                s = t.detach() if grad else t.detach().clone()
            return s.requires_grad_(grad and s.is_floating_point())

        tensors: dict[str, torch.Tensor] = {}
        for name, p in params.items():
            tensors[name] = stand_in(p, grad=True)
            leaves[id(tensors[name])] = name
        for name, b in model.named_buffers():
            tensors[name] = stand_in(b, grad=False)
        effective: dict[str, torch.Tensor] = {}
        for name, spec in parametrized.items():
            effective[name] = stand_in(effective_value(model, spec.module, spec.attr), grad=True)
            leaves[id(effective[name])] = name

        def convert(x: Any) -> Any:
            if isinstance(x, torch.Tensor):
                if not fake and x.device != device:
                    x = x.to(device)
                s = stand_in(x, grad=True)
                if fake and not x.is_floating_point():
                    # Token ids index embedding tables: keep them valid even though fake values are never read.
                    s = torch.zeros(x.shape, dtype=x.dtype, device="cpu")
                if s.requires_grad:
                    leaves[id(s)] = None
                keep.append(s)
                return s
            if isinstance(x, tuple | list):
                return type(x)(convert(v) for v in x)
            if isinstance(x, dict):
                return {k: convert(v) for k, v in x.items()}
            return x

        with overriding(model, parametrized, effective):
            out = functional_call(model, tensors, convert(args), convert(kwargs), strict=False)
    keep.extend(tensors.values())
    keep.extend(effective.values())
    outputs = [t for t in _flatten(out) if t.grad_fn is not None or t.requires_grad]
    if not outputs:
        raise ExampleInputError(
            f"{type(model).__name__} returned no tensor that depends on its parameters or inputs; "
            "make sure forward() returns its outputs (a tensor, tuple, dict or ModelOutput)")
    return Trace(outputs=outputs, leaves=leaves, fake=fake, keep_alive=keep)


# Matrix products whose operands must share one dtype. Real kernels check this; the fake (meta) kernels of these
# ops do not, so without this check a fake trace would accept inputs a real forward pass rejects (token ids fed
# to a Linear, float32 inputs to a float16 model).
_SAME_DTYPE_OPS = frozenset(getattr(torch.ops.aten, name).default for name in (
    "mm", "addmm", "bmm", "baddbmm", "addbmm", "mv", "addmv", "dot"))


_EMBEDDING = torch.ops.aten.embedding.default


class _DtypeCheck(TorchDispatchMode):
    """Raise, as real kernels do, when a matrix product mixes dtypes (active only under fake tensors)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in _SAME_DTYPE_OPS:
            dtypes = [a.dtype for a in args if isinstance(a, torch.Tensor)]
            if len(set(dtypes)) > 1:
                names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
                raise RuntimeError(f"{func.__name__} got operands of different dtypes ({names})")
        elif func is _EMBEDDING and len(args) > 1 and isinstance(args[1], torch.Tensor) \
                and (args[1].is_floating_point() or args[1].is_complex()):
            raise RuntimeError(f"embedding indices must be integers, got {str(args[1].dtype).replace('torch.', '')}")
        return func(*args, **(kwargs or {}))


def _flatten(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x] if x.is_floating_point() or x.is_complex() else []
    if isinstance(x, dict):  # includes transformers' ModelOutput
        return [t for v in x.values() for t in _flatten(v)]
    if isinstance(x, tuple | list):
        return [t for v in x for t in _flatten(v)]
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return [t for f in dataclasses.fields(x) for t in _flatten(getattr(x, f.name))]
    return []


def _has_meta(args: tuple, kwargs: dict) -> bool:
    return any(isinstance(t, torch.Tensor) and t.is_meta for t in (*args, *kwargs.values()))


def _describe(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"Tensor{tuple(x.shape)}:{str(x.dtype).replace('torch.', '')}"
    if isinstance(x, tuple | list):
        return "(" + ", ".join(_describe(v) for v in x) + ")"
    if isinstance(x, dict):
        return "{" + ", ".join(f"{k}: {_describe(v)}" for k, v in x.items()) + "}"
    return type(x).__name__


def _input_error(model: nn.Module, args: tuple, kwargs: dict, err: Exception) -> ExampleInputError:
    from .inputs import default_example_inputs
    expected = ""
    try:  # what the model declares (timm pretrained_cfg, transformers config), adjusted to in_chans / img_size
        declared = default_example_inputs(model)
        if isinstance(declared, torch.Tensor):
            expected = (f" The model declares input_size={tuple(declared.shape[1:])} (so e.g. "
                        f"{_describe(declared)}; leave example_inputs=None to use it).")
    except Exception:  # noqa: BLE001 - only a hint
        pass
    first = next((m for m in model.modules()
                  if isinstance(m, nn.modules.conv._ConvNd | nn.Linear | nn.Embedding | nn.EmbeddingBag)), None)
    if not expected and isinstance(first, nn.Embedding | nn.EmbeddingBag):
        expected = (f" Its first layer ({type(first).__name__}) expects integer token ids in "
                    f"[0, {first.num_embeddings}).")
    elif not expected and first is not None:
        c = getattr(first, "in_channels", None) or getattr(first, "in_features", None)
        expected = f" Its first layer ({type(first).__name__}) expects {c} input channels/features."
    expected += _dtype_hint(model, args, kwargs, first)
    return ExampleInputError(
        f"could not run {type(model).__name__} on example inputs args={_describe(args)} "
        f"kwargs={_describe(kwargs)}: {type(err).__name__}: {str(err).splitlines()[0].rstrip('.') if str(err) else ''}."
        f"{expected} Pass example_inputs=... that the model's forward() accepts.")


def _dtype_hint(model: nn.Module, args: tuple, kwargs: dict, first: nn.Module | None) -> str:
    """What the model expects when the inputs' dtypes cannot be right ("" when they may be)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    inputs = [t for t in _flat_inputs((args, kwargs))]
    floats = {t.dtype for t in inputs if t.is_floating_point()}
    if dtype is not None and floats - {dtype}:
        names = ", ".join(sorted(str(d).replace("torch.", "") for d in floats))
        return (f" Its parameters are {str(dtype).replace('torch.', '')} but the floating inputs are {names}; "
                "cast the inputs to the model's dtype.")
    ints = [t for t in inputs if not t.is_floating_point() and not t.is_complex()]
    if ints and not floats and first is not None and not isinstance(first, nn.Embedding | nn.EmbeddingBag):
        return " The inputs are integer tensors but the first layer takes floating-point values."
    return ""


def _flat_inputs(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, dict):
        return [t for v in x.values() for t in _flat_inputs(v)]
    if isinstance(x, tuple | list):
        return [t for v in x for t in _flat_inputs(v)]
    return []
