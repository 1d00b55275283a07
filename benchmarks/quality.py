"""Quality: GHN-predicted vs default vs LSUV initialisation on held-out architectures (Fashion-MNIST), and
(``--task lm``, :mod:`benchmarks.quality_lm`) predicted vs default init of byte-level language models.

Protocol (DESIGN.md, "Evaluation protocol"):

* **zero-shot** (step 0, no training): initialise, then, if the model has BatchNorm, reset its running statistics
  and recompute them from 20 training batches of 128 images (cumulative average, ``momentum=None``) and switch to
  eval mode. The same recalibration is applied to every initialisation, so the comparison is fair;
* **fine-tuned**: SGD (lr 0.05, momentum 0.9, batch 64) from that state, with the same data order and seed for
  every initialisation; test accuracy after 100 and 500 steps (and at a few steps between, for the plot). With
  ``--seeds N`` each fine-tuned number is the mean over N data orders (seeds ``seed … seed + N - 1``, each from the
  same initialised, recalibrated model; :func:`benchmarks.common.mean_over_orders`): one order alone moves a net's
  100-step accuracy by up to 5 points. The archs, inits, BN batches and so the zero-shot column depend on ``--seed``
  only.

Initialisations: ``ghn`` (``ghn.predict``), ``default`` (the model's own constructor init, seeded), and ``lsuv``
(Mishkin & Matas, "All you need is a good init", ICLR 2016, https://arxiv.org/abs/1511.06422: orthogonal weights,
then each conv/linear layer rescaled in forward order until its output variance on a data batch is 1).

Archs: held-out specs of ``model_zoo`` (``heldout_archs``: never in the training split) from several families,
and a named real-world set (``REAL_IMAGE_NETS``: timm ResNet-18, RegNetX-200MF, MobileNetV3-Small, EfficientNet-B0,
ConvNeXt-Atto, DeiT-Tiny and a 4-block MLP-Mixer at 28x28, torchvision ResNet-18 and MobileNetV3-Small with 1-channel
stems, a plain user-written CNN and LeNet-5).
Run: ``python -m benchmarks.quality [--quick] [--device cuda]``. Writes ``results/quality.{md,json,png}``
(``quality_quick.*`` with ``--quick``); ``--task lm`` evaluates the LM predictor (``checkpoints/ghn-fortunes``) and
writes ``results/quality_lm{_quick}.*``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

from ghn import GHN
from ghn.domain import graph_for
from ghn.graph import residual_branch_ends
from train.data import stream_seed
from train.evaluate import BN_BATCH_SIZE, BN_BATCHES, ImageEvalData, accuracy, bn_batches, zero_shot_accuracy

from .common import (Arch, add_common_args, env_info, ghn_label, load_ghn, md_table, mean_over_orders, orders_note,
                     seeded, setup, write_results)

__all__ = ["PlainCNN", "LeNet5", "Arch", "REAL_IMAGE_NETS", "real_image_archs", "image_archs", "lsuv_", "INIT_NAMES",
           "evaluate_image_arch", "run", "main"]

logger = logging.getLogger(__name__)

LR, MOMENTUM, BATCH = 0.05, 0.9, 64  # fine-tuning protocol
INIT_NAMES = ("ghn", "ghn_raw", "default", "lsuv")  # ghn: predict() as shipped; ghn_raw: branch_scale=1
GHN_INITS = ("ghn", "ghn_raw")  # the inits that depend on the GHN (the others can be reused across runs)
N_ZOO = 30  # held-out zoo archs of the full run


# ---- architectures --------------------------------------------------------------------------------------------
class PlainCNN(nn.Module):
    """What a user writes for Fashion-MNIST: two conv-BN-ReLU-pool stages and a two-layer classifier."""

    def __init__(self, width: int = 32, num_classes: int = 10):
        super().__init__()
        c = width
        self.features = nn.Sequential(
            nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(2 * c * 7 * 7, 128), nn.ReLU(),
                                        nn.Linear(128, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class LeNet5(nn.Module):
    """LeCun et al. 1998, as users re-type it for 28x28 digits: two tanh conv + avg-pool stages, three linears."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 6, 5, padding=2), nn.Tanh(), nn.AvgPool2d(2),
                                      nn.Conv2d(6, 16, 5), nn.Tanh(), nn.AvgPool2d(2))
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 5 * 5, 120), nn.Tanh(), nn.Linear(120, 84),
                                        nn.Tanh(), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import timm
        return timm.create_model(name, pretrained=False, in_chans=1, num_classes=10, **kw)
    return make


def _timm_class(cls: str, **kw) -> Callable[[], nn.Module]:
    """A timm model class with its own hyper-parameters (no registered name has the small size)."""
    def make() -> nn.Module:
        import timm.models
        return getattr(timm.models, cls)(in_chans=1, num_classes=10, **kw)
    return make


def _torchvision(name: str) -> Callable[[], nn.Module]:
    """A torchvision classifier with its first conv swapped for a 1-channel one (what users do for grey images)."""
    def make() -> nn.Module:
        import torchvision
        model = getattr(torchvision.models, name)(weights=None, num_classes=10)
        parent, attr = model, "conv1"
        if not hasattr(model, "conv1"):  # mobilenets / efficientnets: features[0][0]
            parent, attr = model.features[0], "0"
        old = getattr(parent, attr)
        setattr(parent, attr, nn.Conv2d(1, old.out_channels, old.kernel_size, old.stride, old.padding,
                                        bias=old.bias is not None))
        return model
    return make


#: the named real-world image set: library and hand-written nets at 1x28x28 / 10 classes; no image training run
#: samples any of them (the shipped predictor trains on the cnn/vit/mlp zoo families, never the timm family)
REAL_IMAGE_NETS: dict[str, tuple[str, Callable[[], nn.Module]]] = {
    "timm_resnet18": ("timm", _timm("resnet18")),
    "timm_regnetx_002": ("timm", _timm("regnetx_002")),
    "timm_mobilenetv3_small_050": ("timm", _timm("mobilenetv3_small_050")),  # depthwise, SE, hard-swish
    "timm_efficientnet_b0": ("timm", _timm("efficientnet_b0")),
    "timm_convnext_atto": ("timm", _timm("convnext_atto", patch_size=1)),  # 1x1 stem: 28x28 keeps 4 stages
    "timm_deit_tiny": ("timm", _timm("deit_tiny_patch16_224", img_size=28, patch_size=4)),
    "timm_mixer_p4_d4": ("timm", _timm_class("MlpMixer", img_size=28, patch_size=4, num_blocks=4, embed_dim=128)),
    "torchvision_resnet18": ("torchvision", _torchvision("resnet18")),
    "torchvision_mobilenet_v3_small": ("torchvision", _torchvision("mobilenet_v3_small")),
    "plain_cnn": ("user", PlainCNN),
    "lenet5": ("user", LeNet5),
}


def real_image_archs(seed: int = 0) -> list[Arch]:
    """The named real-world set (:data:`REAL_IMAGE_NETS`), each built with its default init seeded by ``seed``."""
    return [Arch(name, family, seeded(make, seed), "real-world net, never sampled in meta-training")
            for name, (family, make) in REAL_IMAGE_NETS.items()]


def image_archs(quick: bool = False, n_zoo: int = N_ZOO, seed: int = 0) -> list[Arch]:
    """Held-out image archs, all 1x28x28 / 10 classes.

    Quick: 2 zoo held-out specs (vit, mlp) and the plain user-written CNN. Full: ``n_zoo`` zoo held-out specs
    (cnn, vit, mlp at the families' default sizes, up to 500k parameters, so larger than the training limit) and
    the named real-world set :func:`real_image_archs`.
    """
    from model_zoo import heldout_archs

    families = ("vit", "mlp") if quick else ("cnn", "vit", "mlp")
    zoo = heldout_archs(2 if quick else n_zoo, seed=seed, families=families)
    archs = [Arch(name, spec.family, spec.build, "model_zoo held-out split", spec.to_dict()) for name, spec in
             zoo.items()]
    if quick:
        return archs + [Arch("plain_cnn", "user", seeded(PlainCNN, seed), "user-written, not a zoo family")]
    return archs + real_image_archs(seed)


# ---- initialisations ------------------------------------------------------------------------------------------
class _Stop(Exception):
    """Raised by a forward hook to cut the forward pass short once the layer of interest has run."""


@torch.no_grad()
def lsuv_(model: nn.Module, x: torch.Tensor, tol: float = 0.1, max_iter: int = 10) -> nn.Module:
    """LSUV in place: orthogonal conv/linear weights (zero biases), then per layer in forward order divide the
    weight by the std of its output on ``x`` until the variance is within ``tol`` of 1."""
    layers = [m for m in model.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    for m in layers:
        nn.init.orthogonal_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    order: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, i, o: order.append(mod)) for m in layers]
    model.train()  # batch statistics in BatchNorm, as during training
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    for m in dict.fromkeys(order):  # first use of each layer, in execution order
        out: list[torch.Tensor] = []

        def grab(mod, i, o):
            out.append(o)
            raise _Stop  # nothing after this layer matters for its variance

        h = m.register_forward_hook(grab)
        try:
            for _ in range(max_iter):
                out.clear()
                try:
                    model(x)
                except _Stop:
                    pass
                var = out[0].float().var()
                if not torch.isfinite(var) or var < 1e-12 or abs(var - 1) < tol:
                    break
                m.weight.div_(var.sqrt())
        finally:
            h.remove()
    return model


def _reusable(runs: list[dict], arch: Arch, init: str, fingerprint: str, scale: float) -> tuple[int, dict] | None:
    """``(params, result)`` of ``init`` on ``arch`` from the first run that measured it under this protocol: the
    same init for default/LSUV; for a GHN init, a GHN row of the same GHN measured with the same branch scale."""
    for run in runs:
        old = run.get("image", {}).get(arch.name)
        if old is None or old.get("spec") != arch.spec:
            continue
        if init not in GHN_INITS:
            if init in old["inits"]:
                return old["params"], old["inits"][init]
        elif run.get("ghn_fingerprint") == fingerprint:
            for name in GHN_INITS:
                r = old["inits"].get(name)
                if r is not None and r.get("branch_scale") == scale:
                    return old["params"], {k: v for k, v in r.items() if k != "same_as_ghn"}
    return None


def ghn_fingerprint(ghn: GHN) -> str:
    """sha256 over the GHN's config and weights: which predictor measured a row. ``branch_scale`` is left out: each
    GHN row records the scale it was measured with, and is reused only for that scale."""
    h = hashlib.sha256(json.dumps({k: v for k, v in ghn.config.to_dict().items() if k not in ("notes", "branch_scale")},
                                  sort_keys=True).encode())
    for k, v in sorted(ghn.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def init_model(name: str, arch: Arch, ghn: GHN, device: torch.device, example: torch.Tensor,
               data_batch: torch.Tensor | None) -> tuple[nn.Module, dict]:
    """Build ``arch`` with its default init on ``device`` and apply initialisation ``name``.

    Returns:
        the model and info (``init_s``; ``coverage`` for the GHN).
    """
    with torch.device(device):
        model = arch.build().to(device)  # zoo specs build on CPU (seeded init), then move
    info: dict = {}
    t = time.perf_counter()
    if name in GHN_INITS:
        graph, _ = graph_for(ghn.config, model, example, ghn.config.max_hops)  # built once: coverage + predict
        info["coverage"] = graph.coverage.fraction
        info["branch_scale"] = ghn.config.branch_scale if name == "ghn" else 1.0
        info["branch_ends"] = len(residual_branch_ends(graph))
        ghn.predict(model, graph=graph, branch_scale=info["branch_scale"])
    elif name == "lsuv":
        if data_batch is None:
            raise ValueError("lsuv needs a data batch")
        lsuv_(model, data_batch)
    elif name != "default":
        raise ValueError(f"unknown init {name!r}; choose from {INIT_NAMES}")
    info["init_s"] = time.perf_counter() - t
    return model, info


# ---- image evaluation (zero-shot by train.evaluate, the meta-training's own protocol code) -----------------------
def evaluate_image_arch(model: nn.Module, data: ImageEvalData, train_y: torch.Tensor, eval_steps: tuple[int, ...],
                        seed: int = 0, orders: int = 1) -> dict:
    """Zero-shot accuracy (``train.evaluate.zero_shot_accuracy``: BN recalibration, eval mode), then SGD fine-tuning
    with test accuracy at ``eval_steps``, averaged over ``orders`` data orders (:func:`mean_over_orders`).

    The BN batches and the training orders come from generators seeded by ``seed`` (and ``seed + 1``, … for the
    further orders) alone, so every init of an arch sees exactly the same data.

    Returns:
        ``{"acc": {step: %}, "loss": {step: training loss of that step's batch}, "diverged": bool}``, plus
        ``orders`` (every order's values) when ``orders > 1``.
    """
    zero = zero_shot_accuracy(model, data, seed=seed)
    out = mean_over_orders(lambda m, s: finetune_image(m, data, train_y, eval_steps, s), model, seed, orders)
    return {**out, "acc": {0: zero, **out["acc"]}}


def finetune_image(model: nn.Module, data: ImageEvalData, train_y: torch.Tensor, eval_steps: tuple[int, ...],
                   seed: int) -> dict:
    """SGD in place with the data order and forward-pass seed of ``seed``; ``{"acc", "loss", "diverged"}`` at the
    nonzero ``eval_steps``."""
    xtr = data.train_x
    acc, losses = {}, {}
    order = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(stream_seed("finetune", seed)))
    torch.manual_seed(seed)  # dropout and anything else random in the forward pass
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    diverged = False
    for step in range(1, max(eval_steps) + 1):
        model.train()
        i = ((step - 1) * BATCH) % (len(xtr) - BATCH + 1)
        idx = order[i:i + BATCH].to(xtr.device)
        loss = F.cross_entropy(model(xtr[idx]), train_y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if not math.isfinite(loss.item()):
            diverged = True
        if step in eval_steps:
            model.eval()
            acc[step] = accuracy(model, data.test_x, data.test_y)
            losses[step] = loss.item()
    return {"acc": acc, "loss": losses, "diverged": diverged}


# ---- driver ---------------------------------------------------------------------------------------------------
def load_image_data(device: torch.device, data_dir: Path | None = None, test_images: int | None = None
                    ) -> tuple[ImageEvalData, torch.Tensor]:
    """``ImageEvalData`` (normalised train images, test prefix) on ``device``, and the training labels."""
    from train.data import fashion_mnist, normalize

    train_px, train_y = fashion_mnist("train", data_dir)
    test_px, test_y = fashion_mnist("test", data_dir, limit=test_images)
    return ImageEvalData(normalize(train_px).to(device), normalize(test_px).to(device), test_y), train_y.to(device)


def run(ghn: GHN, device: torch.device, quick: bool = False, inits: tuple[str, ...] = ("ghn", "default", "lsuv"),
        archs: list[Arch] | None = None, test_limit: int | None = None, eval_steps: tuple[int, ...] | None = None,
        seed: int = 0, fmnist_dir: Path | None = None, reuse: list[dict] | None = None, orders: int = 1) -> dict:
    """Evaluate every (arch, init); returns the JSON-able results. ``orders``: data orders each fine-tuned number
    is the mean of (the protocol records it when > 1, so results of another number of orders are never reused).

    ``reuse``: earlier runs' results, first match wins: an (arch, init) result is taken instead of re-measured
    when that run's protocol is this run's, and — for the GHN inits — its GHN is this one (same weights and
    config, :func:`ghn_fingerprint`). Default and LSUV results do not depend on the GHN, so re-evaluating a new
    predictor only runs the GHN inits, and runs split over processes merge into one report.
    """
    eval_steps = eval_steps or ((0, 25, 100) if quick else (0, 25, 50, 100, 200, 500))
    test_limit = test_limit if test_limit is not None else (1000 if quick else None)
    data, train_y = load_image_data(device, fmnist_dir, test_limit)
    example = torch.randn(2, 1, 28, 28)
    lsuv_batch = next(bn_batches(data.train_x, seed=seed))  # LSUV sees one of the BN batches: no extra data
    res: dict = {"protocol": {"eval_steps": list(eval_steps), "test_images": len(data.test_y), "lr": LR,
                              "momentum": MOMENTUM, "batch": BATCH, "bn_batches": BN_BATCHES,
                              "bn_batch": BN_BATCH_SIZE, "seed": seed,
                              **({"data_orders": orders} if orders > 1 else {})}, "image": {}}
    res["ghn_fingerprint"] = ghn_fingerprint(ghn)
    for old in reuse or []:
        if old.get("protocol") != res["protocol"]:
            raise ValueError(f"--reuse: a run's protocol {old.get('protocol')} is not this run's {res['protocol']}")
    for arch in archs if archs is not None else image_archs(quick, seed=seed):
        row: dict = {"family": arch.family, "set": arch.set, "heldout": arch.heldout, "spec": arch.spec, "inits": {}}
        for name in inits:
            found = _reusable(reuse or [], arch, name, res["ghn_fingerprint"],
                              ghn.config.branch_scale if name == "ghn" else 1.0)
            if found is not None:
                row["params"], row["inits"][name] = found[0], {**found[1], "reused": True}
                continue
            same = row["inits"].get("ghn", {})
            if name == "ghn_raw" and same and (same["branch_scale"] == 1.0 or same["branch_ends"] == 0):
                row["inits"][name] = {**same, "branch_scale": 1.0, "same_as_ghn": True}  # the identical model
                continue
            t = time.perf_counter()
            model, info = init_model(name, arch, ghn, device, example, lsuv_batch)
            row["params"] = sum(p.numel() for p in model.parameters())
            out = evaluate_image_arch(model, data, train_y, eval_steps, seed, orders)
            row["inits"][name] = {**info, **out, "seconds": time.perf_counter() - t}
            logger.info("%s %s: %s", arch.name, name, {k: round(v, 1) for k, v in out["acc"].items()})
            del model
        res["image"][arch.name] = row
    res["summary"] = summarize(res)
    return res


def summarize(res: dict) -> dict:
    """Goal checks: mean zero-shot accuracy of the GHN init, and how often it beats default init by ≥ 5 points."""
    image = res["image"]
    if not image or "ghn" not in next(iter(image.values()))["inits"]:
        return {}
    steps = res["protocol"]["eval_steps"]
    out: dict = {"mean_acc": {name: {s: statistics.fmean(r["inits"][name]["acc"][s] for r in image.values())
                                     for s in steps}
                              for name in next(iter(image.values()))["inits"]}}
    out["zero_shot_ghn_mean"] = out["mean_acc"]["ghn"][0]
    early = 100 if 100 in steps else sorted(steps)[1] if len(steps) > 1 else 0
    if "default" in out["mean_acc"]:
        wins = [r["inits"]["ghn"]["acc"][early] - r["inits"]["default"]["acc"][early] >= 5 for r in image.values()]
        out["early_step"] = early
        out["ghn_beats_default_by_5_at_early_step"] = sum(wins) / len(wins)
        out["sets"] = {}
        for name in dict.fromkeys(r.get("set", "zoo") for r in image.values()):
            rows = [r for r in image.values() if r.get("set", "zoo") == name]
            gap = {s: [r["inits"]["ghn"]["acc"][s] - r["inits"]["default"]["acc"][s] for r in rows] for s in steps}
            out["sets"][name] = {"n": len(rows), "zero_shot_ghn_mean": statistics.fmean(
                r["inits"]["ghn"]["acc"][0] for r in rows), "frac_beats_by_5_at_early_step": sum(
                g >= 5 for g in gap[early]) / len(rows), "worst_gap_at_last_step": min(gap[max(steps)]),
                "mean_acc": {init: {s: statistics.fmean(r["inits"][init]["acc"][s] for r in rows) for s in steps}
                             for init in out["mean_acc"]}}
    return out


def to_markdown(res: dict, label: str, env: dict) -> str:
    p = res["protocol"]
    steps = p["eval_steps"]
    shown = [s for s in steps if s in (0, 100, 500)] or steps
    rows = []
    for arch, r in res["image"].items():
        for name, v in r["inits"].items():
            row = {"arch": arch, "family": r["family"], "params": r["params"], "init": name}
            for s in shown:
                row["zero-shot" if s == 0 else f"fine-tuned {s} steps"] = v["acc"][s]
            if name in GHN_INITS:
                row["coverage"] = v.get("coverage")
                row["init"] = f"{name} (×{v.get('branch_scale', 1.0):g})"
            rows.append(row)
    banner = ("> **Untrained GHN.** These numbers come from the placeholder predictor (`trained: false`): they check "
              "the pipeline, not a learned initialisation. Re-run the command in `benchmarks/README.md` once the "
              "trained predictor is in `checkpoints/ghn-fmnist`.\n\n" if "UNTRAINED" in label else "")
    parts = [f"# Quality: predicted vs default vs LSUV initialisation\n\n{banner}GHN: {label}. Device: {env['device']}. "
             f"Test accuracy (%) on {p['test_images']:,} Fashion-MNIST test images. **Zero-shot** = no training "
             f"(BatchNorm statistics recomputed from {p['bn_batches']} training batches of {p['bn_batch']}, for every "
             f"init); **fine-tuned N steps** = SGD lr {p['lr']}, momentum {p['momentum']}, batch {p['batch']}, same "
             f"data order and seed for every init. {orders_note(p)} All archs are held out from meta-training."
             + (f" Command: `{res['command']}`." if res.get("command") else "") + "\n",
             md_table(rows, digits=3)]
    s = res.get("summary") or {}
    if s:
        mean_rows = [{"init": k, **{("zero-shot" if st == 0 else f"{st} steps"): v[st] for st in steps}}
                     for k, v in s["mean_acc"].items()]
        parts += ["\n## Mean over archs\n", md_table(mean_rows)]
        set_rows = [{"set": f"{name} ({v['n']})", "init": k, **{("zero-shot" if st == 0 else f"{st} steps"): a[st]
                                                              for st in steps}}
                    for name, v in s.get("sets", {}).items() if "mean_acc" in v for k, a in v["mean_acc"].items()]
        if set_rows:
            parts += ["\n## Mean per set\n", md_table(set_rows)]
        zs = s["zero_shot_ghn_mean"]
        parts += ["\n## Goals\n", f"- Mean zero-shot accuracy of the GHN init: {zs:.1f} % (goal ≥ 70 %): "
                  f"{'met' if zs >= 70 else 'MISSED'}"]
        if "ghn_beats_default_by_5_at_early_step" in s:
            f = s["ghn_beats_default_by_5_at_early_step"]
            parts.append(f"- After {s['early_step']} steps, GHN init ≥ default init + 5 points on {100 * f:.0f} % of "
                         f"the archs (goal ≥ 90 %): {'met' if f >= 0.9 else 'MISSED'}")
        for name, v in s.get("sets", {}).items():
            parts.append(f"- {name} set ({v['n']} archs): zero-shot mean {v['zero_shot_ghn_mean']:.1f} %, ≥ default "
                         f"+ 5 points after {s['early_step']} steps on {100 * v['frac_beats_by_5_at_early_step']:.0f} "
                         f"%, worst GHN − default after {max(steps)} steps {v['worst_gap_at_last_step']:+.1f} points "
                         + ("(goal ≥ −1)" if max(steps) >= 500 else "(the goal, ≥ −1 after 500 steps, is not "
                            "measured by this run)"))
    return "\n".join(parts)


def plot(res: dict, path: Path) -> None:
    """Accuracy vs fine-tuning steps, one panel per arch plus the mean."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = list(res["image"].items())
    n = len(panels) + 1
    cols = min(4, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    axes = axes.ravel()
    colors = {"ghn": "C0", "default": "C1", "lsuv": "C2", "ghn_raw": "C3"}
    steps = res["protocol"]["eval_steps"]
    for ax, (arch, r) in zip(axes, panels):
        for name, v in r["inits"].items():
            ax.plot(steps, [v["acc"][s] for s in steps], "o-", ms=3, color=colors.get(name), label=name)
        ax.set_title(f"{arch} ({r['params'] / 1e3:.0f}k)", fontsize=8)
    if res.get("summary"):
        ax = axes[len(panels)]
        for name, v in res["summary"]["mean_acc"].items():
            ax.plot(steps, [v[s] for s in steps], "o-", ms=3, color=colors.get(name), label=name)
        ax.set_title("mean over archs", fontsize=8, fontweight="bold")
    for ax in axes[:len(panels) + 1]:
        ax.set_xscale("symlog", linthresh=25)
        ax.set_ylim(0, 100)
        ax.set_xlabel("SGD steps (0 = zero-shot)", fontsize=7)
        ax.set_ylabel("test acc. %", fontsize=7)
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    for ax in axes[n:]:
        ax.axis("off")
    axes[0].legend(fontsize=7)
    fig.suptitle(f"Held-out archs, Fashion-MNIST test accuracy; GHN: {res.get('ghn', '?')}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _int_steps(x):
    """JSON turns the step keys of the results into strings; turn them back into ints."""
    if isinstance(x, dict):
        return {(int(k) if isinstance(k, str) and k.isdigit() else k): _int_steps(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_int_steps(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.set_defaults(ghn=None)
    p.add_argument("--task", choices=("image", "lm"), default="image",
                   help="image: Fashion-MNIST classifiers (default GHN checkpoints/ghn-fmnist); lm: byte-level causal "
                        "LMs on fortunes (default GHN checkpoints/ghn-fortunes)")
    p.add_argument("--quick", action="store_true",
                   help="image: 3 archs, 1,000 test images, steps 0/25/100; lm: 3 zoo + 2 real LMs, steps 0/25/100 "
                        "(a few minutes on CPU)")
    p.add_argument("--inits", nargs="*", default=["ghn", "default", "lsuv"], choices=INIT_NAMES,
                   help="image inits (ghn: predict() with the predictor's own branch_scale; ghn_raw: branch_scale=1)")
    p.add_argument("--eval-steps", default=None,
                   help="comma-separated SGD steps to evaluate at, 0 = zero-shot (default 0,25,50,100,200,500; quick "
                        "0,25,100)")
    p.add_argument("--test-images", type=int, default=None,
                   help="evaluate on the first N Fashion-MNIST test images (default: all 10,000; quick 1,000)")
    p.add_argument("--set", choices=("zoo", "real"), default=None,
                   help="only the held-out zoo archs or only the named real-world nets (default: both)")
    p.add_argument("--reuse", type=Path, nargs="+", default=None,
                   help="earlier image results .json files: take their results (same protocol; GHN inits only from "
                        "the same GHN) instead of re-running them, e.g. default/LSUV for a new predictor")
    p.add_argument("--seed", type=int, default=0,
                   help="picks the held-out archs, their default init, the BN batches and the first data order")
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="fine-tune every (arch, init) with N data orders (seeds SEED … SEED+N-1) and report the "
                        "mean; the JSON keeps each order's value and the std (default 1)")
    p.add_argument("--fmnist-dir", type=Path, default=None,
                   help="Fashion-MNIST idx .gz files (default: $GHN_FMNIST_DIR or the Debian package's directory)")
    p.add_argument("--fortunes-dir", type=Path, default=None,
                   help="fortune text files (default: $GHN_FORTUNES_DIR or the Debian package's directory)")
    p.add_argument("--render", type=Path, default=None,
                   help="only re-write the .md and .png next to this results .json (no evaluation)")
    args = p.parse_args(argv)
    if args.seeds < 1:
        p.error(f"--seeds {args.seeds}: need at least one data order")
    from . import quality_lm
    plot_fn, markdown = (quality_lm.plot, quality_lm.to_markdown) if args.task == "lm" else (plot, to_markdown)
    if args.render:
        res = _int_steps(json.loads(args.render.read_text()))
        plot_fn(res, args.render.with_suffix(".png"))
        args.render.with_suffix(".md").write_text(markdown(res, res["ghn"], res["env"]) + "\n")
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ghn").setLevel(logging.ERROR)
    device = setup(args)
    args.ghn = args.ghn or ("checkpoints/ghn-fortunes" if args.task == "lm" else "checkpoints/ghn-fmnist")
    ghn = load_ghn(args.ghn, device)
    label = ghn_label(ghn, args.ghn)
    env = env_info(device)
    t = time.perf_counter()
    if args.task == "lm":
        res = quality_lm.run(ghn, device, args.quick, seed=args.seed, fortunes_dir=args.fortunes_dir,
                             orders=args.seeds)
    else:
        reuse = [_int_steps(json.loads(f.read_text())) for f in args.reuse or []]
        steps = tuple(int(s) for s in args.eval_steps.split(",")) if args.eval_steps else None
        archs = [a for a in image_archs(args.quick, seed=args.seed) if a.set == args.set] if args.set else None
        res = run(ghn, device, args.quick, inits=tuple(args.inits), seed=args.seed, fmnist_dir=args.fmnist_dir,
                  reuse=reuse, eval_steps=steps, test_limit=args.test_images, archs=archs, orders=args.seeds)
    res.update(env=env, ghn=label, quick=args.quick, seconds=time.perf_counter() - t,
               command=" ".join(["python -m benchmarks.quality", *(argv if argv is not None else sys.argv[1:])]))
    name = ("quality_lm" if args.task == "lm" else "quality") + ("_quick" if args.quick else "")
    plot_fn(res, args.out / f"{name}.png")
    md = markdown(res, label, env)
    write_results(args.out, name, res, md)
    print(md)


if __name__ == "__main__":
    main()
