"""timm models as a family: any ``timm.list_models()`` name that runs on small inputs.

A spec is ``{"name", "input_shape", "num_classes", "overrides"}`` and builds with
``timm.create_model(name, pretrained=False, in_chans=C, num_classes=num_classes, **overrides)``. Which names run
on a given input shape, and with which overrides (``img_size`` for fixed-size models, a smaller ``patch_size`` for
patch-16 ViTs, ...), is found by :func:`probe`: the first override set from :func:`candidate_overrides` whose model
maps a ``(2, C, H, W)`` batch to ``(2, num_classes)`` on the meta device (on CPU for small models whose forward
needs real values). For the default 1x28x28 / 10-class task the result is precomputed in
``model_zoo/data/timm_1x28x28_c10.json`` (refresh it with ``python -m model_zoo.timm_family --refresh``), so
sampling is fast and does not change when timm's meta kernels do; other shapes are probed lazily.

Shapes: input ``(B, C, H, W)`` floats; output logits ``(B, num_classes)``.
"""
from __future__ import annotations

import argparse
import fnmatch
import functools
import json
import logging
import os
import random
from pathlib import Path

import torch
from torch import nn

from ghn.errors import ConfigError

from .registry import register_arch, register_family
from .spec import ArchSpec, count_params

__all__ = ["build", "sample", "probe", "candidate_overrides", "runnable_models", "OVERRIDES"]
log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).parent / "data"
# Model-specific overrides tried before the generic ones (fnmatch pattern -> list of override sets).
# NOTE: keep this small; the generic candidates handle most fixed-size models.
OVERRIDES: dict[str, list[dict]] = {
    "swin*": [dict(patch_size=1, window_size=7)],
    "swinv2_*": [dict(patch_size=1, window_size=7)],
}
# Models whose CPU fallback probe we allow (meta forward failed): bounded so probing never allocates much.
CPU_PROBE_MAX_PARAMS = 30_000_000
# A patch-embedding model with fewer patches than this on the small input gets a smaller patch_size if one works.
MIN_PATCHES = 16


def build(hparams: dict) -> nn.Module:
    """``timm.create_model(name, pretrained=False, in_chans, num_classes, **overrides)``."""
    import timm

    try:
        c = hparams["input_shape"][0]
        return timm.create_model(hparams["name"], pretrained=False, in_chans=c, num_classes=hparams["num_classes"],
                                 **hparams.get("overrides", {}))
    except KeyError as e:
        raise ConfigError(f"timm hparams miss {e}") from None
    except RuntimeError as e:
        if "Unknown model" in str(e):
            raise ConfigError(f"unknown timm model {hparams['name']!r}") from e
        raise


def candidate_overrides(name: str, input_shape: tuple | list) -> list[dict]:
    """Override sets to try for ``name`` on ``input_shape``, most faithful first."""
    _, h, w = input_shape
    size = h if h == w else [h, w]
    cands = [ov for pat, ovs in OVERRIDES.items() if fnmatch.fnmatch(name, pat) for ov in ovs]
    cands = [{"img_size": size, **ov} if "img_size" not in ov else ov for ov in cands]
    cands += [{}, {"img_size": size}]
    cands += [{"img_size": size, "patch_size": p} for p in (4, 7, 2, 14, 8) if h % p == 0 and w % p == 0]
    return cands


def _num_patches(model: nn.Module) -> int:
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    return int(torch.tensor(grid).prod()) if grid else MIN_PATCHES


def _runs(model: nn.Module, x: torch.Tensor, num_classes: int) -> bool:
    with torch.no_grad():
        y = model(x)
    return isinstance(y, torch.Tensor) and tuple(y.shape) == (x.shape[0], num_classes)


def probe(name: str, input_shape: tuple | list = (1, 28, 28), num_classes: int = 10) -> dict:
    """Find the overrides under which timm model ``name`` runs on ``input_shape``.

    Returns:
        ``{"overrides": dict, "params": int}`` when it runs, else ``{"error": "Type: message"}`` (the error of
        the plainest override set).
    """
    import timm

    c, h, w = input_shape
    first_err = fallback = None
    for ov in candidate_overrides(name, input_shape):
        hp = dict(name=name, input_shape=list(input_shape), num_classes=num_classes, overrides=ov)
        try:
            with torch.device("meta"):
                model = build(hp)
            n = count_params(model)
        except Exception as e:  # noqa: BLE001 - any constructor failure means "try the next override set"
            first_err = first_err or e
            continue
        try:
            with torch.device("meta"):
                ok = _runs(model.eval(), torch.empty(2, c, h, w), num_classes)
        except Exception as e:  # noqa: BLE001
            ok = False
            if n <= CPU_PROBE_MAX_PARAMS:  # meta kernels miss data-dependent ops (.item(), nonzero): retry on CPU
                try:
                    ok = _runs(build(hp).eval(), torch.zeros(2, c, h, w), num_classes)
                except Exception as e2:  # noqa: BLE001
                    e = e2
            if not ok:
                first_err = first_err or e
        if not ok:
            first_err = first_err or ValueError(f"output is not a tensor of shape (2, {num_classes})")
        if ok:
            found = {"overrides": ov, "params": n}
            if "patch_size" in ov or _num_patches(model) >= MIN_PATCHES:
                return found
            fallback = fallback or found  # runs, but on very few patches: prefer a smaller patch_size if one runs
    if fallback:
        return fallback
    msg = str(first_err).strip().splitlines()[0][:200] if first_err and str(first_err).strip() else ""
    return {"error": f"{type(first_err).__name__}: {msg}"}


def _table_path(input_shape, num_classes) -> Path:
    return DATA_DIR / f"timm_{'x'.join(map(str, input_shape))}_c{num_classes}.json"


@functools.lru_cache(maxsize=8)
def _table(input_shape: tuple, num_classes: int) -> dict | None:
    p = _table_path(input_shape, num_classes)
    return json.loads(p.read_text())["models"] if p.exists() else None


def runnable_models(input_shape: tuple | list = (1, 28, 28), num_classes: int = 10) -> dict[str, dict]:
    """``{name: {"overrides", "params"}}`` of the precomputed table for this shape ({} if there is none)."""
    t = _table(tuple(input_shape), num_classes) or {}
    return {k: v for k, v in t.items() if "error" not in v}


def sample(rng: random.Random, *, input_shape: tuple | list = (1, 28, 28), num_classes: int = 10,
           min_params: int | None = None, max_params: int | None = 5_000_000, pattern: str = "*",
           exclude: tuple | list = ()) -> dict:
    """Sample a timm model name (+ overrides) that runs on ``input_shape``.

    Args:
        min_params, max_params: parameter-count bounds (the default keeps CPU training feasible).
        pattern, exclude: fnmatch filters on the timm name (e.g. ``pattern="resnet*"``).
    Raises:
        ConfigError: no timm model fits the constraints.
    """
    import timm

    def fits(n: int) -> bool:
        return (min_params is None or n >= min_params) and (max_params is None or n <= max_params)

    names = [n for n in timm.list_models(pattern) if not any(fnmatch.fnmatch(n, e) for e in exclude)]
    table = _table(tuple(input_shape), num_classes)
    if table is not None:
        ok = sorted(n for n in names if n in table and "error" not in table[n] and fits(table[n]["params"]))
        if not ok:
            raise ConfigError(f"no timm model matches pattern={pattern!r} with {min_params} <= params <= "
                              f"{max_params} on input_shape={tuple(input_shape)}")
        name = rng.choice(ok)
        found = table[name]
    else:  # no table for this shape: probe random names until one runs and fits
        order = sorted(names)
        rng.shuffle(order)
        for name in order[:200]:
            found = _probe_cached(name, tuple(input_shape), num_classes)
            if "error" not in found and fits(found["params"]):
                break
        else:
            raise ConfigError(f"no timm model in 200 tries runs on input_shape={tuple(input_shape)} with "
                              f"{min_params} <= params <= {max_params}")
    return dict(name=name, input_shape=list(input_shape), num_classes=num_classes, overrides=found["overrides"])


@functools.lru_cache(maxsize=4096)
def _probe_cached(name: str, input_shape: tuple, num_classes: int) -> dict:
    return probe(name, input_shape, num_classes)


register_family("timm", task="image", sample=sample, build=build)


@register_arch
def test_timm_resnet() -> ArchSpec:
    """timm's ``resnet18`` shrunk to one BasicBlock per stage, 4-8 channels (about 6k parameters), 1x28x28."""
    return ArchSpec("timm", dict(name="resnet18", input_shape=[1, 28, 28], num_classes=10,
                                 overrides=dict(layers=[1, 1, 1, 1], channels=[4, 4, 4, 8], stem_width=4)))


def refresh(input_shape=(1, 28, 28), num_classes: int = 10, limit: int | None = None,
            pattern: str | None = None) -> Path:
    """Probe ``timm.list_models()`` names and write the table (atomically) next to this module.

    With ``pattern``, only matching names are re-probed and merged into the existing table.
    """
    import timm

    names = timm.list_models(pattern or "*")[:limit]
    old = _table(tuple(input_shape), num_classes) if pattern else None
    models = dict(old or {})
    for i, name in enumerate(names):
        models[name] = probe(name, input_shape, num_classes)
        log.info("%d/%d %s %s", i + 1, len(names), name, models[name])
    p = _table_path(input_shape, num_classes)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"timm_version": timm.__version__, "torch_version": torch.__version__,
                               "input_shape": list(input_shape), "num_classes": num_classes,
                               "models": dict(sorted(models.items()))},
                              indent=1, sort_keys=True))
    os.replace(tmp, p)
    _table.cache_clear()
    return p


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="Probe which timm models run on small inputs; write the table.")
    ap.add_argument("--refresh", action="store_true", help="probe all timm models and rewrite the table")
    ap.add_argument("--input-shape", default="1,28,28", help="C,H,W (default 1,28,28)")
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--limit", type=int, default=None, help="probe only the first N names")
    ap.add_argument("--names", default=None, help="re-probe only names matching this fnmatch pattern, keep the rest")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    shape = tuple(int(s) for s in args.input_shape.split(","))
    if args.refresh:
        p = refresh(shape, args.num_classes, args.limit, args.names)
        t = json.loads(p.read_text())["models"]
        log.info("wrote %s: %d/%d models run", p, sum("error" not in v for v in t.values()), len(t))


if __name__ == "__main__":
    main()
