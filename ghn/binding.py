"""Which parameter belongs to which node, with which role; and the coverage report.

A *role* tells the decoder what a tensor is for, which fixes its layout and its scale:

============  ==================================================  =====================================
role          examples                                            decoded as
============  ==================================================  =====================================
weight        Conv/Linear weight (c_out, c_in, *k)                low-rank A·B, scaled by 1/sqrt(fan_in)
weight_t      HF ``Conv1D`` (c_in, c_out), ConvTranspose weight   as ``weight``, first two dims swapped
embedding     ``nn.Embedding`` weight (vocab, dim)                low-rank A·B, scaled by 1/sqrt(dim)
bias          Conv/Linear bias (c_out,)                           vector head, around 0
norm_weight   BatchNorm/LayerNorm/RMSNorm scale (c,)              vector head, around 1
norm_bias     BatchNorm/LayerNorm shift (c,)                      vector head, around 0
pos_embed     ViT ``pos_embed`` (1, n, d)                         low-rank A·B, small
cls_token     ``cls_token`` / ``dist_token`` (1, 1, d)            vector head, small
layer_scale   ``gamma`` / ``ls.gamma`` (d,)                       vector head, small
rel_pos       ``relative_position_bias_table`` (n, heads)         low-rank A·B, small
free          any other floating tensor                           by shape: vector or low-rank
============  ==================================================  =====================================
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Mapping

from .ops import NORM_OPS

__all__ = ["ROLES", "ROLE_ID", "ParamInfo", "CoverageReport", "param_role", "free_param_op"]

ROLES: tuple[str, ...] = (
    "weight", "weight_t", "embedding", "bias", "norm_weight", "norm_bias",
    "pos_embed", "cls_token", "layer_scale", "rel_pos", "free",
)
ROLE_ID: dict[str, int] = {r: i for i, r in enumerate(ROLES)}

_MATRIX_OPS = frozenset({"conv", "dw_conv", "linear", "attention", "module"})
_FREE_PATTERNS: tuple[tuple[re.Pattern, str], ...] = tuple(
    (re.compile(p, re.I), role) for p, role in (
        (r"relative_position_bias_table|rel_pos|relative_position", "rel_pos"),
        (r"pos_embed|position_embedding|pos_emb|positional", "pos_embed"),
        (r"(cls|dist|reg|mask)_token|class_token|query_token|register", "cls_token"),
        (r"gamma|layer_scale|layerscale|(^|\.)ls\d*(\.|$)|scale$", "layer_scale"),
    )
)


@dataclass(frozen=True)
class ParamInfo:
    """One parameter bound to a node.

    Attributes:
        name: the canonical name in ``model.named_parameters()``.
        role: one of :data:`ROLES`.
        shape: the parameter's shape.
        tied: other names of the same tensor (e.g. ``lm_head.weight`` tied to ``wte.weight``).
    """

    name: str
    role: str
    shape: tuple[int, ...]
    tied: tuple[str, ...] = ()

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def param_role(attr: str, full_name: str, ndim: int, op: str | None, module_type: str) -> str:
    """The role of parameter ``attr`` (its attribute name in its module) of a module with op ``op``."""
    if op in NORM_OPS:
        if attr == "weight":
            return "norm_weight"
        if attr == "bias":
            return "norm_bias"
    elif op in _MATRIX_OPS or op in ("conv_transpose", "embedding"):
        if attr.endswith("weight") and ndim >= 2:
            if op == "embedding":
                return "embedding"
            transposed = op == "conv_transpose" or (op == "linear" and module_type == "Conv1D")
            return "weight_t" if transposed else "weight"
        if attr.endswith("bias") and ndim == 1:
            return "bias"
    for pattern, role in _FREE_PATTERNS:
        if pattern.search(full_name):
            return role
    if ndim == 1 and attr == "bias":
        return "bias"
    return "free"


def free_param_op(role: str) -> str:
    """The op of the node that a free parameter of this role gets."""
    return {"pos_embed": "pos_embed", "cls_token": "cls_token", "layer_scale": "layer_scale",
            "rel_pos": "rel_pos_bias"}.get(role, "free_param")


@dataclass
class CoverageReport:
    """Which parameters of a model a GHN predicts, and why not the others.

    Attributes:
        predicted: canonical names of the predicted parameters.
        missing: name → reason for every parameter left to its own initialisation.
        tied: alias → canonical name for tied parameters (predicted once, through the canonical name).
        numel: name → number of elements of every (canonical) parameter.
        parametrized: effective name → what was written for a tensor computed by a parametrization (weight norm,
            spectral norm, ...): it is predicted as the plain layer's tensor, and the parameters it is computed from
            (listed in ``predicted``) are written so that the module computes it (:mod:`ghn.parametrized`).
    """

    predicted: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    tied: dict[str, str] = field(default_factory=dict)
    numel: Mapping[str, int] = field(default_factory=dict)
    parametrized: dict[str, str] = field(default_factory=dict)

    @property
    def fraction(self) -> float:
        """Predicted parameters ÷ all parameters, counted by elements (1.0 for a model with no parameters)."""
        total = sum(self.numel.values())
        if total == 0:
            return 1.0
        return sum(self.numel[n] for n in self.predicted) / total

    @property
    def complete(self) -> bool:
        return not self.missing

    def summary(self) -> str:
        """One line for logs and the CLI, e.g. ``coverage 100.00% (62/62 tensors, 11.2M elements)``."""
        n_total = len(self.predicted) + len(self.missing)
        elems = sum(self.numel.values())
        line = (f"coverage {100 * self.fraction:.2f}% ({len(self.predicted)}/{n_total} tensors, "
                f"{elems / 1e6:.2f}M elements)")
        if self.tied:
            line += f", {len(self.tied)} tied"
        if self.parametrized:
            line += f", {len(self.parametrized)} parametrized"
        return line

    def __str__(self) -> str:
        lines = [self.summary()]
        lines += [f"  not predicted: {name}: {why}" for name, why in self.missing.items()]
        lines += [f"  tied: {alias} -> {name}" for alias, name in self.tied.items()]
        lines += [f"  parametrized: {name}: {how}" for name, how in self.parametrized.items()]
        return "\n".join(lines)
