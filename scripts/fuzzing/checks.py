"""What a fuzz case must pass: ``run_case`` builds the graph, predicts, and checks shapes, finiteness, coverage, the
in-place write, and (meta models) equality with a CPU build."""
from __future__ import annotations

import copy
import time
import traceback
import warnings

import torch
import torch.nn as nn

from ghn import GHN, build_graph
from ghn.errors import GHNError
from ghn.parametrized import _legacy_hook, effective_value

from .cases import Case

__all__ = ["run_case"]


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
        if row["status"] == "ok" and write and "plain" in case.extra:
            row.update(_check_effective(ghn, case, pred))
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


def _check_effective(ghn: GHN, case: Case, pred) -> dict:
    """After predict(), each parametrized layer computes the prediction for the same architecture without
    parametrizations: weight norm exactly, spectral norm divided by its largest singular value, any other
    parametrization what ``module.weight = prediction`` gives (torch's own right_inverse semantics).

    Skipped where a parametrization cannot be written through (no right_inverse): its layer's weight is a listed
    gap, so the graph is not the plain architecture's. Elsewhere the graphs must bind the same tensors."""
    if any("right_inverse" in why for why in pred.coverage.missing.values()):
        return {}
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = ghn.predict_params(case.extra["plain"]().to(case.dtype), case.inputs)
    if pred.graph.param_names != plain.graph.param_names:
        return dict(status="wrong_effective", detail=f"the graph binds {pred.graph.param_names[:6]}..., the plain "
                                                      f"architecture's {plain.graph.param_names[:6]}...")
    exact = case.dtype in (torch.float32, torch.float64)
    tol = dict(rtol=1e-4, atol=1e-5) if exact else dict(rtol=3e-2, atol=3e-3)
    checked = 0
    for name, spec in pred.graph.parametrized.items():
        if not exact and spec.via not in ("weight_norm", "spectral_norm"):
            continue  # torch has no fp16/bf16 CPU kernels for e.g. orthogonal's QR: the model itself cannot run
        module = case.model.get_submodule(spec.module)
        got = effective_value(case.model, spec.module, spec.attr).float()
        want = plain[name]
        if spec.via == "spectral_norm":
            hook = _legacy_hook(module)
            dim = (hook if hook is not None else module.parametrizations[spec.attr][0]).dim
            want = want / torch.linalg.matrix_norm(want.movedim(dim, 0).flatten(1), ord=2)
        elif spec.via != "weight_norm":
            twin = copy.deepcopy(module)
            with torch.no_grad(), torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                setattr(twin, spec.attr, want.to(got.device, getattr(twin, spec.attr).dtype))
            want = effective_value(twin, "", spec.attr).float()
        if got.shape != want.shape or not torch.allclose(got, want, **tol):
            diff = (got - want).abs().max().item() if got.shape == want.shape else "shape"
            return dict(status="wrong_effective", detail=f"{name} ({spec.via}): the module computes a weight "
                                                         f"that differs from the plain layer's prediction (max "
                                                         f"|diff| {diff})")
        checked += 1
    return dict(effective=checked)


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
