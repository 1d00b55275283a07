"""DeepNets-style CNNs: a stem, a stack of random DARTS-like cells, a pooled classifier head.

Follows the search space of DeepNets-1M (Knyazev et al., "Parameter Prediction for Unseen Deep
Architectures", NeurIPS 2021, https://arxiv.org/abs/2110.13100): each cell takes the outputs of the two previous
cells (``s0``, ``s1``), computes a few nodes, each node the sum of one or two ops applied to earlier states, and
concatenates some nodes as its output. Reduction cells halve the resolution (stride 2 on ops that read the cell
inputs) and double the width. We add what DeepNets-1M varies too: depth, width, stem, normalisation, activation,
an optional residual over each cell and an optional hidden layer in the head. Written from the paper, no code copied.

The genotype is a JSON list: ``normal = [[["sep_conv_3x3", 1], ["skip_connect", 0]], [["conv_1x1", 2]]]`` means
node 2 = sep_conv(s1) + skip(s0), node 3 = conv_1x1(node 2). State indices: 0 = s0, 1 = s1, 2.. = nodes.

Shapes: input ``(B, C_in, H, W)`` floats; output logits ``(B, num_classes)``.
"""
from __future__ import annotations

import math
import random

import torch
from torch import nn

from ghn.errors import ConfigError

from .registry import register_arch, register_family, sample_within
from .spec import ArchSpec

__all__ = ["OPS", "DeepNet", "Cell", "build", "sample"]

OPS = ("conv_1x1", "conv_3x3", "conv_5x5", "conv_7x1_1x7", "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3",
       "dil_conv_5x5", "max_pool_3x3", "avg_pool_3x3", "skip_connect")
NORMS = ("bn", "gn", "ln", "none")
ACTS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "hardswish": nn.Hardswish}


def _norm(kind: str, c: int) -> nn.Module:
    if kind == "bn":
        return nn.BatchNorm2d(c)
    if kind == "gn":  # the largest of 8/4/2/1 groups that divides c
        return nn.GroupNorm(next(g for g in (8, 4, 2, 1) if c % g == 0), c)
    if kind == "ln":  # layer norm over (C, H, W)
        return nn.GroupNorm(1, c)
    if kind == "none":
        return nn.Identity()
    raise ConfigError(f"unknown norm {kind!r}; choices: {NORMS}")


def _act(kind: str) -> nn.Module:
    try:
        return ACTS[kind]()
    except KeyError:
        raise ConfigError(f"unknown act {kind!r}; choices: {sorted(ACTS)}") from None


def _conv(c_in: int, c_out: int, k: int | tuple, stride: int = 1, groups: int = 1, dilation: int = 1,
          bias: bool = False) -> nn.Conv2d:
    kh, kw = (k, k) if isinstance(k, int) else k
    pad = (dilation * (kh // 2), dilation * (kw // 2))  # "same" padding: every op maps n -> ceil(n / stride)
    return nn.Conv2d(c_in, c_out, (kh, kw), stride, pad, dilation=dilation, groups=groups, bias=bias)


def make_op(name: str, c: int, stride: int, norm: str, act: str) -> nn.Module:
    """One cell op, ``(B, c, H, W) -> (B, c, ceil(H / stride), ceil(W / stride))``."""
    bias = norm == "none"  # a bias right before a norm layer is redundant
    if name.startswith("conv_") and name != "conv_7x1_1x7":
        k = int(name[-1])
        return nn.Sequential(_act(act), _conv(c, c, k, stride, bias=bias), _norm(norm, c))
    if name == "conv_7x1_1x7":
        return nn.Sequential(_act(act), _conv(c, c, (1, 7), 1, bias=False),
                             nn.Conv2d(c, c, (7, 1), stride, (3, 0), bias=bias), _norm(norm, c))
    if name.startswith("sep_conv_"):  # DARTS' separable conv: two depthwise-pointwise pairs
        k = int(name[-1])
        return nn.Sequential(_act(act), _conv(c, c, k, stride, groups=c), _conv(c, c, 1, bias=bias), _norm(norm, c),
                             _act(act), _conv(c, c, k, 1, groups=c), _conv(c, c, 1, bias=bias), _norm(norm, c))
    if name.startswith("dil_conv_"):
        k = int(name[-1])
        return nn.Sequential(_act(act), _conv(c, c, k, stride, groups=c, dilation=2), _conv(c, c, 1, bias=bias),
                             _norm(norm, c))
    if name == "max_pool_3x3":
        return nn.MaxPool2d(3, stride, 1)
    if name == "avg_pool_3x3":
        return nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    if name == "skip_connect":  # at stride 2 a strided 1x1 conv (works for odd sizes, unlike DARTS' FactorizedReduce)
        return nn.Identity() if stride == 1 else nn.Sequential(_act(act), _conv(c, c, 1, stride, bias=bias),
                                                               _norm(norm, c))
    raise ConfigError(f"unknown cnn op {name!r}; choices: {OPS}")


class Cell(nn.Module):
    """A DARTS-style cell.

    Args:
        nodes: genotype list, one entry per node: a list of ``[op_name, state_index]`` pairs that are summed.
        concat: state indices concatenated into the output.
        c_pp, c_p: channels of ``s0`` and ``s1``; c: channels of every node.
        reduction: halve H, W (ops reading s0/s1 use stride 2); reduction_prev: s0 has twice s1's resolution.
        residual: add a projection of ``s1`` to the output.

    Shapes:
        s0: ``(B, c_pp, 2H, 2W)`` if reduction_prev else ``(B, c_pp, H, W)``; s1: ``(B, c_p, H, W)``;
        output: ``(B, c * len(concat), H', W')`` with ``H' = ceil(H / 2)`` if reduction else ``H``.
    """

    def __init__(self, nodes: list, concat: list[int], c_pp: int, c_p: int, c: int, reduction: bool,
                 reduction_prev: bool, norm: str, act: str, residual: bool):
        super().__init__()
        bias = norm == "none"
        self.pre0 = nn.Sequential(_act(act), _conv(c_pp, c, 1, 2 if reduction_prev else 1, bias=bias), _norm(norm, c))
        self.pre1 = nn.Sequential(_act(act), _conv(c_p, c, 1, bias=bias), _norm(norm, c))
        self.ops = nn.ModuleList()
        self.wiring: list[list[int]] = []  # state indices read by each node, in ops order
        for i, node in enumerate(nodes):
            if not node or any(not 0 <= j < i + 2 for _, j in node):
                raise ConfigError(f"cell node {i} reads invalid states {node}; allowed 0..{i + 1}")
            self.wiring.append([j for _, j in node])
            for op, j in node:
                self.ops.append(make_op(op, c, 2 if reduction and j < 2 else 1, norm, act))
        if not concat or any(not 2 <= j < len(nodes) + 2 for j in concat):
            raise ConfigError(f"cell concat {concat} must name nodes 2..{len(nodes) + 1}")
        self.concat = list(concat)
        self.out_channels = c * len(concat)
        self.proj = None
        if residual:
            same = c_p == self.out_channels and not reduction
            self.proj = nn.Identity() if same else nn.Sequential(
                _conv(c_p, self.out_channels, 1, 2 if reduction else 1, bias=bias), _norm(norm, self.out_channels))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.pre0(s0), self.pre1(s1)]
        k = 0
        for inputs in self.wiring:
            h = self.ops[k](states[inputs[0]])
            for i, j in enumerate(inputs[1:], 1):
                h = h + self.ops[k + i](states[j])
            k += len(inputs)
            states.append(h)
        out = torch.cat([states[j] for j in self.concat], dim=1) if len(self.concat) > 1 else states[self.concat[0]]
        return out if self.proj is None else out + self.proj(s1)


class DeepNet(nn.Module):
    """Stem -> cells -> global pool -> (hidden linear) -> linear. See the module docstring for hparams.

    Shapes:
        x: ``(B, C_in, H, W)``; returns ``(B, num_classes)``.
    """

    def __init__(self, input_shape: list[int], num_classes: int, C: int, n_cells: int, reductions: list[int],
                 genotype: dict, stem_kernel: int = 3, stem_stride: int = 1, stem_mult: int = 1,
                 norm: str = "bn", act: str = "relu", residual: bool = False, head_pool: str = "avg",
                 head_hidden: int = 0):
        super().__init__()
        c_in = input_shape[0]
        c_stem = C * stem_mult
        self.stem = nn.Sequential(_conv(c_in, c_stem, stem_kernel, stem_stride, bias=norm == "none"),
                                  _norm(norm, c_stem))
        c_pp, c_p, c = c_stem, c_stem, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(n_cells):
            reduction = i in reductions
            if reduction:
                c *= 2
            kind = "reduce" if reduction else "normal"
            cell = Cell(genotype[kind], genotype[kind + "_concat"], c_pp, c_p, c, reduction, reduction_prev,
                        norm, act, residual)
            self.cells.append(cell)
            c_pp, c_p, reduction_prev = c_p, cell.out_channels, reduction
        if head_pool not in ("avg", "max"):
            raise ConfigError(f"head_pool must be 'avg' or 'max', got {head_pool!r}")
        self.pool = nn.AdaptiveAvgPool2d(1) if head_pool == "avg" else nn.AdaptiveMaxPool2d(1)
        layers: list[nn.Module] = [nn.Flatten()]
        if head_hidden:
            layers += [nn.Linear(c_p, head_hidden), _act(act)]
        layers.append(nn.Linear(head_hidden or c_p, num_classes))
        self.head = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return self.head(self.pool(s1))


def build(hparams: dict) -> DeepNet:
    """Build a :class:`DeepNet` from hparams (DeepNet's keyword arguments)."""
    try:
        return DeepNet(**hparams)
    except TypeError as e:
        raise ConfigError(f"invalid cnn hparams: {e}") from e


def _sample_cell(rng: random.Random, n_nodes: int) -> tuple[list, list[int]]:
    nodes = []
    for i in range(n_nodes):
        n_in = rng.choice((1, 2, 2))  # DARTS always uses 2 inputs; DeepNets-1M also has single-input nodes
        # Reading a recent state is likelier, so cells are deep more often than flat.
        states = list(range(i + 2))
        node = [[rng.choice(OPS), rng.choices(states, weights=[1 + j for j in states])[0]] for _ in range(n_in)]
        nodes.append(node)
    used = {j for node in nodes for _, j in node}
    leaves = [j for j in range(2, n_nodes + 2) if j not in used]
    concat = leaves if rng.random() < 0.5 else list(range(2, n_nodes + 2))
    return nodes, concat


def sample(rng: random.Random, *, input_shape: tuple | list = (1, 28, 28), num_classes: int = 10,
           min_params: int | None = 5_000, max_params: int | None = 500_000, max_depth: int = 8,
           max_nodes: int = 4) -> dict:
    """Sample cnn hparams.

    Args:
        rng: the randomness source.
        input_shape: ``(C, H, W)`` of one input.
        num_classes: classifier outputs.
        min_params, max_params: bounds on the parameter count (``None``: unbounded).
        max_depth: at most this many cells (>= 1).
        max_nodes: at most this many nodes per cell.
    """
    if max_depth < 1 or max_nodes < 1:
        raise ConfigError(f"max_depth and max_nodes must be >= 1, got {max_depth}, {max_nodes}")
    h = min(input_shape[1:])

    def propose(rng: random.Random) -> dict:
        n_cells = rng.randint(1, max_depth)
        # Up to 2 reductions (DARTS places them at 1/3 and 2/3 of the depth), fewer for tiny inputs.
        n_red = rng.randint(0, min(2, n_cells, max(0, int(math.log2(max(h, 1))) - 2)))
        reductions = sorted(rng.sample(range(n_cells), n_red))
        normal, normal_concat = _sample_cell(rng, rng.randint(1, max_nodes))
        reduce, reduce_concat = _sample_cell(rng, rng.randint(1, max_nodes))
        return dict(input_shape=list(input_shape), num_classes=num_classes,
                    C=rng.choice((4, 8, 8, 12, 16, 16, 24, 32, 48)), n_cells=n_cells, reductions=reductions,
                    genotype=dict(normal=normal, normal_concat=normal_concat, reduce=reduce,
                                  reduce_concat=reduce_concat),
                    stem_kernel=rng.choice((3, 3, 5)), stem_stride=rng.choice((1, 1, 2)) if h >= 16 else 1,
                    stem_mult=rng.choice((1, 2, 3)), norm=rng.choice(("bn", "bn", "bn", "gn", "ln", "none")),
                    act=rng.choice(("relu", "relu", "gelu", "silu", "hardswish")), residual=rng.random() < 0.5,
                    head_pool=rng.choice(("avg", "avg", "max")), head_hidden=rng.choice((0, 0, 0, 32, 64, 128)))

    return sample_within(rng, propose, build, min_params, max_params, what="cnn")


register_family("cnn", task="image", sample=sample, build=build)


# ---- named test archs: a few hundred to a few thousand parameters, for fast tests ------------------------------
def _tiny(**kw) -> dict:
    base = dict(input_shape=[1, 28, 28], num_classes=10, C=4, n_cells=2, reductions=[1], stem_kernel=3,
                stem_stride=2, stem_mult=1, norm="bn", act="relu", residual=False, head_pool="avg", head_hidden=0)
    return {**base, **kw}


@register_arch
def test_cnn() -> ArchSpec:
    """Two DARTS-like cells (a normal and a reduction cell) with conv, sep/dil conv, pooling and skip ops."""
    geno = dict(normal=[[["sep_conv_3x3", 1], ["skip_connect", 0]], [["dil_conv_3x3", 2], ["max_pool_3x3", 1]]],
                normal_concat=[2, 3], reduce=[[["conv_3x3", 1], ["avg_pool_3x3", 0]]], reduce_concat=[2])
    return ArchSpec("cnn", _tiny(genotype=geno))


@register_arch
def test_resnet() -> ArchSpec:
    """ResNet-like: each cell is conv3x3 -> conv3x3 plus a residual projection."""
    geno = dict(normal=[[["conv_3x3", 1]], [["conv_3x3", 2]]], normal_concat=[3],
                reduce=[[["conv_3x3", 1]], [["conv_3x3", 2]]], reduce_concat=[3])
    return ArchSpec("cnn", _tiny(genotype=geno, residual=True))


@register_arch
def test_cnn_nonorm() -> ArchSpec:
    """A cnn without normalisation layers (convs carry biases), GELU, max-pooled head with a hidden layer."""
    geno = dict(normal=[[["conv_5x5", 1]]], normal_concat=[2], reduce=[[["conv_7x1_1x7", 1], ["sep_conv_5x5", 0]]],
                reduce_concat=[2])
    return ArchSpec("cnn", _tiny(genotype=geno, norm="none", act="gelu", head_pool="max", head_hidden=8))
