"""Node encoders and Graphormer layers: graphs → one embedding per node.

Shape legend: ``B`` graphs in a batch, ``N`` nodes (padded to the largest graph), ``d`` hidden size,
``H`` attention heads.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .graph import Graph
from .ops import OPS

__all__ = ["GraphBatch", "collate", "NodeEncoder", "GraphormerLayer", "GraphEncoder"]

#: op embedding rows; more than len(OPS) so that ops appended later fit existing checkpoints.
OP_SLOTS = 64
#: shape dims are bucketed at half-octave resolution: 0, then 1 + round(2·log2(d)) capped.
SHAPE_BUCKETS = 48
#: sinusoid frequencies (π·2^k) of the depth feature
DEPTH_FREQS = 8


class GraphBatch(dict):
    """Padded tensors of several graphs (a dict, so it moves with ``{k: v.to(device)}``).

    Keys: ``ops`` (B, N) long, ``shapes`` (B, N, 4) long, ``deg_in``/``deg_out`` (B, N) long,
    ``depth`` (B, N) float (topological position in [0, 1]), ``dist`` (B, N, N) long, ``mask`` (B, N) bool
    (True for real nodes).
    """


def collate(graphs: list[Graph], max_hops: int, max_degree: int, device: torch.device | str = "cpu") -> GraphBatch:
    """Pad ``graphs`` into one :class:`GraphBatch` on ``device``."""
    n = max(len(g) for g in graphs)
    b = len(graphs)
    ops = torch.zeros(b, n, dtype=torch.long)
    shapes = torch.zeros(b, n, 4, dtype=torch.long)
    deg_in = torch.zeros(b, n, dtype=torch.long)
    deg_out = torch.zeros(b, n, dtype=torch.long)
    dist = torch.full((b, n, n), max_hops + 1, dtype=torch.long)
    depth = torch.zeros(b, n)
    mask = torch.zeros(b, n, dtype=torch.bool)
    for i, g in enumerate(graphs):
        k = len(g)
        ops[i, :k] = g.op_ids
        shapes[i, :k] = g.shapes
        di, do = g.degrees()
        deg_in[i, :k], deg_out[i, :k] = di.clamp(max=max_degree), do.clamp(max=max_degree)
        dist[i, :k, :k] = g.distances().long().clamp(max=max_hops + 1)
        depth[i, :k] = torch.arange(k) / max(k - 1, 1)  # nodes are in forward order
        mask[i, :k] = True
    return GraphBatch(ops=ops.to(device), shapes=shapes.to(device), deg_in=deg_in.to(device),
                      deg_out=deg_out.to(device), depth=depth.to(device), dist=dist.to(device), mask=mask.to(device))


def shape_buckets(shapes: torch.Tensor) -> torch.Tensor:
    """(…, 4) dims → (…, 4) bucket ids in [0, SHAPE_BUCKETS)."""
    logs = torch.log2(shapes.clamp(min=1).double()).mul(2).round().long() + 1
    return torch.where(shapes > 0, logs.clamp(max=SHAPE_BUCKETS - 1), torch.zeros_like(logs))


class NodeEncoder(nn.Module):
    """Op embedding + shape embedding + in/out-degree (centrality) embedding + depth embedding.

    The depth term (a projection of sinusoids of the node's relative position in forward order) tells apart
    repeated blocks whose neighbourhoods look the same: without it, the 3rd and 5th blocks of a ResNet stage get
    identical embeddings and hence identical predicted weights.

    Shapes:
        input: a :class:`GraphBatch`; output: (B, N, d).
    """

    def __init__(self, d: int, max_degree: int):
        super().__init__()
        assert len(OPS) <= OP_SLOTS
        self.op = nn.Embedding(OP_SLOTS, d)
        self.shape = nn.Embedding(4 * SHAPE_BUCKETS, d)  # one table, offset per position (c_out, c_in, k_h, k_w)
        self.deg_in = nn.Embedding(max_degree + 1, d)
        self.deg_out = nn.Embedding(max_degree + 1, d)
        self.depth = nn.Linear(2 * DEPTH_FREQS, d)
        self.register_buffer("offsets", torch.arange(4) * SHAPE_BUCKETS, persistent=False)
        self.register_buffer("freqs", math.pi * 2.0 ** torch.arange(DEPTH_FREQS), persistent=False)

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        shape = self.shape(shape_buckets(batch["shapes"]) + self.offsets).sum(-2)
        angles = batch["depth"][..., None] * self.freqs  # (B, N, F)
        depth = self.depth(torch.cat([angles.sin(), angles.cos()], dim=-1))
        return (self.op(batch["ops"]) + shape + self.deg_in(batch["deg_in"]) + self.deg_out(batch["deg_out"])
                + depth)


class GraphormerLayer(nn.Module):
    """Pre-norm transformer block over the nodes of each graph, with an additive attention bias.

    Shapes:
        x: (B, N, d); bias: (B, H, N, N) float (−inf on padded keys) → (B, N, d).
    """

    def __init__(self, d: int, heads: int, ffn_ratio: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.norm1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.norm2 = nn.LayerNorm(d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn_ratio * d), nn.GELU(), nn.Linear(ffn_ratio * d, d))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=self.dropout if self.training else 0.0)
        x = x + self.proj(a.transpose(1, 2).reshape(b, n, d))
        return x + self.ffn(self.norm2(x))


class GraphEncoder(nn.Module):
    """Graphs → node embeddings: :class:`NodeEncoder`, then Graphormer layers whose attention is biased by the
    forward and backward shortest-path distances between nodes (each head learns its own bias per distance).

    Shapes:
        input: a :class:`GraphBatch`; output: (B, N, d), padded rows are garbage (mask them).
    """

    def __init__(self, d: int, layers: int, heads: int, max_hops: int, max_degree: int, ffn_ratio: int,
                 dropout: float):
        super().__init__()
        self.heads = heads
        self.nodes = NodeEncoder(d, max_degree)
        self.spd_fwd = nn.Embedding(max_hops + 2, heads)
        self.spd_bwd = nn.Embedding(max_hops + 2, heads)
        self.layers = nn.ModuleList(GraphormerLayer(d, heads, ffn_ratio, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(d)
        for emb in (self.spd_fwd, self.spd_bwd):
            nn.init.zeros_(emb.weight)  # start from plain attention; distances are learned to matter

    def attention_bias(self, batch: GraphBatch) -> torch.Tensor:
        """(B, H, N, N): bias[i, j] = fwd[d(i→j)] + bwd[d(j→i)], −inf where key j is padding."""
        dist = batch["dist"]
        bias = self.spd_fwd(dist) + self.spd_bwd(dist.transpose(1, 2))  # (B, N, N, H)
        bias = bias.permute(0, 3, 1, 2)
        key_mask = ~batch["mask"][:, None, None, :]
        return bias.masked_fill(key_mask, -math.inf)

    def forward(self, batch: GraphBatch) -> torch.Tensor:
        x = self.nodes(batch)
        bias = self.attention_bias(batch).to(x.dtype)
        for layer in self.layers:
            x = layer(x, bias)
        return self.norm(x)
