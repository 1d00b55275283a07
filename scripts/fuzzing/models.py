"""User-style modules for the fuzz: each ``_<kind>(r)`` builds a random module and its inputs from ``random.Random``
``r`` (odd widths, 1-D/2-D/3-D convs, raw parameters, tied and unused weights, skipped and complex modules,
parametrized layers, quantized / TorchScript / DataParallel models, ...)."""
from __future__ import annotations

import random
import warnings
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize
from torch.nn.utils import parametrizations as P

from ghn import register_op

__all__ = ["USER_BUILDERS", "PARAMETRIZATIONS", "parametrized"]


# ---- user-style modules -------------------------------------------------------------------------------------------
_ACTS: tuple[Callable[[], nn.Module], ...] = (nn.ReLU, nn.GELU, nn.Tanh, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Hardswish,
                                              nn.Identity, nn.Sigmoid, nn.Mish, nn.PReLU)


def _width(r: random.Random, lo: int = 1, hi: int = 37) -> int:
    return r.choice((r.randint(lo, hi), r.randrange(lo | 1, hi + 1, 2)))  # often odd


def _act(r: random.Random) -> nn.Module:
    return r.choice(_ACTS)()


def _mlp(r: random.Random):
    widths = [_width(r) for _ in range(r.randint(2, 6))]
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers.append(nn.Linear(a, b, bias=r.random() < 0.7))
        norm = r.choice((None, None, "ln", "bn", "rms"))
        if norm == "ln":
            layers.append(nn.LayerNorm(b, elementwise_affine=r.random() < 0.9))
        elif norm == "bn":
            layers.append(nn.BatchNorm1d(b, affine=r.random() < 0.9))
        elif norm == "rms":
            layers.append(nn.RMSNorm(b))
        layers.append(_act(r))
        if r.random() < 0.2:
            layers.append(nn.Dropout(0.1))
    return nn.Sequential(*layers), torch.randn(2, widths[0])


class ResMLP(nn.Module):
    def __init__(self, r: random.Random):
        super().__init__()
        self.d = _width(r, 2, 33)
        self.blocks = nn.ModuleList()
        for _ in range(r.randint(1, 4)):
            h = _width(r, 1, 45)
            self.blocks.append(nn.Sequential(nn.LayerNorm(self.d), nn.Linear(self.d, h), _act(r), nn.Linear(h, self.d)))
        self.gamma = nn.Parameter(torch.full((self.d,), 0.1)) if r.random() < 0.5 else None
        self.head = nn.Linear(self.d, _width(r, 1, 11))

    def forward(self, x):
        for blk in self.blocks:
            y = blk(x)
            x = x + (self.gamma * y if self.gamma is not None else y)
        return self.head(x)


def _resmlp(r: random.Random):
    m = ResMLP(r)
    return m, torch.randn(2, r.randint(1, 3), m.d)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def _cnn(r: random.Random, dims: int, transpose: bool = False):
    conv = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[dims - 1]
    convt = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)[dims - 1]
    bn = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)[dims - 1]
    inorm = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)[dims - 1]
    pool = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[dims - 1]
    size = size0 = {1: r.randint(5, 17), 2: r.randint(4, 9), 3: r.randint(3, 5)}[dims]
    c_in = r.randint(1, 5)
    c = c_in
    layers: list[nn.Module] = []
    for i in range(r.randint(1, 4)):
        c_out = _width(r, 1, 24)
        k = r.choice((1, 3, 3, 5)) if dims < 3 else r.choice((1, 3))
        groups = 1
        if r.random() < 0.3:
            common = [g for g in _divisors(c) if c_out % g == 0]
            groups = r.choice(common)
            if r.random() < 0.5 and c_out % c == 0:
                groups = c  # depthwise
        if transpose and i == 0:
            kt, st = r.choice((2, 3)), r.choice((1, 2))
            layers.append(convt(c, c_out, kernel_size=kt, stride=st, bias=r.random() < 0.5))
            size = (size - 1) * st + kt
        else:
            stride = r.choice((1, 1, 2))
            layers.append(conv(c, c_out, k, stride=stride, padding=k // 2, groups=groups, bias=r.random() < 0.5))
            size = (size + 2 * (k // 2) - k) // stride + 1
        # InstanceNorm needs more than one spatial element (PyTorch rejects the model otherwise)
        norm = r.choice(("bn", "gn", "in", None) if size > 1 else ("bn", "gn", None))
        if norm == "bn":
            layers.append(bn(c_out))
        elif norm == "gn":
            layers.append(nn.GroupNorm(r.choice(_divisors(c_out)), c_out))
        elif norm == "in":
            layers.append(inorm(c_out, affine=True))
        layers.append(_act(r))
        c = c_out
    layers += [pool(1), nn.Flatten(), nn.Linear(c, _width(r, 1, 13))]
    x = torch.randn(2, c_in, *([size0] * dims))
    return nn.Sequential(*layers), x


class RawParams(nn.Module):
    """A user module that owns raw nn.Parameters of several ranks (no nn.Linear inside)."""

    def __init__(self, r: random.Random):
        super().__init__()
        self.n, self.d, h = r.randint(1, 7), _width(r, 2, 21), _width(r, 1, 19)
        self.pos_embed = nn.Parameter(torch.randn(1, self.n, self.d) * 0.02)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, self.d))
        self.w_in = nn.Parameter(torch.randn(h, self.d) / self.d ** 0.5)
        self.b_in = nn.Parameter(torch.zeros(h))
        self.mix = nn.Parameter(torch.randn(2, h, h) / h)  # a 3-D tensor used through einsum
        self.scale = nn.Parameter(torch.ones(h))
        self.out = nn.Parameter(torch.randn(r.randint(1, 5), h) / h ** 0.5)

    def forward(self, x):
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x + self.pos_embed], dim=1)
        h = torch.relu(x @ self.w_in.t() + self.b_in)
        h = torch.einsum("bnh,khg->bng", h, self.mix) * self.scale
        return h.mean(1) @ self.out.t()


def _rawparam(r: random.Random):
    m = RawParams(r)
    return m, torch.randn(2, m.n, m.d)


class TiedLM(nn.Module):
    def __init__(self, r: random.Random):
        super().__init__()
        self.vocab, d = r.randint(3, 50), _width(r, 2, 24)
        self.emb = nn.Embedding(self.vocab, d, padding_idx=0 if r.random() < 0.3 else None)
        self.block = nn.Linear(d, d)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, self.vocab, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.alias = self.block if r.random() < 0.5 else None  # the same module under two names
        self.reuse = r.randint(1, 3)  # the block is applied several times (weight sharing across depth)

    def forward(self, ids):
        x = self.emb(ids)
        for _ in range(self.reuse):
            x = x + torch.tanh(self.block(x))
        return self.head(self.norm(x))


def _tied(r: random.Random):
    m = TiedLM(r)
    return m, torch.randint(0, m.vocab, (2, r.randint(1, 9)))


class WithUnused(nn.Module):
    def __init__(self, r: random.Random):
        super().__init__()
        d = _width(r, 1, 17)
        self.used = nn.Linear(d, _width(r, 1, 9))
        self.unused_linear = nn.Linear(_width(r), _width(r))
        self.unused_vec = nn.Parameter(torch.randn(_width(r)))
        self.unused_conv = nn.Conv2d(r.randint(1, 4), r.randint(1, 4), 3)
        self.frozen = nn.Parameter(torch.ones(d), requires_grad=False)
        self.register_buffer("running", torch.zeros(d))
        self.d = d

    def forward(self, x):
        return self.used(x * self.frozen + self.running)


def _unused(r: random.Random):
    m = WithUnused(r)
    return m, torch.randn(2, m.d)


class EmbedAttn(nn.Module):
    def __init__(self, r: random.Random):
        super().__init__()
        heads = r.choice((1, 2, 3, 4))
        d = heads * r.randint(1, 6)
        self.vocab = r.randint(2, 40)
        self.emb = nn.Embedding(self.vocab, d)
        self.pos = nn.Parameter(torch.zeros(1, 16, d))
        self.batch_first = r.random() < 0.5
        kdim = d if r.random() < 0.6 else _width(r, 1, 13)
        self.attn = nn.MultiheadAttention(d, heads, bias=r.random() < 0.7, add_bias_kv=r.random() < 0.2,
                                          kdim=kdim, vdim=kdim, batch_first=self.batch_first)
        self.kv = nn.Linear(d, kdim) if kdim != d else nn.Identity()
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, _width(r, 1, 7))

    def forward(self, ids):
        x = self.emb(ids) + self.pos[:, :ids.shape[1]]
        kv = self.kv(x)
        if not self.batch_first:
            x, kv = x.transpose(0, 1), kv.transpose(0, 1)
        y, _ = self.attn(x, kv, kv, need_weights=False)
        if not self.batch_first:
            y = y.transpose(0, 1)
        return {"logits": self.head(self.norm(y)), "hidden": y}


def _embed_attn(r: random.Random):
    m = EmbedAttn(r)
    return m, torch.randint(0, m.vocab, (2, r.randint(1, 16)))


class FuzzSkippedGate(nn.Module):
    """A module type the user tells ghn to leave alone: register_op(FuzzSkippedGate, None)."""

    def __init__(self, d: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d, d))
        self.bias = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return torch.sigmoid(x @ self.weight + self.bias) * x


register_op(FuzzSkippedGate, None)


def _skipped(r: random.Random):
    d = _width(r, 1, 17)
    m = nn.Sequential(nn.Linear(d, d), FuzzSkippedGate(d), nn.Linear(d, _width(r, 1, 9)))
    return m, torch.randn(2, d)


class IntParam(nn.Module):
    def __init__(self, r: random.Random):
        super().__init__()
        self.d = _width(r, 1, 17)
        self.fc = nn.Linear(self.d, self.d)
        self.steps = nn.Parameter(torch.zeros(r.randint(1, 4), dtype=torch.long), requires_grad=False)
        self.flags = nn.Parameter(torch.ones(self.d, dtype=torch.bool), requires_grad=False)

    def forward(self, x):
        return self.fc(x) * self.flags + self.steps.sum()


def _intparam(r: random.Random):
    m = IntParam(r)
    return m, torch.randn(2, m.d)


class ComplexFilter(nn.Module):
    def __init__(self, r: random.Random):
        super().__init__()
        self.d = _width(r, 2, 17)
        self.fc = nn.Linear(self.d, self.d)
        self.filter = nn.Parameter(torch.randn(self.d // 2 + 1, dtype=torch.cfloat))

    def forward(self, x):
        return torch.fft.irfft(torch.fft.rfft(self.fc(x)) * self.filter, n=self.d)


def _complex(r: random.Random):
    m = ComplexFilter(r)
    return m, torch.randn(2, m.d)


class Nested(nn.Module):
    """ModuleDict / ModuleList containers, a tuple output, keyword inputs."""

    def __init__(self, r: random.Random):
        super().__init__()
        self.d = _width(r, 1, 15)
        self.branches = nn.ModuleDict({f"b{i}": nn.Sequential(nn.Linear(self.d, self.d), _act(r))
                                       for i in range(r.randint(1, 3))})
        self.fuse = nn.Linear(self.d * len(self.branches), _width(r, 1, 9))
        self.extra = nn.ModuleList([nn.Linear(self.d, 1) for _ in range(r.randint(0, 2))])

    def forward(self, x, mask=None):
        y = torch.cat([b(x) for b in self.branches.values()], dim=-1)
        out = self.fuse(y if mask is None else y * mask)
        return out, [e(x) for e in self.extra]


def _nested(r: random.Random):
    m = Nested(r)
    x = torch.randn(2, m.d)
    if r.random() < 0.5:
        return m, {"x": x, "mask": torch.ones(2, m.d * len(m.branches))}
    return m, (x,)


class OddShapes(nn.Module):
    """Parameters of unusual ranks and sizes: a scalar, a 6-D tensor, an empty one, (1, n) and (n, 1) matrices,
    asymmetric and dilated kernels."""

    def __init__(self, r: random.Random):
        super().__init__()
        self.d = d = _width(r, 1, 9)
        self.scalar = nn.Parameter(torch.tensor(0.5))
        self.six = nn.Parameter(torch.randn(*[r.randint(1, 3) for _ in range(6)]))
        self.empty = nn.Parameter(torch.randn(0, r.randint(1, 4)))
        self.row = nn.Parameter(torch.randn(1, d))
        self.col = nn.Parameter(torch.randn(d, r.randint(1, 3)))
        self.conv = nn.Conv2d(d, _width(r, 1, 7), (1, r.choice((1, 3, 7))), padding=(0, 3),
                              dilation=(1, r.choice((1, 2))))
        self.conv1 = nn.Conv1d(d, d, 1, bias=False)

    def forward(self, x):
        y = (x * self.scalar + self.row + self.six.mean() + self.empty.sum()) @ self.col
        z = self.conv(x[:, :, None, None].expand(-1, -1, 1, 8)).mean((1, 2, 3))
        return y + z[:, None] + self.conv1(x[:, :, None]).mean((1, 2))[:, None]


def _shapes(r: random.Random):
    m = OddShapes(r)
    return m, torch.randn(2, m.d)


# ---- parametrized, quantized, scripted and wrapped models ------------------------------------------------------------
class _Scaled(nn.Module):
    """A parametrization with a parameter of its own and a right_inverse: weight = scale · original."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, w):
        return self.scale * w

    def right_inverse(self, w):
        return w / self.scale


class _Doubled(nn.Module):
    """A parametrization without right_inverse: a predicted weight cannot be written through it (a coverage gap)."""

    def forward(self, w):
        return 2 * w


def _legacy(fn: Callable, module: nn.Module, **kwargs) -> nn.Module:
    with warnings.catch_warnings():  # torch.nn.utils.weight_norm is deprecated (it still works, and users have it)
        warnings.simplefilter("ignore")
        return fn(module, **kwargs)


PARAMETRIZATIONS: dict[str, Callable[[random.Random, nn.Module], nn.Module]] = {
    "weight_norm": lambda r, m: P.weight_norm(m, dim=r.choice((0, None))),
    "spectral_norm": lambda r, m: P.spectral_norm(m),
    "legacy_weight_norm": lambda r, m: _legacy(nn.utils.weight_norm, m, dim=r.choice((0, None))),
    "legacy_spectral_norm": lambda r, m: _legacy(nn.utils.spectral_norm, m),
    "orthogonal": lambda r, m: P.orthogonal(m) if isinstance(m, nn.Linear) else P.weight_norm(m),
    "scaled": lambda r, m: parametrize.register_parametrization(m, "weight", _Scaled()),
    "no_right_inverse": lambda r, m: parametrize.register_parametrization(m, "weight", _Doubled()),
}


def parametrized(r: random.Random) -> tuple[nn.Module, Any, Callable[[], nn.Module]]:
    """A random MLP or CNN with weight norm, spectral norm (both APIs), orthogonal or other parametrizations on some
    of its layers; its inputs; and a builder of the same architecture without them (whose prediction the
    parametrized layers' effective weights must reproduce)."""
    state = r.getstate()

    def plain(rr: random.Random) -> tuple[nn.Module, Any]:
        return USER_BUILDERS[rr.choice(("mlp", "cnn1d", "cnn2d", "convt"))](rr)

    model, inputs = plain(r)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear | nn.modules.conv._ConvNd)]
    for m in r.sample(layers, r.randint(1, len(layers))):
        # a layer that cannot be written through (no right_inverse) changes the graph: rarer, so that most models
        # can be compared with their plain architecture's prediction
        weights = [1 if k == "no_right_inverse" else 3 for k in PARAMETRIZATIONS]
        PARAMETRIZATIONS[r.choices(list(PARAMETRIZATIONS), weights)[0]](r, m)

    def twin() -> nn.Module:
        rr = random.Random()
        rr.setstate(state)
        return plain(rr)[0]
    return model, inputs, twin


def _quantized(r: random.Random):
    model, x = _mlp(r)
    with warnings.catch_warnings():  # quantized tensors are deprecated (UserWarning) but still what users have
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8), x


def _scripted(r: random.Random):
    model, x = (_mlp if r.random() < 0.5 else lambda r: _cnn(r, 2))(r)
    with warnings.catch_warnings():  # torch.jit is deprecated (FutureWarning) but still what users have
        warnings.simplefilter("ignore")
        return (torch.jit.script(model) if r.random() < 0.5 else torch.jit.trace(model.eval(), x)), x


def _data_parallel(r: random.Random):
    model, x = _mlp(r)
    return nn.DataParallel(model), x


USER_BUILDERS: dict[str, Callable[[random.Random], tuple[nn.Module, Any]]] = {
    "mlp": _mlp, "resmlp": _resmlp, "cnn1d": lambda r: _cnn(r, 1), "cnn2d": lambda r: _cnn(r, 2),
    "cnn3d": lambda r: _cnn(r, 3), "convt": lambda r: _cnn(r, r.randint(1, 3), transpose=True),
    "rawparam": _rawparam, "tied": _tied, "unused": _unused, "embed_attn": _embed_attn, "skipped": _skipped,
    "intparam": _intparam, "complex": _complex, "nested": _nested, "shapes": _shapes,
    "quantized": _quantized, "scripted": _scripted, "dataparallel": _data_parallel,
}

