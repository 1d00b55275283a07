"""Predicted parameters and how they are written into a model.

``Prediction`` is what :meth:`GHN.predict_params` returns; the functions below are the steps of
:meth:`GHN.predict`: check everything first, then write (so a failure leaves the model unchanged), then
optionally re-initialise the classifier and recalibrate BatchNorm statistics.
"""
from __future__ import annotations

import contextlib
import copy
import inspect
import logging
from collections.abc import Collection, Iterable, Iterator, Mapping

import torch
import torch.nn as nn

from .binding import CoverageReport
from .errors import ConfigError, DeviceError, ExampleInputError, GHNError, GraphError
from .graph import Graph, Node, residual_branch_ends

__all__ = ["Prediction", "check_graph", "check_prediction", "write_params", "materialize", "init_empty_weights",
           "padding_rows", "reinit_classifier", "branch_end_params", "scale_branch_ends",
           "recalibrate_bn", "classifier_nodes", "classifier_modules", "resolve_device"]

logger = logging.getLogger(__name__)


class Prediction(Mapping[str, torch.Tensor]):
    """Predicted tensors keyed by the model's canonical parameter names (fp32, on the GHN's device).

    A tensor computed by a parametrization (weight norm, spectral norm, ...) is predicted as the plain layer's tensor
    and appears under the names of the parameters written for it, as ``model.state_dict()`` names them
    (``conv.parametrizations.weight.original0`` / ``original1``, or ``conv.weight_g`` / ``conv.weight_v`` for the
    legacy hook); see ``coverage.parametrized`` and :mod:`ghn.parametrized`.

    Attributes:
        coverage: the :class:`~ghn.CoverageReport` (what was predicted, what was not and why).
        graph: the :class:`~ghn.Graph` the prediction was made from.
        buffers: buffers that parametrizations compute from the written parameters (spectral norm's ``_u``/``_v``,
            orthogonal's ``base``), refreshed to match them; in :meth:`state_dict` too.
    """

    def __init__(self, params: dict[str, torch.Tensor], coverage: CoverageReport, graph: Graph):
        refreshed = {b for p in graph.parametrized.values() for b in p.buffers}
        self._params = {n: t for n, t in params.items() if n not in refreshed}
        self.buffers = {n: t for n, t in params.items() if n in refreshed}
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
        """The tensors with tied aliases and refreshed :attr:`buffers` added (loadable with
        ``model.load_state_dict(strict=False)``)."""
        out = {**self._params, **self.buffers}
        for alias, name in self.coverage.tied.items():
            if name in out:
                out[alias] = out[name]
        return out


def check_graph(model: nn.Module, graph: Graph) -> None:
    """Raise unless ``graph`` was built from this model's architecture: the same parameter names and shapes.

    A graph of another model may share many names and shapes (resnet18's are a subset of resnet34's); predicting
    from it would write some tensors and leave the rest, while reporting full coverage.

    Raises:
        GraphError: names or shapes differ (the message names the first few).
    """
    every = dict(model.named_parameters(remove_duplicate=False))
    own = dict(model.named_parameters())
    in_graph = set(graph.numel)
    problems = [f"{n!r} is not in the graph" for n in own if n not in in_graph]
    problems += [f"the graph has {n!r}, which the model does not" for n in sorted(in_graph - set(own))]
    shapes = {info.name: tuple(info.shape) for _, info in graph.params}
    for n in (n for n in own if n in in_graph):
        shape = tuple(own[n].shape)
        if n in shapes and shapes[n] != shape:
            problems.append(f"{n!r} has shape {shapes[n]} in the graph but {shape} in the model")
        elif graph.numel[n] != own[n].numel():
            problems.append(f"{n!r} has {graph.numel[n]} elements in the graph but {own[n].numel()} in the model")
    aliases = _aliases(every, own)
    if not problems and graph.tied != aliases:
        problems.append(f"tied parameters differ (graph: {graph.tied or 'none'}, model: {aliases or 'none'})")
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise GraphError(f"graph= was built from another model (a {graph.model_name or 'model'}), not from this "
                         f"{type(model).__name__}: {shown}. Build the graph from this model "
                         "(build_graph(model, example_inputs)) or omit graph=")


def _aliases(every: Mapping[str, nn.Parameter], own: Mapping[str, nn.Parameter]) -> dict[str, str]:
    """alias -> canonical name of tied parameters (the first name of each tensor is canonical)."""
    canonical = {id(p): n for n, p in own.items()}
    return {n: canonical[id(p)] for n, p in every.items() if n not in own}


def padding_rows(model: nn.Module, graph: Graph) -> dict[str, int]:
    """Canonical parameter name -> padding row, for embeddings built with ``padding_idx``.

    PyTorch initialises that row to zero and never updates it (its output is the "no token" vector); a predicted
    value there would change what padding tokens contribute, so predictions keep it zero too.
    """
    rows = {}
    for path, module in model.named_modules():
        if isinstance(module, nn.Embedding | nn.EmbeddingBag) and module.padding_idx is not None:
            name = f"{path}.weight" if path else "weight"
            if name not in graph.parametrized:  # weight norm divides by each row's norm: a zero row would be NaN
                rows[graph.tied.get(name, name)] = module.padding_idx
    return rows


def check_prediction(model: nn.Module, params: Mapping[str, torch.Tensor],
                     own: Mapping[str, torch.Tensor] | None = None) -> None:
    """Raise before anything is written if a tensor does not fit its parameter (or buffer, for those parametrizations
    refresh) or is not finite; ``own``: the model's parameters and buffers by name.

    Finiteness is checked in the parameter's own dtype too: a value that fits fp32 but not fp16 would become Inf.

    Raises:
        GraphError: a name or shape that is not the model's (the graph was built from another model).
        GHNError: non-finite values.
    """
    own = own if own is not None else _writable(model)
    for name, t in params.items():
        if name not in own:
            raise GraphError(f"predicted tensor {name!r} is not a parameter of {type(model).__name__}; the graph "
                             "was built from another model — build it from this one")
        p = own[name]
        if tuple(p.shape) != tuple(t.shape):
            raise GraphError(f"predicted {name} has shape {tuple(t.shape)} but the model's is "
                             f"{tuple(p.shape)}; the graph was built from another model")
        # a sum is one cheap pass and is finite iff every element is (barring overflow, re-checked in full)
        if not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
            raise GHNError(f"predicted {name} has non-finite values; the GHN checkpoint is broken (re-train or "
                           "re-download it)")
        if p.is_floating_point() and t.numel() and torch.finfo(p.dtype).max < torch.finfo(t.dtype).max:
            biggest = t.detach().abs().max().item()
            if biggest > torch.finfo(p.dtype).max:
                raise GHNError(f"predicted {name} has values up to {biggest:.3g}, beyond the range of the model's "
                               f"{str(p.dtype).replace('torch.', '')}; predict into a float32 copy of the model "
                               "(model.float()) and cast it afterwards")


@torch.no_grad()
def write_params(model: nn.Module, params: Iterable[tuple[str, torch.Tensor]],
                 own: Mapping[str, torch.Tensor] | None = None) -> None:
    """Copy tensors into the model's parameters (and buffers) in place, cast to their dtype and moved to their
    device; ``own``: the model's parameters and buffers by name."""
    own = own if own is not None else _writable(model)
    for name, t in params:
        p = own[name]
        p.copy_(t.to(device=p.device, dtype=p.dtype))


def _writable(model: nn.Module) -> dict[str, torch.Tensor]:
    """What a prediction writes into, by name: the parameters, and the buffers (those parametrizations refresh)."""
    return {**dict(model.named_buffers()), **dict(model.named_parameters())}


@contextlib.contextmanager
def init_empty_weights() -> Iterator[None]:
    """Build models whose parameters live on ``meta`` (no memory) but whose buffers are computed for real on CPU.

    Under ``with torch.device("meta")`` a constructor's computed buffers (position ids, relative-position indices,
    attention masks, rotary frequencies) get no values, and only the constructor knows how to compute them.
    Here every parameter is moved to ``meta`` as it is registered, while buffers are created as usual, so
    :meth:`GHN.predict` can materialise the model with exactly the buffers a CPU build would have. Same idea and
    name as ``accelerate.init_empty_weights(include_buffers=False)``. Each parameter is briefly allocated on CPU
    (uninitialised) before it moves, so peak memory is that of the largest single parameter.

    Example:
        >>> from ghn import init_empty_weights
        >>> with init_empty_weights():
        ...     model = AutoModelForCausalLM.from_config(config)
        >>> ghn.predict(model)          # materialised on CPU, buffers as the constructor made them
    """
    register = nn.Module.register_parameter

    def register_on_meta(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        register(module, name, param)
        p = module._parameters[name]
        if p is not None and not p.is_meta:  # an already-meta parameter is re-registered as is (keeps ties)
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register_on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        nn.Module.register_parameter = register  # type: ignore[method-assign]


def materialize(model: nn.Module, device: torch.device | str, written: Collection[str] = ()) -> None:
    """Allocate the ``meta`` parts of a model on ``device`` (parameters uninitialised), buffers as a CPU build has them.

    A buffer on ``meta`` has no value, and a model's constructor may have computed one (position ids, attention
    masks, rotary frequencies): leaving it empty or zero gives a different model. Each one is restored by the
    model's own code (see :func:`_restorable_buffers`); anything else is refused *before* the model changes.
    Tensors that are not on ``meta`` (e.g. buffers of a model built under :func:`init_empty_weights`) keep their
    values and move to ``device``; tied parameters stay tied. Buffers named in ``written`` (those the prediction
    refreshes: spectral norm's ``_u``/``_v``) are allocated uninitialised, as parameters are.

    Raises:
        DeviceError: a ``meta`` buffer that cannot be recomputed (the message names them and the fix), or
            ``device`` cannot hold the model.
    """
    device = resolve_device(device)
    values, calls = _restorable_buffers(model, written)
    moved: dict[int, torch.Tensor] = {}  # id(old tensor) -> its replacement: a tensor shared by modules stays shared
    try:
        for module in model.modules():
            for name, p in module._parameters.items():
                if p is not None:
                    if id(p) not in moved:
                        data = torch.empty_like(p, device=device) if p.is_meta else p.detach().to(device)
                        moved[id(p)] = nn.Parameter(data, requires_grad=p.requires_grad)
                    module._parameters[name] = moved[id(p)]
            for name, b in module._buffers.items():
                if b is not None:
                    if id(b) not in moved:
                        if not b.is_meta:
                            moved[id(b)] = b.to(device)
                        elif id(b) in values:
                            moved[id(b)] = values[id(b)].to(device=device, dtype=b.dtype, copy=True)
                        else:  # reset below, by the module that owns it
                            moved[id(b)] = torch.empty_like(b, device=device)
                    module._buffers[name] = moved[id(b)]
    except (RuntimeError, AssertionError) as e:  # e.g. out of memory on the device
        raise DeviceError(f"could not allocate {type(model).__name__} on {device} ({type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}); pass device='cpu' or a device this machine "
                          "has") from e
    with torch.no_grad():
        for module in calls:
            if hasattr(module, "reset_running_stats"):
                module.reset_running_stats()
            else:
                module.init_non_persistent_buffers()


def _restorable_buffers(model: nn.Module, written: Collection[str] = ()) -> tuple[dict[int, torch.Tensor],
                                                                                  list[nn.Module]]:
    """How to give every ``meta`` buffer of ``model`` its constructor's value, without changing the model.

    Three ways, all of them the model's own code: ``reset_running_stats()`` (BatchNorm-like statistics),
    ``init_non_persistent_buffers()`` (timm's protocol for computed buffers such as Swin's relative-position index
    and attention mask), and re-running a Hugging Face module's constructor from its ``config``.

    Returns:
        ``{id(buffer): value}`` for buffers recomputed by a constructor, and the modules to call (after allocation)
        ``reset_running_stats()`` or ``init_non_persistent_buffers()`` on.

    Raises:
        DeviceError: some ``meta`` buffer can be restored in none of these ways.
    """
    pending = {name: b for name, b in model.named_buffers() if b.is_meta and name not in written}
    values: dict[int, torch.Tensor] = {}
    calls: list[nn.Module] = []
    for path, module in model.named_modules():  # parents first: one rebuild of a whole HF model covers its parts
        prefix = f"{path}." if path else ""
        own = [n for n in pending if n.startswith(prefix) and "." not in n[len(prefix):]]
        if hasattr(module, "reset_running_stats"):
            covered = own
        elif hasattr(module, "init_non_persistent_buffers"):
            covered = [n for n in own if n[len(prefix):] in module._non_persistent_buffers_set]
        else:
            covered = []
        if covered:
            calls.append(module)
            for n in covered:
                del pending[n]
        mine = [n for n in pending if n.startswith(prefix)]
        twin = _rebuild_from_config(module) if mine else None
        if twin is not None:
            fresh = dict(twin.named_buffers())
            for n in mine:
                b = fresh.get(n[len(prefix):])
                if b is not None and not b.is_meta and b.shape == pending[n].shape:
                    values[id(pending.pop(n))] = b
    if pending:
        names = sorted(pending)
        shown = ", ".join(repr(n) for n in names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")
        raise DeviceError(
            f"{type(model).__name__} was built on the meta device and its buffer(s) {shown} have no values: only the "
            "model's constructor knows how to compute them, and predicting would leave them wrong. Build the model "
            "under `with init_empty_weights():` (`from ghn import init_empty_weights`; parameters on meta, buffers "
            "computed on CPU) or on CPU, then predict")
    return values, calls


def _rebuild_from_config(module: nn.Module) -> nn.Module | None:
    """A twin of a Hugging Face module built from its ``config`` (parameters on meta, buffers on CPU), or None.

    Transformers modules (models, rotary embeddings) are constructed from their config alone, so re-running the
    constructor recomputes their buffers exactly. Other modules are not rebuilt: their arguments are unknown.
    """
    config = getattr(module, "config", None)
    if config is None or not any(c.__name__ in ("PreTrainedConfig", "PretrainedConfig") for c in type(config).__mro__):
        return None
    try:
        params = list(inspect.signature(type(module)).parameters.values())
    except (TypeError, ValueError):
        return None
    if not params or params[0].name != "config" or any(
            p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params[1:]):
        return None  # needs more than the config (e.g. a layer index): its parent's rebuild covers it
    try:
        with torch.random.fork_rng(devices=[]), torch.device("cpu"), init_empty_weights():
            return type(module)(copy.deepcopy(config))
    except Exception as e:  # noqa: BLE001 - then the buffers count as not restorable, and predict says which
        logger.debug("could not rebuild %s from its config: %s: %s", type(module).__name__, type(e).__name__, e)
        return None


def resolve_device(device: torch.device | str | None) -> torch.device:
    """``device`` as a ``torch.device`` that exists on this machine (``None``: CPU).

    Raises:
        DeviceError: a malformed device string, or a device this machine does not have (e.g. ``"cuda"`` without a
            GPU), with the devices that are available.
    """
    if device is None:
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise DeviceError(f"{device!r} is not a device ({e}); use 'cpu', 'cuda', 'cuda:1', 'mps', ...") from e
    if dev.type in ("cpu", "meta"):
        return dev
    module = getattr(torch, dev.type, None)
    available = bool(module is not None and hasattr(module, "is_available") and module.is_available())
    if available and dev.index is not None and hasattr(module, "device_count"):
        available = dev.index < module.device_count()
    if not available:
        have = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        raise DeviceError(f"device {str(dev)!r} is not available on this machine (available: {', '.join(have)}); "
                          "pass device='cpu' or one of those")
    return dev


#: parameter-free ops a classifier's output may pass through on its way to the model's output
_AFTER_HEAD = frozenset({"relu", "gelu", "silu", "sigmoid", "tanh", "hardswish", "activation", "softmax", "max_pool",
                         "avg_pool", "mean"})


def classifier_nodes(graph: Graph) -> list[int]:
    """The classifier / LM head: the nodes that compute the model's output through activations, softmax and pooling
    only. Each is a linear or conv with parameters, or the ``matmul`` of an LM head tied to the input embedding.

    Empty when anything else computes the output (a norm or a residual add: hidden states or features, as from
    ``transformers.Wav2Vec2Model`` or a timm model built with ``num_classes=0``): such a model has no classifier,
    whatever linear layer happens to be nearest its output.
    """
    parents = graph.parents()
    heads: list[int] = []
    frontier, seen = list(parents.get(len(graph.nodes) - 1, [])), set()
    while frontier:
        i = frontier.pop()
        if i in seen:
            continue
        seen.add(i)
        node = graph.nodes[i]
        if (node.op in ("linear", "conv") and node.params) or (node.op == "matmul" and _embeddings(graph, parents, i)):
            heads.append(i)
        elif node.op in _AFTER_HEAD and not node.params:
            frontier += parents.get(i, [])
        else:
            return []
    return sorted(heads)


def _embeddings(graph: Graph, parents: dict[int, list[int]], i: int) -> list[Node]:
    """The embedding nodes feeding node ``i`` (for a ``matmul``: an LM head that reuses the embedding's weight)."""
    return [graph.nodes[p] for p in parents.get(i, []) if graph.nodes[p].op == "embedding"]


def classifier_modules(model: nn.Module, graph: Graph) -> list[tuple[str, nn.Module]]:
    """The classifier / LM head modules (:func:`classifier_nodes`) as ``(path, module)`` that ``classifier="reinit"``
    resets, checked before anything is written; empty if the model has no classifier.

    Raises:
        ConfigError: a head shares its weight with another layer (an LM head tied to the input embedding: resetting
            it would reset the embedding too), or has no ``reset_parameters()`` to re-initialise it with.
    """
    parents = graph.parents()
    out = []
    for i in classifier_nodes(graph):
        node = graph.nodes[i]
        if node.op == "matmul":  # the output is a product with the input embedding's weight: always shared
            shared = [(alias, p.name) for n in _embeddings(graph, parents, i) for p in n.params
                      for alias in p.tied or ["the head"]]
        else:
            shared = [(alias, p.name) for p in node.params for alias in p.tied]
        if shared:
            alias, name = shared[0]
            raise ConfigError(f"classifier='reinit' cannot re-initialise the head of {type(model).__name__}: it is "
                              f"tied to another layer ({alias} is {name}), so resetting it would reset both; use "
                              "classifier='predict', or untie the head first (transformers: "
                              "tie_word_embeddings=False)")
        module = model.get_submodule(node.module) if node.module else None
        if not hasattr(module, "reset_parameters"):
            raise ConfigError(f"classifier='reinit': the head {node.module or node.name} of {type(model).__name__} "
                              f"({type(module).__name__}) has no reset_parameters() to re-initialise it with; use "
                              "classifier='predict'")
        out.append((node.module, module))
    return out


@torch.no_grad()
def reinit_classifier(heads: list[tuple[str, nn.Module]]) -> list[str]:
    """Reset each head of :func:`classifier_modules` to its own default initialisation; returns their paths."""
    for path, module in heads:
        module.reset_parameters()
        logger.info("classifier %s re-initialised", path)
    return [path for path, _ in heads]


def branch_end_params(graph: Graph) -> set[str]:
    """Names of the gains ending residual branches (a norm's weight or a layer scale, see
    :func:`ghn.graph.residual_branch_ends`): what ``branch_scale`` multiplies."""
    return {p.name for i in residual_branch_ends(graph) for p in graph.nodes[i].params
            if p.role in ("norm_weight", "layer_scale")}


@torch.no_grad()
def scale_branch_ends(params: dict[str, torch.Tensor], ends: set[str], scale: float,
                      own: Mapping[str, nn.Parameter]) -> None:
    """Multiply the predicted gains named in ``ends`` (:func:`branch_end_params`) by ``scale``, in ``params``: before
    anything is written, so a scale that overflows leaves the model untouched.

    Raises:
        ConfigError: a scaled gain is not finite in its parameter's dtype (e.g. ``branch_scale=1e5`` in fp16).
    """
    for name in ends & params.keys():
        w, dtype = params[name] * scale, own[name].dtype
        if not torch.isfinite(w.to(dtype)).all():
            raise ConfigError(f"branch_scale={scale:g} makes {name} non-finite in the model's "
                              f"{str(dtype).replace('torch.', '')} (predicted gains up to "
                              f"{params[name].abs().max().item():.3g}); pass a smaller branch_scale")
        params[name] = w


@torch.no_grad()
def recalibrate_bn(model: nn.Module, data: Iterable, max_batches: int = 20) -> int:
    """Reset BatchNorm running statistics and recompute them as a cumulative average over ``data``.

    ``data`` yields inputs (a tensor, a tuple whose first item is the input, or a dict of keyword inputs); they are
    moved to the model's device, and floating inputs cast to its dtype. Returns the number of batches used.

    Raises:
        ExampleInputError: ``data`` is not iterable, yields no batch, or the model fails on a batch. The running
            statistics are then restored to what they were before the call (nothing half-recalibrated).
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return 0
    try:
        batches = iter(data)
    except TypeError:
        raise ExampleInputError(f"bn_data must be an iterable of input batches (e.g. a DataLoader), got "
                                f"{type(data).__name__}") from None
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in bns}
    saved = {m: {k: b.clone() for k, b in m.named_buffers(recurse=False)} for m in bns}
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else None

    def to_model(x):
        if not isinstance(x, torch.Tensor):
            raise ExampleInputError(f"bn_data yielded a {type(x).__name__}; each batch must be a tensor, a "
                                    "(input, target) tuple or a dict of keyword tensors")
        return x.to(device=device, dtype=dtype if x.is_floating_point() and dtype is not None else None)

    n = 0
    ok = False
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average: every batch counts equally
        model.train()
        for batch in batches:
            if n >= max_batches:
                break
            try:
                if isinstance(batch, dict):
                    model(**{k: to_model(v) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})
                else:
                    model(to_model(batch[0] if isinstance(batch, tuple | list) and batch else batch))
            except GHNError:
                raise
            except Exception as e:  # noqa: BLE001 - the user's data or model: report it typed, with the batch
                raise ExampleInputError(
                    f"bn='recalibrate': {type(model).__name__} failed on batch {n} of bn_data ({type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}); pass batches the model's forward() accepts "
                    "(the running statistics were left unchanged)") from e
            n += 1
        if n == 0:
            raise ExampleInputError("bn='recalibrate' needs data: bn_data yielded no batch; pass an iterable of "
                                    "input batches (e.g. a DataLoader over training images)")
        ok = True
    finally:
        for m, momentum in momenta.items():
            m.momentum = momentum
        for m, training in modes.items():
            m.training = training
        if not ok:
            for m, buffers in saved.items():
                for k, b in buffers.items():
                    getattr(m, k).copy_(b)
    return n
