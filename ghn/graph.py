"""Computational graphs of PyTorch models: ``build_graph(model, example_inputs) -> Graph``.

A graph has one node per op that owns parameters (a conv with its bias, a norm with scale and shift, ...), one
node per free parameter (``pos_embed``, ``cls_token``, layer-scale ``gamma``, ...), one node per parameter-free
op that shapes the flow (add, cat, relu, pooling, attention, ...), plus an ``input`` and an ``output`` node.
Edges follow data flow. Ops that only move data (views, casts, indexing, expand) are collapsed away.

Work is O(N + E) over the autograd graph, plus a BFS per node for shortest-path distances (capped at
``max_hops``), which the GHN uses as attention bias.
"""
from __future__ import annotations

import math
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
from torch.nn.utils.parametrize import type_before_parametrizations

from .binding import ROLES, CoverageReport, ParamInfo, free_param_op, param_role
from .errors import GraphError, UnsupportedModuleError
from .model_checks import check_model
from .inputs import ExampleInputs, resolve_example_inputs
from .ops import NORM_OPS, OP_ID, SKIP, autograd_op, module_op
from .parametrized import Parametrized, find_parametrized
from .trace import trace_model

__all__ = ["Node", "Graph", "build_graph", "canonical_shape", "residual_branch_ends", "MAX_HOPS"]

MAX_HOPS = 8
_FORMAT_VERSION = 1
_MODULE_ROLES = frozenset({"weight", "weight_t", "embedding", "bias", "norm_weight", "norm_bias"})


@dataclass
class Node:
    """One op of the graph.

    Attributes:
        name: unique within the graph (module path, parameter name, or ``<op>_<k>``).
        op: one of :data:`ghn.ops.OPS`.
        module: path of the module that ran the op (``""`` if unknown).
        params: the parameters bound to this node.
    """

    name: str
    op: str
    module: str = ""
    params: tuple[ParamInfo, ...] = ()

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """The node's shape feature ``(c_out, c_in, k_h, k_w)``: its main parameter's canonical shape, 0-padded."""
        if not self.params:
            return (0, 0, 0, 0)
        main = max(self.params, key=lambda p: (len(p.shape), p.numel))
        dims = canonical_shape(main.role, main.shape)
        if len(dims) > 4:
            dims = (*dims[:3], math.prod(dims[3:]))
        return tuple(dims) + (0,) * (4 - len(dims))  # type: ignore[return-value]


def canonical_shape(role: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the decoder produces before any transpose: ``(c_out, c_in, *kernel)`` or ``(n,)``.

    ``weight_t`` tensors are stored ``(c_in, c_out, ...)`` and are produced transposed; free tensors lose leading
    singleton dims (a ``(1, 1, d)`` cls token is a vector, a ``(1, n, d)`` pos_embed a matrix).
    """
    if role == "weight_t":
        return (shape[1], shape[0], *shape[2:])
    if role in ("weight", "embedding"):
        return tuple(shape)
    dims = tuple(shape)
    while len(dims) > 1 and dims[0] == 1:
        dims = dims[1:]
    return dims


def residual_branch_ends(graph: Graph) -> list[int]:
    """Nodes that scale the end of a residual branch: a norm, or a layer scale (through its ``mul``), whose output
    is summed by an ``add`` with another input nearer the graph input (fewer hops): the skip path.

    These are the gains libraries initialise at or near zero so that each block starts as the identity (timm's
    ``zero_init_last`` BatchNorm, ConvNeXt's layer scale 1e-6). Returns node indices in graph order.
    """
    parents, children = graph.parents(), graph.children()
    hops = [math.inf] * len(graph.nodes)  # shortest distance from the input node (uncapped, unlike distances())
    hops[0] = 0
    queue = deque([0])
    while queue:
        i = queue.popleft()
        for j in children.get(i, []):
            if hops[j] == math.inf:
                hops[j] = hops[i] + 1
                queue.append(j)

    def gain_of(p: int) -> int | None:
        """The node whose parameters scale ``p``'s output: ``p`` itself (a norm), or the layer scale of a mul."""
        if graph.nodes[p].op in NORM_OPS:
            return p
        if graph.nodes[p].op == "mul":
            return next((q for q in parents.get(p, []) if graph.nodes[q].op == "layer_scale"), None)
        return None

    ends: set[int] = set()
    for a, node in enumerate(graph.nodes):
        ins = parents.get(a, [])
        if node.op != "add" or len(ins) < 2:
            continue
        for p in ins:
            g = gain_of(p)
            if g is not None and graph.nodes[g].params and any(hops[q] < hops[p] for q in ins if q != p):
                ends.add(g)
    return sorted(ends)


@dataclass
class Graph:
    """A model's computational graph.

    Attributes:
        nodes: nodes in forward (topological) order; ``nodes[0]`` is ``input``, ``nodes[-1]`` is ``output``.
        edges: ``(src, dst)`` node indices, following data flow.
        missing: canonical parameter name → why it is not bound to a node (not predicted).
        tied: alias → canonical name for parameters that share a tensor.
        numel: canonical parameter name → number of elements, for every parameter of the model.
        parametrized: effective name → how a tensor computed by a parametrization (weight norm, ...) is written;
            it is bound under its effective name (``conv.weight``) like a plain parameter (:mod:`ghn.parametrized`).
        model_name: the model's class name.
    """

    nodes: list[Node]
    edges: list[tuple[int, int]]
    missing: dict[str, str] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)
    numel: dict[str, int] = field(default_factory=dict)
    parametrized: dict[str, Parametrized] = field(default_factory=dict)
    model_name: str = ""
    max_hops: int = MAX_HOPS
    _distances: torch.Tensor | None = field(default=None, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.nodes)

    def __repr__(self) -> str:
        return (f"Graph({self.model_name}, nodes={len(self.nodes)}, edges={len(self.edges)}, "
                f"params={len(self.param_names)}, {self.coverage.summary()})")

    # ---- views -------------------------------------------------------------------------------------------------
    def parents(self) -> dict[int, list[int]]:
        """Node index → the indices of the nodes feeding it (absent: none)."""
        out: dict[int, list[int]] = {}
        for s, d in self.edges:
            out.setdefault(d, []).append(s)
        return out

    def children(self) -> dict[int, list[int]]:
        """Node index → the indices of the nodes it feeds (absent: none)."""
        out: dict[int, list[int]] = {}
        for s, d in self.edges:
            out.setdefault(s, []).append(d)
        return out

    @property
    def param_names(self) -> list[str]:
        """Canonical names of the tensors bound to nodes (the ones a GHN predicts), in node order; a parametrized
        tensor by its effective name (see :attr:`parametrized`)."""
        return [p.name for n in self.nodes for p in n.params]

    @property
    def params(self) -> list[tuple[int, ParamInfo]]:
        """``(node index, ParamInfo)`` for every bound parameter, in node order."""
        return [(i, p) for i, n in enumerate(self.nodes) for p in n.params]

    @property
    def coverage(self) -> CoverageReport:
        """What a GHN can predict for this model (the binding; decoding adds no further gaps), by parameter name: a
        parametrized tensor counts as the parameters written for it."""
        predicted = [o for n in self.param_names
                     for o in (self.parametrized[n].originals if n in self.parametrized else (n,))]
        return CoverageReport(predicted=predicted, missing=dict(self.missing), tied=dict(self.tied),
                              numel=dict(self.numel), parametrized={n: p.how for n, p in self.parametrized.items()})

    @property
    def edge_index(self) -> torch.Tensor:
        """Edges as a ``(2, E)`` long tensor (PyG convention: row 0 sources, row 1 targets)."""
        if not self.edges:
            return torch.zeros(2, 0, dtype=torch.long)
        return torch.tensor(self.edges, dtype=torch.long).t().contiguous()

    @property
    def op_ids(self) -> torch.Tensor:
        """``(N,)`` op ids (:data:`ghn.ops.OP_ID`)."""
        return torch.tensor([OP_ID[n.op] for n in self.nodes], dtype=torch.long)

    @property
    def shapes(self) -> torch.Tensor:
        """``(N, 4)`` shape features ``(c_out, c_in, k_h, k_w)``; zeros for parameter-free ops."""
        return torch.tensor([n.shape for n in self.nodes], dtype=torch.long).reshape(len(self.nodes), 4)

    def degrees(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(in_degree, out_degree)``, each ``(N,)``."""
        deg_in, deg_out = torch.zeros(len(self), dtype=torch.long), torch.zeros(len(self), dtype=torch.long)
        for s, d in self.edges:
            deg_out[s] += 1
            deg_in[d] += 1
        return deg_in, deg_out

    def distances(self) -> torch.Tensor:
        """``(N, N)`` uint8 shortest-path hops along edges, ``d[i, j]`` from i to j.

        0 on the diagonal, ``max_hops + 1`` where j is not reachable from i within ``max_hops``.
        Computed once (a capped BFS per node) and cached.
        """
        if self._distances is None:
            self._distances = _capped_bfs(len(self), self.edges, self.max_hops)
        return self._distances

    # ---- exports -----------------------------------------------------------------------------------------------
    def to_data(self):
        """This graph as a ``torch_geometric.data.Data``.

        Fields: ``x`` (N,) op ids, ``shape`` (N, 4), ``edge_index`` (2, E), ``edge_attr`` (E, 1) hop count (1),
        ``spd`` (N, N) capped distances, and ``node_names`` / ``node_ops`` / ``param_names`` as lists.
        """
        with warnings.catch_warnings():
            # torch_geometric calls the deprecated torch.jit.script at import time; the FutureWarning is about
            # its code, not the caller's, and says nothing a ghn user can act on.
            warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
            from torch_geometric.data import Data
        ei = self.edge_index
        return Data(x=self.op_ids, shape=self.shapes, edge_index=ei, edge_attr=torch.ones(ei.shape[1], 1),
                    spd=self.distances(), num_nodes=len(self), node_names=[n.name for n in self.nodes],
                    node_ops=[n.op for n in self.nodes], param_names=self.param_names)

    def to_networkx(self):
        """This graph as a ``networkx.DiGraph``; node ``i`` has attributes name, op, module, params, shape."""
        import networkx as nx
        g = nx.DiGraph(model=self.model_name)
        for i, n in enumerate(self.nodes):
            g.add_node(i, name=n.name, op=n.op, module=n.module, params=[p.name for p in n.params], shape=n.shape)
        g.add_edges_from(self.edges)
        return g

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (for caches); :meth:`from_dict` inverts it."""
        return {
            "format": _FORMAT_VERSION, "model_name": self.model_name, "max_hops": self.max_hops,
            "nodes": [{"name": n.name, "op": n.op, "module": n.module,
                       "params": [[p.name, p.role, list(p.shape), list(p.tied)] for p in n.params]}
                      for n in self.nodes],
            "edges": [list(e) for e in self.edges],
            "missing": self.missing, "tied": self.tied, "numel": self.numel,
            "parametrized": [p.to_list() for p in self.parametrized.values()],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Graph:
        """Rebuild a graph from :meth:`to_dict` output.

        Raises:
            GraphError: if the dict is not a graph of this format.
        """
        try:
            if d.get("format") != _FORMAT_VERSION:
                raise GraphError(f"graph format {d.get('format')!r} is not {_FORMAT_VERSION}; rebuild the graph "
                                 "with ghn.build_graph (and clear the cache that held it)")
            nodes = [Node(n["name"], n["op"], n["module"],
                          tuple(ParamInfo(p[0], p[1], tuple(p[2]), tuple(p[3])) for p in n["params"]))
                     for n in d["nodes"]]
            for n in nodes:
                if n.op not in OP_ID or any(p.role not in ROLES for p in n.params):
                    raise GraphError(f"node {n.name!r} has an unknown op or role; rebuild the graph")
            edges = [(int(s), int(t)) for s, t in d["edges"]]
            if any(not (0 <= s < len(nodes) and 0 <= t < len(nodes)) for s, t in edges):
                raise GraphError("graph has an edge to a node that does not exist; rebuild the graph")
            parametrized = [Parametrized.from_list(p) for p in d.get("parametrized", [])]  # absent: none
            return cls(nodes=nodes, edges=edges, missing=dict(d["missing"]), tied=dict(d["tied"]),
                       numel={k: int(v) for k, v in d["numel"].items()},
                       parametrized={p.name: p for p in parametrized}, model_name=d["model_name"],
                       max_hops=int(d["max_hops"]))
        except GraphError:
            raise
        except (KeyError, TypeError, ValueError, IndexError) as e:
            raise GraphError(f"not a ghn graph dict ({type(e).__name__}: {e}); rebuild the graph") from e


def _capped_bfs(n: int, edges: list[tuple[int, int]], max_hops: int) -> torch.Tensor:
    adj: list[list[int]] = [[] for _ in range(n)]
    for s, t in edges:
        adj[s].append(t)
    dist = torch.full((n, n), max_hops + 1, dtype=torch.uint8)
    rows = []
    for src in range(n):
        seen = {src: 0}
        frontier = deque([src])
        while frontier:
            u = frontier.popleft()
            du = seen[u]
            if du == max_hops:
                continue
            for v in adj[u]:
                if v not in seen:
                    seen[v] = du + 1
                    frontier.append(v)
        rows.append(seen)
    for src, seen in enumerate(rows):
        idx = torch.tensor(list(seen.keys()), dtype=torch.long)
        dist[src, idx] = torch.tensor(list(seen.values()), dtype=torch.uint8)
    return dist


# ---- building ------------------------------------------------------------------------------------------------
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
