"""The low-rank decoder: node embeddings → parameter tensors of any shape, untiled.

Design (why not LoGAH's tiling): LoGAH emits factors ``A`` (c_out·k × r) and ``B`` (r × c_in·k) from heads whose
output size is a fixed maximum width, and tiles beyond it, so wide layers repeat rows. Here every row ``i`` of
``A`` is ``Φ(i)ᵀ·U``: a fixed index code ``Φ(i) ∈ R^p`` (random Fourier features of the integer ``i``, never
periodic, near-orthogonal for different ``i``) times a small ``p × r`` matrix ``U`` that the decoder produces
from the node embedding. Columns of ``B`` are ``V·Φ(j)`` likewise. So

    W[o, c, a, b] = Φ(o)ᵀ · U_a · V_b · Φ(c) / (p·√r)        (U_a per kernel row a, V_b per kernel column b)

* any width is reachable and no row repeats (``Φ(i) ≠ Φ(j)``), while the decoder's size is independent of width;
* channel ``o`` carries the same code in the rows of one layer and the columns of the next, so consecutive
  predicted layers are consistent (the GHN reasons in a ``p``-dimensional space embedded in the model's width);
* the cost is ``2·r`` multiply-adds per predicted element (the product ``A·B``) plus O((rows + cols)·p·r).

Then outputs are fan-in scaled: weights by ``gain/√fan_in``, embeddings by ``gain/√dim``; vectors (biases, norm
scales, cls tokens, layer-scale) come from a vector head: ``offset + gain·(b₀ + Φ(i)ᵀu/√p)``.

Decoder v2 (``GHNConfig.decoder_version = 2``): on the *data-facing* axes — the columns of a layer that reads the
model's input (pixels, input channels), an embedding's rows (tokens) and the rows of a layer that writes the output
(classes, vocabulary) — the code is ``Φ(i) + g·E[i]`` with a learned table ``E`` of fixed size (zero at init; ``g``
its learning-rate multiplier). Those axes mean the same in every model of a task, and fixed codes cap what a first
layer can see: a GHN trained on one linear classifier reached 0.73 of direct training's accuracy with fixed codes,
0.98 with learned ones (``benchmarks/results/experiments.md``).

Decoder v3 (``pooled_flatten``): a linear reading a flattened conv map — what hand-written CNNs end with — is
predicted on the codes of the map's channels and spread evenly over their positions (``ParamQuery.in_spread``):
pooling, then a linear. v1/v2 gave each of the ``C·H·W`` columns its own code, unrelated to the channel codes of
the conv before it, and such layers came out near zero (ledger E17).

Two options (``GHNConfig.centered_fan_in``, ``output_gain``; off by default, ledger E21): a weight whose columns
are hidden channels (not data-facing, more than one) predicted on column codes centred over its own columns, so each
row sums to zero over its input channels at every kernel position, as default inits do in expectation — without
it, one shared shift of all predicted weights meets non-negative activations (after ReLU/GELU, max pooling) as a
large negative bias and can silence whole layers for good; and the layers writing the output (classes,
vocabulary) started at ``output_gain`` of their fan-in-scaled size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
import torch.nn as nn

from .binding import ROLE_ID, ROLES, ParamInfo
from .graph import canonical_shape
from .ops import NORM_OPS

__all__ = ["IndexCode", "LowRankDecoder", "ParamQuery", "balance_gradients", "graph_queries"]

# role → (offset, initial gain). Offsets put untrained outputs where default initialisations are
# (norm scales at 1, biases at 0); gains are learned on top (log-parametrised).
ROLE_INIT: dict[str, tuple[float, float]] = {
    "weight": (0.0, math.sqrt(2.0)), "weight_t": (0.0, math.sqrt(2.0)), "embedding": (0.0, 1.0),  # β = 2 (He)
    "bias": (0.0, 0.02), "norm_weight": (1.0, 0.02), "norm_bias": (0.0, 0.02),
    "pos_embed": (0.0, 0.02), "cls_token": (0.0, 0.02), "layer_scale": (0.1, 0.02),
    "rel_pos": (0.0, 0.02), "free": (0.0, 0.02),
}
_FAN_IN_ROLES = frozenset({"weight", "weight_t"})
_SLOT_ROW, _SLOT_COL, _SLOT_VEC = 0, 1, 2
_CODE_BLOCK = 4096  # rows of the index code computed at a time


class IndexCode(nn.Module):
    """Φ(i) = √2·cos(ω·i + φ) ∈ R^p for integer indices i (random Fourier features).

    For integer i ≠ j and ω ~ U(0, 2π), E[Φ(i)·Φ(j)]/p = E[cos(ω(i−j))] = 0, and E[Φ(i)_k²] = 1.
    ``ω`` and ``φ`` are buffers (saved with the checkpoint), fixed by ``seed``.

    Shapes:
        input: n (an int); output: (n, p).
    """

    def __init__(self, p: int, seed: int):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.register_buffer("freq", torch.rand(p, generator=g, dtype=torch.float64) * 2 * math.pi)
        self.register_buffer("phase", torch.rand(p, generator=g, dtype=torch.float64) * 2 * math.pi)

    def forward(self, n: int) -> torch.Tensor:
        # float64 keeps ω·i exact enough for vocabularies of 10⁵+ rows; the result is cast to float32. Blocks of
        # rows bound the float64 temporaries (a whole 50k-row vocabulary would need 4x the table itself).
        out = torch.empty(n, len(self.freq), device=self.freq.device)
        for start in range(0, n, _CODE_BLOCK):
            i = torch.arange(start, min(n, start + _CODE_BLOCK), device=self.freq.device, dtype=torch.float64)
            out[start:start + len(i)] = math.sqrt(2.0) * torch.cos(i[:, None] * self.freq + self.phase)
        return out


def _position_code(pos: torch.Tensor, size: torch.Tensor, d: int) -> torch.Tensor:
    """Sinusoidal code of kernel position ``pos`` within a kernel of ``size``: (Q,) → (Q, d), no parameters."""
    half = d // 4
    freq = torch.exp(-math.log(100.0) * torch.arange(half, device=pos.device, dtype=torch.float32) / max(half, 1))
    rel = (pos.float() + 0.5) / size.float()
    parts = [torch.sin(rel[:, None] * freq * math.pi), torch.cos(rel[:, None] * freq * math.pi),
             torch.sin(size.float()[:, None] * freq), torch.cos(size.float()[:, None] * freq)]
    code = torch.cat(parts, dim=1)
    return nn.functional.pad(code, (0, d - code.shape[1]))


def _depth_code(depth: torch.Tensor, d: int) -> torch.Tensor:
    """Sinusoids of a node's relative position in forward order (Q,) in [0, 1] → (Q, d), unit RMS, no parameters.

    Frequencies π·2^(k/4), k < d/2: from one half-turn over the whole graph to ~1/200 of it, so neighbouring
    blocks of a deep model differ as much as the first and the last.
    """
    freq = math.pi * 2.0 ** (torch.arange(d // 2, device=depth.device, dtype=torch.float32) / 4)
    angles = depth[:, None] * freq
    return nn.functional.pad(torch.cat([angles.sin(), angles.cos()], dim=1), (0, d - 2 * (d // 2)))


@dataclass(frozen=True)
class ParamQuery:
    """One tensor to decode: which node's embedding, the tensor's role and shape, and which axes face the data.

    ``reads_input``: the node consumes the model's input directly (its columns — or an embedding's rows — index
    input features, channels or tokens); ``writes_output``: the node produces the model's output (its rows index
    classes or vocabulary). These axes mean the same thing in every model of a task, so they get learned codes.
    ``in_spread``: how many of the node's columns each output channel of the nearest parameterised layer upstream
    feeds (> 1 for a linear reading a flattened conv map; 1 otherwise).
    """

    node: int  # row of the embedding matrix
    info: ParamInfo
    reads_input: bool = False
    writes_output: bool = False
    in_spread: int = 1  # columns per output channel of the producing layer (a flattened C x H x W map: H*W)
    row_blocks: int = 1  # a fused q/k/v projection: its rows are this many stacked blocks (3), else 1
    positions: bool = False  # an embedding looked up by position (fewer rows than the token table beside it)

    @property
    def shape(self) -> tuple[int, ...]:
        return canonical_shape(self.info.role, self.info.shape)

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) >= 2

    @property
    def kernel(self) -> tuple[int, int]:
        """(ka, kb): kernel rows folded into A's rows, the remaining kernel dims into B's columns."""
        k = self.shape[2:]
        return (k[0] if k else 1), math.prod(k[1:]) if len(k) > 1 else 1


def graph_queries(graph) -> list[ParamQuery]:
    """One :class:`ParamQuery` per bound parameter of ``graph`` (a :class:`ghn.Graph`), in node order, with its
    data-facing flags read off the edges from the ``input`` node (index 0) and into the ``output`` node (last)."""
    last = len(graph.nodes) - 1
    reads = {dst for src, dst in graph.edges if src == 0}
    writes = {src for src, dst in graph.edges if dst == last}
    parents, children = graph.parents(), graph.children()
    # Token and position tables are both looked up by integer ids the trace cannot follow (both read the input):
    # the token table is the largest such embedding, and one with fewer rows beside it indexes positions.
    lookups = {i: info.shape[0] for i, info in graph.params if info.role == "embedding" and i in reads}
    tokens = max(lookups.values(), default=0)
    return [ParamQuery(i, info, i in reads, i in writes, _in_spread(graph, parents, i, info),
                       _row_blocks(graph, children, i, info), lookups.get(i, tokens) < tokens)
            for i, info in graph.params]


_ATTENTION_OPS = frozenset({"matmul", "attention"})


def _row_blocks(graph, children: dict[int, list[int]], node: int, info: ParamInfo, hops: int = 4) -> int:
    """3 for a fused q/k/v projection — a matrix with 3x as many rows as columns whose output reaches an attention
    product (``matmul``/``attention``) within ``hops`` parameter-free ops (GPT-2's ``c_attn``, nanoGPT's ``qkv``,
    ``nn.MultiheadAttention``'s ``in_proj_weight``); else 1. Its rows are then three stacked blocks (q, k, v)."""
    shape = canonical_shape(info.role, info.shape)
    if len(shape) != 2 or shape[0] != 3 * shape[1] or info.role not in _FAN_IN_ROLES:
        return 1
    if graph.nodes[node].op == "attention":
        return 3
    frontier, seen = [node], {node}
    for _ in range(hops):
        nxt = []
        for i in frontier:
            for j in children.get(i, []):
                if j in seen:
                    continue
                seen.add(j)
                if graph.nodes[j].op in _ATTENTION_OPS:
                    return 3
                if not graph.nodes[j].params:
                    nxt.append(j)
        frontier = nxt
    return 1


_SPATIAL_OPS = frozenset({"conv", "dw_conv", "conv_transpose"}) | (NORM_OPS - {"layer_norm", "rms_norm"})


def _in_spread(graph, parents: dict[int, list[int]], node: int, info: ParamInfo) -> int:
    """For a linear layer fed by a single chain of parameter-free ops (activation, pooling, flatten) from a conv or a
    channel norm: its columns per channel of that producer (a flattened map). 1 otherwise — a concat or a sum on the
    way, another producer, or columns that are not a multiple of the producer's width."""
    shape = canonical_shape(info.role, info.shape)
    if len(shape) != 2 or graph.nodes[node].op != "linear":
        return 1
    i = node
    while len(parents.get(i, [])) == 1:
        i = parents[i][0]
        own, op = graph.nodes[i].params, graph.nodes[i].op
        if own:  # the producer: its output width is its first weight's rows, or a norm's size
            width = canonical_shape(own[0].role, own[0].shape)[0]
            ok = op in _SPATIAL_OPS and width and shape[1] > width and shape[1] % width == 0
            return shape[1] // width if ok else 1
        if op in ("cat", "add", "mul", "matmul", "attention", "input"):
            return 1
    return 1


def _fan_in_scaled(scale: torch.Tensor, cols: int, kernel: int, p: int) -> torch.Tensor:
    """``scale/√fan_in``, with the fan-in counted where the signal lives: inputs produced by a predicted layer lie
    in the p-dim span of the codes, where Φ_cᵀΦ_c has eigenvalues ≈ C (not √C) once C > p, so a plain 1/√C would
    grow activations by √(C/p) per layer; 1/√C · √(p/C) keeps them width-independent."""
    return scale / math.sqrt(cols * kernel) * min(1.0, math.sqrt(p / cols))


def _sinusoids(n: int, p: int, device: torch.device | str) -> torch.Tensor:
    """Codes of positions 0..n-1: ``√2·sin/cos(i·ω_k)`` with geometric ``ω_k = 10000^(-2k/p)`` (the Transformer's
    position encoding), (n, p), entries of mean square 1. Unlike Φ's random frequencies, neighbouring positions get
    similar codes and a shift by one position is one fixed rotation of the code, so a layer can relate position i to
    i - 1 linearly: what attention to nearby tokens needs from learned position tables."""
    i = torch.arange(n, device=device, dtype=torch.float64)[:, None]
    freq = 10000.0 ** (-torch.arange(p // 2, device=device, dtype=torch.float64) * 2 / p)
    code = torch.cat([torch.sin(i * freq), torch.cos(i * freq)], dim=1) * math.sqrt(2.0)
    return nn.functional.pad(code, (0, p - code.shape[1]), value=1.0).float()


def _whiten(codes: torch.Tensor) -> torch.Tensor:
    """The nearest codes with a flat spectrum: ``codes`` (n, p) → ``U·Vᵀ·√max(n, p)`` from its thin SVD ``U·S·Vᵀ``.

    Why: n raw Fourier codes of hidden channels are far from orthogonal when n ≈ p (for p = 64, n = 64 the smallest
    singular value is ~1e-7 of the largest, and only ~49 of 64 directions carry 10 % of it), so the weights
    ``Φ_o·M·Φ_cᵀ`` of a width-64 layer live in fewer than 64 effective dimensions and the GHN learns the weak ones
    slowly. Whitened, a width-n space uses every one of its min(n, p) directions equally; entries keep mean square 1.
    The codes of channel i then depend on the width n, which is the same in the rows of a layer and the columns of
    the next, so consecutive layers still agree. Computed in float64 (ill-conditioned inputs), no gradient (fixed).
    """
    u, _, vh = torch.linalg.svd(codes.detach().double(), full_matrices=False)
    return (u @ vh).mul_(math.sqrt(max(codes.shape))).to(codes.dtype)


def balance_gradients(params: dict[str, torch.Tensor], eps: float = 1e-12) -> dict[str, torch.Tensor]:
    """Rescale the gradient reaching each predicted tensor to unit RMS per element (returns ``params``).

    Why: the decoder's weights are shared by every tensor it predicts, so under Adam one tensor with large
    gradients (often the classifier) sets the step size for all of them and the others learn slowly. Adam on the
    model itself normalises per element; this normalises per predicted tensor before the gradients are mixed.
    Only the backward pass changes; values are untouched.
    """
    for t in params.values():
        if t.requires_grad:
            n = math.sqrt(t.numel())
            t.register_hook(lambda g, n=n: g * (n / (g.norm() + eps)))
    return params


class LowRankDecoder(nn.Module):
    """Node embeddings → tensors. See the module docstring for the maths.

    Args:
        d: node embedding size; hidden: trunk width; p: index-code size; r: rank of the factors.
        data_codes: ``(inputs, channels, outputs)`` sizes of the learned code tables added to ``Φ`` on the
            data-facing axes (input features/tokens, input channels of convs, classes/vocabulary); indices
            beyond a table use ``Φ`` alone. ``(0, 0, 0)`` disables them.
        code_gain: the learned tables are multiplied by it (their learning-rate multiplier).
    """

    def __init__(self, d: int, hidden: int, p: int, r: int, code_seed: int,
                 data_codes: tuple[int, int, int] = (0, 0, 0), code_gain: float = 1.0, pooled_flatten: bool = False,
                 centered_fan_in: bool = False, output_gain: float = 1.0, whitened_codes: bool = False,
                 depth_code: float = 0.0, fused_blocks: bool = False, position_codes: int = 0):
        super().__init__()
        self.p, self.r = p, r
        self.pooled_flatten, self.centered_fan_in, self.output_gain = pooled_flatten, centered_fan_in, output_gain
        self.whitened_codes, self.depth_code, self.fused_blocks = whitened_codes, depth_code, fused_blocks
        self.code = IndexCode(p, code_seed)
        # Learned codes start at zero, so an untrained decoder predicts exactly what fixed codes give.
        sizes = dict(zip(("input", "channel", "output"), data_codes))
        # position_codes > 0: position tables get their own kind, smooth sinusoids plus a learned table of that size
        self.position_codes = position_codes
        if position_codes:
            sizes["position"] = position_codes
        # Codes are O(1) while Adam moves a parameter by ~lr a step: the gain is the tables' learning-rate
        # multiplier, so that a code moves as fast, relative to its size, as a directly trained weight does.
        self.code_gain = code_gain
        self.tables = nn.ParameterDict({k: nn.Parameter(torch.zeros(n, p)) for k, n in sizes.items() if n > 0})
        self.role = nn.Embedding(len(ROLES), d)
        self.slot = nn.Embedding(3, d)  # what a query asks for: a row factor U_a, a column factor V_b, a vector
        self.trunk = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                   nn.GELU())
        self.to_u = nn.Linear(hidden, p * r)
        self.to_v = nn.Linear(hidden, r * p)
        self.to_vec = nn.Linear(hidden, p + 2)  # u (p), b0, per-tensor log-scale
        self.log_gain = nn.Parameter(torch.zeros(len(ROLES)))
        self.register_buffer("offset", torch.tensor([ROLE_INIT[r][0] for r in ROLES]))
        self.register_buffer("gain0", torch.tensor([ROLE_INIT[r][1] for r in ROLES]))
        nn.init.zeros_(self.to_vec.weight)
        nn.init.zeros_(self.to_vec.bias)

    def decode(self, h: torch.Tensor, queries: list[ParamQuery],
               out: Mapping[str, torch.Tensor] | None = None) -> Iterator[tuple[ParamInfo, torch.Tensor]]:
        """Yield ``(info, tensor)`` for each query, tensor in the parameter's own shape (fp32).

        All factor heads run in one batched pass; the products ``A·B`` are formed one tensor at a time, so a
        caller that consumes and drops each tensor holds at most one full-size tensor (bounded memory).

        Args:
            out: optional destinations by parameter name (fp32, contiguous, the parameter's shape, on ``h``'s
                device, no autograd): a matrix without a kernel is computed straight into its destination, which is
                then the tensor yielded, so streaming a big model makes no full-size temporary at all.

        Shapes:
            h: (M, d) node embeddings; each query's ``node`` indexes its rows.
        """
        rows, roles, slots, pos, size = [], [], [], [], []
        for q in queries:
            role = ROLE_ID[q.info.role]
            parts = [(_SLOT_VEC, 0, 1)]
            if q.is_matrix:
                ka, kb = self._row_factors(q), q.kernel[1]
                parts += [(_SLOT_ROW, a, ka) for a in range(ka)] + [(_SLOT_COL, b, kb) for b in range(kb)]
            for slot, k, n in parts:
                rows.append(q.node)
                roles.append(role)
                slots.append(slot)
                pos.append(k)
                size.append(n)
        if not queries:
            return
        dev = h.device
        rows_t, roles_t, slots_t = (torch.tensor(v, device=dev) for v in (rows, roles, slots))
        z = h[rows_t] + self.role(roles_t) + self.slot(slots_t)
        # Kernel positions must dominate the trunk's input: with a weak code every kernel row gets nearly the
        # same factor, predicted kernels start as box filters, and spatial structure is learned very slowly.
        z = z + 4.0 * _position_code(torch.tensor(pos, device=dev), torch.tensor(size, device=dev), z.shape[1])
        if self.depth_code:  # where the node sits in the graph, strongly: repeated blocks must not decode alike
            z = z + self.depth_code * _depth_code(rows_t.float() / max(h.shape[0] - 1, 1), z.shape[1])
        t = self.trunk(z)  # (Q, hidden)
        # Each head runs once over all rows that ask for it; then rows are split back per tensor.
        vec_all = self.to_vec(t[slots_t == _SLOT_VEC])  # (n_queries, p + 2), in query order
        u_all = self.to_u(t[slots_t == _SLOT_ROW]).view(-1, self.p, self.r)  # (Σ ka, p, r)
        v_all = self.to_v(t[slots_t == _SLOT_COL]).view(-1, self.r, self.p)  # (Σ kb, r, p)
        # Bounded log-gains: an unbounded exp() lets training collapse a tensor to exactly zero, where the
        # gradient of everything upstream vanishes for good (seen as a loss stuck at ln(classes)).
        gain = self.gain0 * torch.exp(3.0 * torch.tanh(self.log_gain / 3.0))
        # One code table per kind for the widest dimension; Φ(i) does not depend on the width it is sliced for.
        widest = max(max(q.shape[:2]) if q.shape else 1 for q in queries)
        fixed = self.code(widest)
        codes: dict[str, torch.Tensor] = {}
        whitened: dict[int, torch.Tensor] = {}  # hidden codes of width n, whitened (whitened_codes), by n

        def sized(kind: str, n: int) -> torch.Tensor:
            """The first ``n`` codes of ``kind`` (n, p)."""
            if kind not in codes:
                codes[kind] = self._codes(kind, fixed)
            if not (self.whitened_codes and kind == "hidden"):
                return codes[kind][:n]
            if n not in whitened:
                whitened[n] = _whiten(codes[kind][:n])
            return whitened[n]

        iu = iv = 0
        for qi, q in enumerate(queries):
            role_name = q.info.role
            role = ROLE_ID[role_name]
            vec = vec_all[qi]
            rows, cols = self._axis_kinds(q)
            if q.is_matrix:
                ka, kb = self._row_factors(q), q.kernel[1]
                u, v = u_all[iu:iu + ka], v_all[iv:iv + kb]
                iu, iv = iu + ka, iv + kb
                size = gain[role] * self._tensor_scale(vec[-1])
                if rows == "output" and role_name in _FAN_IN_ROLES:
                    size = size * self.output_gain
                w = self._matrix(q, u, v, sized(rows, q.shape[0] // self._blocks(q)),
                                 sized(cols, q.shape[1] // self._spread(q)), size,
                                 out.get(q.info.name) if out else None,
                                 center=self.centered_fan_in and cols == "hidden" and role_name in _FAN_IN_ROLES)
            else:
                w = self._vector(q, vec, sized(rows, q.shape[0] if q.shape else 1), gain[role], self.offset[role])
            yield q.info, self._to_param_layout(q, w)

    def _blocks(self, q: ParamQuery) -> int:
        """Stacked row blocks decoded each with its own row factor (``fused_blocks``: q/k/v of a fused projection)."""
        return q.row_blocks if self.fused_blocks and q.kernel == (1, 1) else 1

    def _row_factors(self, q: ParamQuery) -> int:
        """How many row factors ``U`` the query asks for: one per kernel row, or one per fused block."""
        return q.kernel[0] if q.kernel[0] > 1 else self._blocks(q)

    def _spread(self, q: ParamQuery) -> int:
        """Columns per input channel: ``q.in_spread`` for a plain linear reading a flattened map (v3), else 1."""
        return q.in_spread if self.pooled_flatten and q.kernel == (1, 1) and q.info.role == "weight" else 1

    @staticmethod
    def _tensor_scale(x: torch.Tensor) -> torch.Tensor:
        """Per-tensor multiplier ``exp(tanh(x))`` in ``[1/e, e]``, 1 at ``x = 0`` (a wider range did not help:
        ledger E8)."""
        return torch.exp(torch.tanh(x))

    def _codes(self, kind: str, fixed: torch.Tensor) -> torch.Tensor:
        """``(n, p)`` codes of ``kind``: ``Φ`` (positions: :func:`_sinusoids`) plus the learned table of that kind
        on its first indices."""
        if kind == "position":
            fixed = _sinusoids(len(fixed), self.p, fixed.device)
        if kind not in self.tables:
            return fixed
        table = self.tables[kind]
        k = min(len(table), len(fixed))
        return torch.cat([fixed[:k] + self.code_gain * table[:k], fixed[k:]])

    def _axis_kinds(self, q: ParamQuery) -> tuple[str, str]:
        """Which code kind indexes the rows and the columns of ``q``'s canonical ``(rows, cols, *k)`` shape."""
        rows = cols = "hidden"
        if q.info.role == "embedding":
            rows = "input" if q.reads_input else ("output" if q.writes_output else "hidden")  # token ids
            if q.positions and self.position_codes:
                rows = "position"
        elif q.info.role in _FAN_IN_ROLES:
            if q.reads_input:
                cols = "channel" if len(q.shape) > 2 else "input"  # conv: input channels; linear: features
            if q.writes_output:
                rows = "output"
        elif q.writes_output and q.info.role == "bias":
            rows = "output"  # the classifier's / LM head's bias, one value per class
        return rows, cols

    def _matrix(self, q: ParamQuery, u: torch.Tensor, v: torch.Tensor, row_codes: torch.Tensor,
                col_codes: torch.Tensor, scale: torch.Tensor, out: torch.Tensor | None = None,
                center: bool = False) -> torch.Tensor:
        """(R, C, *K) tensor from factors: one GEMM ``A·B``; every scale is folded into the small factor A.

        Without a kernel the GEMM is done in the parameter's own layout (``(C, R)`` for ``weight_t``), into ``out``
        when given: the result is then written where the parameter lives, with no temporary or strided copy.
        ``center``: column codes centred over the tensor's own input channels (``centered_fan_in``; rows then sum
        to zero over them). A depthwise kernel (one column) is left as is: centring would zero it.

        Shapes: u (ka, p, r), v (kb, r, p), row_codes (≥ R, p), col_codes (≥ C, p).
        """
        shape = q.shape
        (ka, kb), rows, cols = q.kernel, shape[0], shape[1]
        p, r = self.p, self.r
        spread = self._spread(q)
        channels = cols // spread
        if center and channels > 1:
            col_codes = col_codes[:channels] - col_codes[:channels].mean(0, keepdim=True)
        u = u * torch.rsqrt(u.pow(2).mean() + 1e-8)  # unit RMS: role gain and per-tensor scale set the size
        v = v * torch.rsqrt(v.pow(2).mean() + 1e-8)
        # entries of Φ_o·U·V·Φ_cᵀ have variance ≈ p²·r; normalise to 1, then apply the role's scaling
        scale = scale / (p * math.sqrt(r))
        role = q.info.role
        if role in _FAN_IN_ROLES:
            if spread > 1:
                return self._flattened(rows, channels, spread, u, v, row_codes, col_codes, scale, out)
            scale = _fan_in_scaled(scale, cols, ka * kb, p)
        elif role == "embedding":
            scale = scale / math.sqrt(cols)
        blocks = self._blocks(q)
        if blocks > 1:  # block k's rows: the block's own row factor on the codes of their index within the block
            a = (row_codes[:rows // blocks] @ (u * scale).permute(1, 0, 2).reshape(p, blocks * r))  # (R/k, k·r)
            a = a.view(rows // blocks, blocks, r).transpose(0, 1).reshape(rows, r)  # (R, r), block-major
        else:
            a = (row_codes[:rows] @ (u * scale).permute(1, 0, 2).reshape(p, ka * r)).view(rows * ka, r)  # (R·ka, r)
        b = (v.reshape(kb * r, p) @ col_codes[:cols].t()).view(kb, r, cols).permute(1, 2, 0)  # (r, C, kb)
        if ka == kb == 1:
            b = b.reshape(r, cols)
            if role == "weight_t":  # stored (C, R): Bᵀ·Aᵀ is that layout, returned as its (R, C) transpose view
                return torch.mm(b.t(), a.t(), out=out.view(cols, rows) if out is not None else None).t()
            return torch.mm(a, b, out=out.view(rows, cols) if out is not None else None)
        w = a @ b.reshape(r, cols * kb)  # (R·ka, C·kb)
        if ka > 1 or kb > 1:
            w = w.view(rows, ka, cols, kb).permute(0, 2, 1, 3)  # a strided view: copy_ into the param reads it
        return w

    def _flattened(self, rows: int, channels: int, spread: int, u: torch.Tensor, v: torch.Tensor,
                   row_codes: torch.Tensor, col_codes: torch.Tensor, scale: torch.Tensor,
                   out: torch.Tensor | None) -> torch.Tensor:
        """Decoder v3, a linear reading a flattened ``channels x positions`` map (``torch.flatten`` order: column
        ``j`` is channel ``j // spread``): predicted as a ``channels``-column layer on the channels' own codes —
        the codes the producing layer's rows carry — and spread evenly over each channel's positions, i.e. global
        average pooling then that layer. Per-position codes would break the channel correspondence with the
        producer, and the GHN meets pooled heads far more often than flattened ones.

        Shapes: u (1, p, r), v (1, r, p); returns (rows, channels · spread).
        """
        p, r = self.p, self.r
        scale = _fan_in_scaled(scale, channels, 1, p) / spread
        a = row_codes[:rows] @ (u[0] * scale)  # (R, r)
        w = (a @ (v[0] @ col_codes[:channels].t())).repeat_interleave(spread, dim=1)  # (R, channels · spread)
        if out is not None:
            return out.view(rows, channels * spread).copy_(w)
        return w

    def _vector(self, q: ParamQuery, vec: torch.Tensor, codes: torch.Tensor, gain: torch.Tensor,
                offset: torch.Tensor) -> torch.Tensor:
        n = q.shape[0] if q.shape else 1
        u, b0, log_scale = vec[:self.p], vec[self.p], vec[self.p + 1]
        values = b0 + codes[:n] @ u / math.sqrt(self.p)
        return offset + gain * self._tensor_scale(log_scale) * values

    @staticmethod
    def _to_param_layout(q: ParamQuery, w: torch.Tensor) -> torch.Tensor:
        if q.info.role == "weight_t":
            w = w.transpose(0, 1)
        return w.reshape(q.info.shape)
