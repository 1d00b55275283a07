"""Computational graphs of PyTorch models (built by :func:`ghn.build.build_graph`).

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

from .binding import ROLES, CoverageReport, ParamInfo
from .errors import GraphError
from .ops import NORM_OPS, OP_ID
from .parametrized import Parametrized

__all__ = ["Node", "Graph", "canonical_shape", "residual_branch_ends", "MAX_HOPS"]

MAX_HOPS = 8
_FORMAT_VERSION = 1


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
