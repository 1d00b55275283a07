"""Fuzz build_graph + predict_params over seeded random architectures.

Cases come from every model_zoo family and from random "user-style" modules (Sequential / residual MLPs and CNNs
with odd widths, 1-D/2-D/3-D convs, ConvTranspose, GroupNorm, Embedding + MultiheadAttention, raw nn.Parameter,
tied weights, unused and integer parameters, skipped modules, half/bf16/double models). Each case must either
succeed, with every predicted tensor finite and of its parameter's shape and coverage 1.0 or every gap listed
with a reason, or raise the typed error the case expects. Anything else (an untyped exception, NaN/Inf, a
wrong shape, an unexplained gap) is a failure. Zoo models of every family are also built on the ``meta`` device
(plain ``torch.device("meta")`` or ``ghn.init_empty_weights()``) and predicted in place: the materialised model must
equal a CPU build of the same spec holding the same parameters (every buffer, and the outputs, bit for bit). Cases
are a pure function of ``(index, seed)``: a failure is reproduced with
``python scripts/fuzz.py --only <index> --seed <seed>``.

    python scripts/fuzz.py --n 1000                 # writes benchmarks/results/fuzz.md
    python scripts/fuzz.py --n 50 --out /dev/null   # a quick run

tests/test_reliability_fuzz.py runs a few hundred cases of the same generator.
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import random
import sys
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ghn import GHN, GHNConfig, build_graph, init_empty_weights, register_op  # noqa: E402
from ghn.errors import GHNError, UnsupportedModuleError  # noqa: E402

__all__ = ["Case", "KINDS", "make_case", "run_case", "run", "main"]

ZOO_FAMILIES = ("cnn", "vit", "mlp", "gpt", "llama", "timm")
USER_KINDS = ("mlp", "resmlp", "cnn1d", "cnn2d", "cnn3d", "convt", "rawparam", "tied", "unused", "embed_attn",
              "skipped", "intparam", "complex", "nested", "shapes")
KINDS = tuple(f"zoo:{f}" for f in ZOO_FAMILIES) + tuple(f"user:{k}" for k in USER_KINDS)
FAILURES = ("untyped", "unexpected_typed", "missing_error", "non_finite", "bad_shape", "bad_coverage", "bad_write",
            "meta_differs")


@dataclass
class Case:
    """One fuzz case: a model, its example inputs, and the typed error it must raise (None: must succeed)."""

    index: int
    kind: str
    model: nn.Module
    inputs: Any
    expect: type[GHNError] | None = None
    note: str = ""
    meta: bool = False
    build: str = "cpu"  # how a meta model was built: "meta" (torch.device) or "init_empty_weights"
    dtype: torch.dtype = torch.float32
    extra: dict = field(default_factory=dict)


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


_USER: dict[str, Callable[[random.Random], tuple[nn.Module, Any]]] = {
    "mlp": _mlp, "resmlp": _resmlp, "cnn1d": lambda r: _cnn(r, 1), "cnn2d": lambda r: _cnn(r, 2),
    "cnn3d": lambda r: _cnn(r, 3), "convt": lambda r: _cnn(r, r.randint(1, 3), transpose=True),
    "rawparam": _rawparam, "tied": _tied, "unused": _unused, "embed_attn": _embed_attn, "skipped": _skipped,
    "intparam": _intparam, "complex": _complex, "nested": _nested, "shapes": _shapes,
}

# ---- zoo archs ----------------------------------------------------------------------------------------------------
_ZOO_CONSTRAINTS: dict[str, dict] = {
    "cnn": dict(max_params=60_000, max_depth=3, max_nodes=3),
    "vit": dict(max_params=60_000, max_depth=2),
    "mlp": dict(max_params=120_000),
    "gpt": dict(max_params=120_000, min_params=None, max_depth=2, vocab_size=64, seq_len=8),
    "llama": dict(max_params=120_000, min_params=None, max_depth=2, vocab_size=64, seq_len=8),
    "timm": dict(max_params=300_000),
}


def _cast_inputs(x: Any, dtype: torch.dtype) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(dtype) if x.is_floating_point() else x
    if isinstance(x, tuple | list):
        return type(x)(_cast_inputs(v, dtype) for v in x)
    if isinstance(x, dict):
        return {k: _cast_inputs(v, dtype) for k, v in x.items()}
    return x


def make_case(index: int, seed: int = 0, kinds: tuple[str, ...] = KINDS) -> Case:
    """Case ``index`` of the stream ``seed``: a pure function of both (model weights included)."""
    r = random.Random(f"ghn-fuzz/{seed}/{index}")
    kind = kinds[index % len(kinds)] if r.random() < 0.5 else r.choice(kinds)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(r.randrange(2 ** 31))
        if kind.startswith("zoo:"):
            import model_zoo as mz
            family = kind[4:]
            spec = mz.sample_arch(family, seed=r.randrange(10 ** 6), **_ZOO_CONSTRAINTS[family])
            meta = r.random() < 0.5
            build = ("meta" if r.random() < 0.5 else "init_empty_weights") if meta else "cpu"
            if build == "init_empty_weights":
                with init_empty_weights():
                    model = spec.build(device="cpu")
            else:
                model = spec.build(device=build)
            return Case(index, kind, model, spec.example_inputs(), meta=meta, build=build,
                        note=spec.hparams.get("name", "") or f"{family} seed {spec.seed}",
                        extra={"twin": lambda: spec.build(device="cpu")})
        model, inputs = _USER[kind[5:]](r)
    dtype = torch.float32
    expect = UnsupportedModuleError if kind == "user:complex" else None
    if expect is None and r.random() < 0.15:
        dtype = r.choice((torch.float16, torch.bfloat16, torch.float64))
        model = model.to(dtype)
        inputs = _cast_inputs(inputs, dtype)
    return Case(index, kind, model, inputs, expect=expect, dtype=dtype)


# ---- running ------------------------------------------------------------------------------------------------------
def run_case(ghn: GHN, case: Case, write: bool = True) -> dict:
    """Build the graph, predict, check. Returns a row: kind, status ("ok", "expected_error" or a failure), detail."""
    row = dict(index=case.index, kind=case.kind, note=case.note, dtype=str(case.dtype).replace("torch.", ""),
               meta=case.meta, build=case.build, status="ok", detail="", coverage=None, params=0, seconds=0.0)
    t0 = time.perf_counter()
    try:
        untouched = _snapshot(case.model)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            graph = build_graph(case.model, case.inputs, max_hops=ghn.config.max_hops)
            pred = ghn.predict_params(case.model, graph=graph)
        if _snapshot(case.model) != untouched:
            row.update(status="bad_write", detail="build_graph/predict_params changed the model (tensors, values "
                                                  "or training modes)")
        else:
            row.update(_check_prediction(case, pred))
        if row["status"] == "ok" and write:
            row.update(_check_meta_write(ghn, case, graph, pred) if case.meta else _check_write(ghn, case, graph, pred))
    except GHNError as e:
        if case.expect is not None and isinstance(e, case.expect):
            row.update(status="expected_error", detail=f"{type(e).__name__}: {e}"[:300])
        else:
            row.update(status="unexpected_typed", detail=f"{type(e).__name__}: {e}"[:500])
    except Exception as e:  # noqa: BLE001 - the point of fuzzing: any untyped exception is a failure
        row.update(status="untyped", detail=f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=-4)}"[:1500])
    else:
        if case.expect is not None and row["status"] == "ok":
            row.update(status="missing_error", detail=f"expected {case.expect.__name__}")
    row["seconds"] = time.perf_counter() - t0
    return row


def _snapshot(model: nn.Module) -> tuple:
    """Which tensor objects the model holds, their bytes, and the training modes (compare with ==)."""
    tensors = [(n, id(t), type(t).__name__, None if t.is_meta else t.detach().cpu().flatten().view(torch.uint8).numpy().tobytes())
               for n, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]]
    return tuple(tensors), tuple(m.training for m in model.modules())


def _check_prediction(case: Case, pred) -> dict:
    own = dict(case.model.named_parameters())  # canonical names (tied aliases removed)
    every = dict(case.model.named_parameters(remove_duplicate=False))
    cov = pred.coverage
    for name, t in pred.items():
        if name not in own:
            return dict(status="bad_shape", detail=f"{name} is not a parameter of the model")
        if tuple(t.shape) != tuple(own[name].shape):
            return dict(status="bad_shape", detail=f"{name}: {tuple(t.shape)} != {tuple(own[name].shape)}")
        if not torch.isfinite(t).all():
            return dict(status="non_finite", detail=f"{name} has NaN/Inf")
    predicted, missing = set(pred), set(cov.missing)
    if predicted != set(cov.predicted) or predicted & missing:
        return dict(status="bad_coverage", detail="prediction and coverage.predicted disagree")
    if predicted | missing != set(own):
        lost = sorted(set(own) - predicted - missing)
        return dict(status="bad_coverage", detail=f"neither predicted nor listed as missing: {lost[:5]}")
    if any(not isinstance(why, str) or not why.strip() for why in cov.missing.values()):
        return dict(status="bad_coverage", detail="a missing parameter has no reason")
    if set(cov.tied) != set(every) - set(own) or any(v not in own for v in cov.tied.values()):
        return dict(status="bad_coverage", detail=f"tied aliases wrong: {cov.tied}")
    if not (0.0 <= cov.fraction <= 1.0) or (cov.fraction < 1.0 and not cov.missing):
        return dict(status="bad_coverage", detail=f"fraction {cov.fraction} without reasons")
    return dict(coverage=cov.fraction, params=sum(p.numel() for p in own.values()))


def _check_write(ghn: GHN, case: Case, graph, pred) -> dict:
    """predict() in place: dtypes kept, values equal to the prediction (cast), finite; fp32 models still run."""
    before = {n: p.dtype for n, p in case.model.named_parameters()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ghn.predict(case.model, graph=graph)
    for name, p in case.model.named_parameters():
        if p.dtype != before[name]:
            return dict(status="bad_write", detail=f"{name} changed dtype {before[name]} -> {p.dtype}")
        if name in pred:
            if not torch.equal(p.detach(), pred[name].to(p.dtype)):
                return dict(status="bad_write", detail=f"{name} differs from its prediction")
            if not torch.isfinite(p).all():
                return dict(status="non_finite", detail=f"{name} is not finite after the cast to {p.dtype}")
    if case.dtype == torch.float32:
        case.model.eval()
        with torch.no_grad():
            args, kwargs = ((), case.inputs) if isinstance(case.inputs, dict) else (
                (case.inputs,) if isinstance(case.inputs, torch.Tensor) else tuple(case.inputs), {})
            out = case.model(*args, **kwargs)
        from ghn.trace import _flatten
        bad = [t for t in _flatten(out) if not torch.isfinite(t).all()]
        if bad:
            return dict(status="non_finite", detail="the model's output is not finite after predict()")
    return {}


def _check_meta_write(ghn: GHN, case: Case, graph, pred) -> dict:
    """predict() on a meta model: materialised, filled with the prediction, and the same model as a CPU build.

    The CPU twin gets the materialised model's parameters (not its buffers: those are what is checked), then every
    buffer and the outputs on the case's inputs must be equal bit for bit.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ghn.predict(case.model, graph=graph)
    model = case.model
    meta_left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if meta_left:
        return dict(status="bad_write", detail=f"still on meta after predict(): {meta_left[:5]}")
    own = dict(model.named_parameters())
    wrong = [n for n, t in pred.items() if not torch.equal(own[n].detach(), t.to(own[n].dtype))]
    if wrong:
        return dict(status="bad_write", detail=f"{wrong[:5]} differ from their prediction")
    twin = case.extra["twin"]()
    twin.load_state_dict(dict(model.named_parameters(remove_duplicate=False)), strict=False)
    buffers = dict(model.named_buffers())
    differ = [n for n, b in twin.named_buffers() if not torch.equal(buffers[n], b)]
    if differ:
        return dict(status="meta_differs", detail=f"buffers {differ[:5]} differ from a CPU build's ({case.build})")
    from ghn.trace import _flatten
    outs = []
    for m in (model, twin):
        m.eval()
        with torch.no_grad():
            out = m(**case.inputs) if isinstance(case.inputs, dict) else m(case.inputs)
        outs.append(_flatten(out))
    same = len(outs[0]) == len(outs[1]) and all(
        a.shape == b.shape and torch.equal(torch.nan_to_num(a), torch.nan_to_num(b)) for a, b in zip(*outs))
    if not same:
        return dict(status="meta_differs", detail=f"outputs differ from a CPU build's ({case.build})")
    return {}


def run(n: int, seed: int = 0, start: int = 0, kinds: tuple[str, ...] = KINDS, ghn: GHN | None = None,
        write: bool = True, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Run cases ``start .. start + n - 1`` of stream ``seed``; returns one row per case."""
    if ghn is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ghn = GHN(GHNConfig.preset("tiny")).eval()
    logging.getLogger("ghn").setLevel(logging.ERROR)  # "this GHN is untrained", once per case
    rows = []
    for i in range(start, start + n):
        try:
            case = make_case(i, seed, kinds)
        except Exception as e:  # noqa: BLE001 - a broken generator must be visible, not crash the run
            row = dict(index=i, kind="?", note="", dtype="", meta=False, status="generator_error",
                       detail=f"{type(e).__name__}: {e}"[:500], coverage=None, params=0, seconds=0.0)
        else:
            row = run_case(ghn, case, write=write)
        rows.append(row)
        if progress:
            progress(row)
    return rows


def write_report(rows: list[dict], out: Path, seed: int, elapsed: float, command: str) -> str:
    by_kind: dict[str, list[dict]] = collections.defaultdict(list)
    for row in rows:
        by_kind[row["kind"]].append(row)
    failures = [r for r in rows if r["status"] not in ("ok", "expected_error")]
    lines = [
        "# Fuzz: build_graph + predict_params on random architectures", "",
        f"`{command}` (seed {seed}, tiny GHN, CPU, {torch.get_num_threads()} threads): {len(rows)} cases in "
        f"{elapsed:.0f} s; **{len(failures)} failures**.", "",
        "A case passes when build_graph + predict_params raise no exception, every predicted tensor is finite and "
        "has its parameter's shape, coverage is 1.0 or every gap is listed with a reason, tied aliases are "
        "reported, and predict() writes the prediction in place keeping each parameter's dtype (and a float32 "
        "model's output stays finite). A zoo model built on the meta device must, once predicted in place, equal a CPU "
        "build of its spec holding the same parameters (every buffer and the outputs, bit for bit). "
        "`user:complex` cases must raise UnsupportedModuleError. Cases are pure "
        "functions of (index, seed): `python scripts/fuzz.py --only INDEX --seed SEED` replays one.", "",
        "| kind | cases | ok | expected error | failures | coverage < 1 | params (median) | s/case |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in sorted(by_kind):
        rs = by_kind[kind]
        ok = sum(r["status"] == "ok" for r in rs)
        exp = sum(r["status"] == "expected_error" for r in rs)
        partial = sum(1 for r in rs if r["coverage"] is not None and r["coverage"] < 1.0)
        params = sorted(r["params"] for r in rs)
        lines.append(f"| {kind} | {len(rs)} | {ok} | {exp} | {len(rs) - ok - exp} | {partial} | "
                     f"{params[len(params) // 2]:,} | {sum(r['seconds'] for r in rs) / len(rs):.3f} |")
    dtypes = collections.Counter(r["dtype"] for r in rows if r["dtype"])
    lines += ["", f"Model dtypes: {', '.join(f'{k} {v}' for k, v in sorted(dtypes.items()))}; "
              f"meta-device models: {sum(r['meta'] for r in rows)} (built with torch.device('meta'): "
              f"{sum(r.get('build') == 'meta' for r in rows)}, with ghn.init_empty_weights(): "
              f"{sum(r.get('build') == 'init_empty_weights' for r in rows)}), each predicted in place and compared "
              "with a CPU build holding the same parameters.", ""]
    statuses = collections.Counter(r["status"] for r in rows)
    lines += [f"Statuses: {', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))}.", ""]
    if failures:
        lines += ["## Failures", ""]
        for r in failures[:50]:
            detail = r["detail"].splitlines()[0] if r["detail"] else ""
            lines.append(f"- #{r['index']} {r['kind']} {r['note']} ({r['dtype']}): {r['status']}: {detail}")
        lines.append("")
    text = "\n".join(lines)
    if str(out) != os.devnull:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, out)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="number of cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first case index")
    p.add_argument("--only", type=int, default=None, help="run only this case index (prints the full error)")
    p.add_argument("--kinds", default="", help="comma-separated subset of: " + ", ".join(KINDS))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz.md")
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    kinds = tuple(k for k in args.kinds.split(",") if k) or KINDS
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        p.error(f"unknown kinds {unknown}; choose from {', '.join(KINDS)}")
    if args.only is not None:
        row = run(1, args.seed, args.only, kinds)[0]
        print(row["status"], row["kind"], row["note"], "\n" + row["detail"])
        return 0 if row["status"] in ("ok", "expected_error") else 1
    t0 = time.perf_counter()
    rows: list[dict] = []

    def progress(row: dict) -> None:
        rows.append(row)
        if row["status"] not in ("ok", "expected_error"):
            print(f"FAIL #{row['index']} {row['kind']}: {row['status']}: {row['detail'].splitlines()[0]}",
                  flush=True)
        if len(rows) % 100 == 0:
            print(f"{len(rows)}/{args.n} cases, {time.perf_counter() - t0:.0f} s", flush=True)
            write_report(rows, args.out, args.seed, time.perf_counter() - t0, _command(args))

    run(args.n, args.seed, args.start, kinds, progress=progress)
    text = write_report(rows, args.out, args.seed, time.perf_counter() - t0, _command(args))
    print(text)
    return 0 if all(r["status"] in ("ok", "expected_error") for r in rows) else 1


def _command(args: argparse.Namespace) -> str:
    return f"python scripts/fuzz.py --n {args.n} --seed {args.seed}" + (f" --start {args.start}" if args.start else "")


if __name__ == "__main__":
    sys.exit(main())
