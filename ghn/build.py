"""Building a :class:`ghn.graph.Graph` from a model: ``build_graph(model, example_inputs) -> Graph``.

Parameters are collected and bound to roles (:mod:`ghn.binding`), the model is traced once through autograd
(:mod:`ghn.trace`), and the traced ops become nodes and edges: ops that own parameters, free parameters and the
parameter-free ops that shape the flow; ops that only move data are collapsed away. O(N + E) over the autograd
graph, plus the capped shortest-path BFS of :class:`Graph`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils.parametrize import type_before_parametrizations

from .binding import ParamInfo, free_param_op, param_role
from .errors import UnsupportedModuleError
from .graph import MAX_HOPS, Graph, Node
from .inputs import ExampleInputs, resolve_example_inputs
from .model_checks import check_model
from .ops import OP_ID, SKIP, autograd_op, module_op
from .parametrized import Parametrized, find_parametrized
from .trace import trace_model

__all__ = ["build_graph"]

_MODULE_ROLES = frozenset({"weight", "weight_t", "embedding", "bias", "norm_weight", "norm_bias"})


@dataclass
class _ParamSite:
    name: str
    module_path: str
    module: nn.Module
    attr: str
    tensor: torch.Tensor
    op: str | None  # op of the owning module (None if unknown)
    role: str


def build_graph(model: nn.Module, example_inputs: ExampleInputs = None, *, max_hops: int = MAX_HOPS) -> Graph:
    """Build the computational graph of ``model``.

    Args:
        model: any ``nn.Module`` (on CPU, CUDA or the ``meta`` device).
        example_inputs: a tensor, a tuple of positional inputs, a dict of keyword inputs, or a callable returning
            one of those; ``None`` uses what the model declares (timm ``pretrained_cfg``, transformers ``config``).
        max_hops: distances beyond this many hops are treated as "far".

    Returns:
        The :class:`Graph`; every floating parameter is bound to exactly one node.

    Raises:
        ExampleInputError: no usable example inputs, or the model fails on them.
        UnsupportedModuleError: a parameter that no op can hold (e.g. complex-valued).
        NotAModuleError: ``model`` is not an ``nn.Module``.

    Example:
        >>> g = build_graph(timm.create_model("resnet18"), torch.randn(2, 3, 64, 64))
        >>> len(g), g.coverage.fraction
    """
    check_model(model, "build_graph")  # not a module, DataParallel, TorchScript, quantized: typed errors
    sites, tied, missing, numel, parametrized = _collect_params(model)
    args, kwargs = resolve_example_inputs(model, example_inputs)
    trace = trace_model(model, args, kwargs, {name: s.tensor for name, s in sites.items() if name not in parametrized},
                        parametrized)
    nodes, edges = _Builder(sites, trace, tied).run()
    return Graph(nodes=nodes, edges=edges, missing=missing, tied=tied, numel=numel, parametrized=parametrized,
                 model_name=type(model).__name__, max_hops=max_hops)


def _collect_params(model: nn.Module):
    """Canonical parameters with their roles; tied aliases; parameters that cannot be predicted; parametrized tensors
    (each bound under its effective name in place of the parameters it is computed from)."""
    sites: dict[str, _ParamSite] = {}
    by_id: dict[int, str] = {}
    tied: dict[str, str] = {}
    missing: dict[str, str] = {}
    numel: dict[str, int] = {}
    modules = dict(model.named_modules(remove_duplicate=False))
    parametrized, unpredictable = find_parametrized(model)
    written = {o: spec for spec in parametrized.values() for o in spec.originals}
    effective: dict[str, list[Parametrized]] = {}  # module path -> its parametrized tensors
    for spec in parametrized.values():
        effective.setdefault(spec.module, []).append(spec)
    pending = {path: list(specs) for path, specs in effective.items()}
    for name, p in model.named_parameters(remove_duplicate=False):
        path, _, attr = name.rpartition(".")
        # A parametrized tensor's site comes first among its module's, where a plain module registers its weight,
        # so that the node lists its tensors in the order the plain layer's has (weight, then bias).
        for spec in pending.pop(written[name].module if name in written else path, []):
            module = modules[spec.module]
            op = _module_op(module, effective[spec.module])
            if op == SKIP:
                missing.update({o: _skipped(module) for o in spec.originals})
                del parametrized[spec.name]
                continue
            role = param_role(spec.attr, spec.name, len(spec.shape), op, type_before_parametrizations(module).__name__)
            sites[spec.name] = _ParamSite(spec.name, spec.module, module, spec.attr,
                                          torch.empty(spec.shape, device="meta"), op, role)
        if id(p) in by_id:
            tied[name] = by_id[id(p)]
            continue
        by_id[id(p)] = name
        module = modules[path]
        if isinstance(p, nn.parameter.UninitializedParameter):
            raise UnsupportedModuleError(
                f"{path or 'model'} ({type(module).__name__}) has an uninitialised lazy parameter '{attr}'; run "
                "model(example_inputs) once to initialise it, then build the graph / predict")
        numel[name] = p.numel()
        if name in unpredictable:
            missing[name] = unpredictable[name]
            continue
        if name in written:  # predicted through its effective tensor (the site above)
            continue
        op = _module_op(module, effective.get(path, []))
        if op == SKIP:
            missing[name] = _skipped(module)
            continue
        if not p.is_floating_point():
            if p.is_complex():
                raise UnsupportedModuleError(
                    f"{path or 'model'} ({type(module).__module__}.{type(module).__name__}) owns complex parameter "
                    f"'{attr}' {tuple(p.shape)}, which ghn cannot predict; skip the module with "
                    f"ghn.register_op({type(module).__name__}, None) to keep its own initialisation")
            missing[name] = f"dtype {p.dtype} is not floating point"
            continue
        if p.numel() == 0:
            missing[name] = "empty tensor"
            continue
        role = param_role(attr, name, p.ndim, op, type_before_parametrizations(module).__name__)
        sites[name] = _ParamSite(name, path, module, attr, p, op, role)
    return sites, tied, missing, numel, parametrized


def _module_op(module: nn.Module, parametrized: list[Parametrized]) -> str | None:
    """The op of a module that owns parameters (and the ``parametrized`` tensors); ``"module"`` for an unknown one
    with a weight matrix, which is then treated as a linear-like op."""
    op = module_op(module)
    shapes = [(a, q.shape) for a, q in module.named_parameters(recurse=False)]
    shapes += [(p.attr, p.shape) for p in parametrized]
    if op is None and any(a.endswith("weight") and len(shape) >= 2 for a, shape in shapes):
        return "module"
    return op


def _skipped(module: nn.Module) -> str:
    return f"{type_before_parametrizations(module).__name__} was registered with ghn.register_op(..., None) (skipped)"


class _Builder:
    """Turns the autograd graph of a trace into nodes and edges (see module docstring)."""

    def __init__(self, sites: dict[str, _ParamSite], trace, tied: dict[str, str]):
        self.sites = sites
        self.trace = trace
        self.nodes: list[Node] = [Node("input", "input")]
        self.edges: list[tuple[int, int]] = []
        self.bound: set[str] = set()
        self.free_node: dict[str, int] = {}  # free parameter name -> its node
        self.op_count: dict[str, int] = {}
        self.aliases: dict[str, list[str]] = {}
        for alias, canonical in tied.items():
            self.aliases.setdefault(canonical, []).append(alias)
        self.group: dict[str, list[str]] = {}  # module path -> its module-role params
        for s in sites.values():
            if s.role in _MODULE_ROLES:
                self.group.setdefault(s.module_path, []).append(s.name)

    def run(self) -> tuple[list[Node], list[tuple[int, int]]]:
        fns = self._collect_fns()
        # per autograd fn: kept node index, or (for collapsed fns) the kept nodes and params that flow through it
        kept: dict[Any, int] = {}
        through: dict[Any, tuple[frozenset[int], frozenset[str]]] = {}
        for fn in sorted(fns, key=lambda f: f._sequence_nr()):
            srcs: set[int] = set()
            params: set[str] = set()
            n_inputs = 0
            for child, _ in fn.next_functions:
                if child is None:
                    continue
                n_inputs += 1
                if child in kept:
                    srcs.add(kept[child])
                elif child in through:
                    s, p = through[child]
                    srcs |= s
                    params |= p
                else:  # a leaf
                    leaf = self._leaf_name(child)
                    if leaf is False:
                        continue
                    if leaf is None:
                        srcs.add(0)
                    else:
                        params.add(leaf)
            # Only ops we know are nodes; parameters flow through collapsed fns (transposes, views, casts) to the
            # first real op that uses them, which becomes the node of their module.
            op = autograd_op(type(fn).__name__, n_inputs)
            if op is not None:
                module_params = sorted(p for p in params if self.sites[p].role in _MODULE_ROLES)
                kept[fn] = self._add_op_node(op, module_params, params, srcs)
            else:
                through[fn] = (frozenset(srcs), frozenset(params))
        out_srcs: set[int] = set()
        for t in self.trace.outputs:
            fn = t.grad_fn
            if fn is None:  # an output that is itself a parameter or input
                leaf = self.trace.leaves.get(id(t))
                if leaf is None:
                    out_srcs.add(0)
                else:
                    out_srcs.add(self._free_or_group_node(leaf))
            elif fn in kept:
                out_srcs.add(kept[fn])
            else:
                s, p = through.get(fn, (frozenset(), frozenset()))
                out_srcs |= s
                out_srcs |= {self._free_or_group_node(q) for q in p}
        self._add_unreached()
        out = self._new_node(Node("output", "output"))
        self.edges.extend((s, out) for s in sorted(out_srcs))
        return self.nodes, sorted(set(self.edges))

    def _collect_fns(self) -> list:
        seen: set = set()
        stack = [t.grad_fn for t in self.trace.outputs if t.grad_fn is not None]
        fns = []
        while stack:
            fn = stack.pop()
            if fn in seen:
                continue
            seen.add(fn)
            if type(fn).__name__ == "AccumulateGrad":
                continue
            fns.append(fn)
            stack.extend(c for c, _ in fn.next_functions if c is not None and c not in seen)
        return fns

    def _leaf_name(self, fn) -> str | None | bool:
        """Canonical parameter name, ``None`` for a model input, ``False`` for anything else."""
        var = getattr(fn, "variable", None)
        if var is None or id(var) not in self.trace.leaves:
            return False
        name = self.trace.leaves[id(var)]
        if name is not None and name not in self.sites:
            return False  # a parameter we do not predict (skipped module, integer dtype)
        return name

    def _new_node(self, node: Node) -> int:
        self.nodes.append(node)
        return len(self.nodes) - 1

    def _auto_name(self, op: str) -> str:
        k = self.op_count.get(op, 0)
        self.op_count[op] = k + 1
        return f"{op}_{k}"

    def _add_op_node(self, op: str, module_params: list[str], params: set[str], srcs: set[int]) -> int:
        free = sorted(p for p in params if self.sites[p].role not in _MODULE_ROLES)
        for p in free:
            srcs.add(self._free_or_group_node(p))
        node_params: tuple[ParamInfo, ...] = ()
        name, module = "", ""
        unbound = [p for p in module_params if p not in self.bound]
        if unbound:
            site = self.sites[unbound[0]]
            module, op = site.module_path, site.op or op
            node_params = self._bind_group(site.module_path)
            name = module or self._auto_name(op)
        elif module_params:  # a second use of already-bound parameters (weight sharing, a tied head)
            module = self.sites[module_params[0]].module_path
            # an edge from the node that owns the shared tensor tells the GNN about the sharing
            srcs.add(self._free_or_group_node(module_params[0]))
        if op not in OP_ID:
            op = "module"
        if not name:
            name = self._auto_name(op)
        if not srcs and op not in ("pos_embed", "cls_token", "layer_scale", "rel_pos_bias", "free_param"):
            srcs.add(0)  # e.g. an embedding of integer token ids: fed by the input
        idx = self._new_node(Node(name, op, module, node_params))
        self.edges.extend((s, idx) for s in srcs)
        return idx

    def _bind_group(self, module_path: str) -> tuple[ParamInfo, ...]:
        infos = []
        for p in self.group.get(module_path, []):
            if p not in self.bound:
                self.bound.add(p)
                infos.append(self._info(p))
        return tuple(infos)

    def _info(self, name: str) -> ParamInfo:
        s = self.sites[name]
        return ParamInfo(name, s.role, tuple(s.tensor.shape), tuple(self._aliases(name)))

    def _aliases(self, name: str) -> list[str]:
        return self.aliases.get(name, [])

    def _free_or_group_node(self, name: str) -> int:
        """The node of a free parameter (created on first use), or the node a module parameter is bound to."""
        if name in self.free_node:
            return self.free_node[name]
        s = self.sites[name]
        if s.role in _MODULE_ROLES:
            if name not in self.bound:
                idx = self._new_node(Node(s.module_path or self._auto_name(s.op or "module"), s.op or "module",
                                          s.module_path, self._bind_group(s.module_path)))
                for p in self.group.get(s.module_path, []):
                    self.free_node[p] = idx
                return idx
            return next(i for i, n in enumerate(self.nodes) if any(p.name == name for p in n.params))
        self.bound.add(name)
        idx = self._new_node(Node(name, free_param_op(s.role), s.module_path, (self._info(name),)))
        self.free_node[name] = idx
        return idx

    def _add_unreached(self) -> None:
        """Parameters the forward pass never used still get a node (isolated), so that they are predicted."""
        for name in self.sites:
            if name not in self.bound:
                self._free_or_group_node(name)
