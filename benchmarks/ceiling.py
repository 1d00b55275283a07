"""Decoder ceiling: can a GHN express what direct training finds? (the unit test of the decoder)

For each architecture family, one fixed architecture is

* **trained directly**: default init (seeded), ``--steps`` optimiser steps on ``--batch-size`` batches;
* **predicted by a GHN meta-trained on it alone**: a fresh GHN, the same optimiser, steps and batches, its loss
  the architecture's loss with predicted parameters (``torch.func.functional_call``); then ``ghn.predict``.

Both are evaluated by the package's protocol (``train.evaluate``): Fashion-MNIST test accuracy (10,000 images,
BatchNorm statistics recomputed from 20 training batches for both), or fortunes validation loss (nats/byte) for
the byte-level LMs. The ratio GHN/direct (accuracy) or GHN/direct (loss) is the ceiling the decoder reaches.

Next to it, per predicted matrix: its effective rank (singular values above 1 % of the largest) and its width,
for default init, direct training and the GHN's prediction (low effective rank is the suspected reason
fine-tuning from predictions trails fine-tuning from random init).

Usage::

    python -m benchmarks.ceiling                     # every family, 1000 steps (≈ 40 min on 2 CPU cores)
    python -m benchmarks.ceiling --quick             # linear classifier only, 300 steps (a test runs this)
    python -m benchmarks.ceiling --families mlp,cnn_bn --steps 500 --tag probe --ghn-overrides basis=128
"""
from __future__ import annotations

import argparse
import copy
import json
import logging
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ghn import GHN, GHNConfig, build_graph
from ghn.decoder import balance_gradients

from train.tasks import logits_of

from .common import RESULTS_DIR, as_matrix, effective_rank, env_info, md_table, write_results

__all__ = ["CASES", "Case", "run_case", "effective_rank", "main"]

logger = logging.getLogger(__name__)

LM_SEQ_LEN = 64
LM_BATCH = 16  # the evaluation protocol's LM batch: 16 windows × 64 bytes


@dataclass(frozen=True)
class Case:
    """One architecture of the benchmark: ``build()`` gives a fresh model with default init (seeded by caller)."""

    task: str  # "image" or "lm"
    build: Callable[[], nn.Module]
    about: str


def _linear() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 10))


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 64), nn.ReLU(), nn.Linear(64, 10))


def _cnn_bn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))


def _zoo(name: str, **hparams: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from model_zoo import create_arch
        return create_arch(name, **hparams).build()
    return build


def _timm(name: str, **kw: Any) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import timm
        return timm.create_model(name, in_chans=1, num_classes=10, **kw)
    return build


_LM = dict(vocab_size=256, seq_len=LM_SEQ_LEN)
CASES: dict[str, Case] = {
    "linear": Case("image", _linear, "Flatten → Linear(784, 10)"),
    "mlp": Case("image", _mlp, "Flatten → Linear(784, 64) → ReLU → Linear(64, 10)"),
    "cnn_bn": Case("image", _cnn_bn, "Conv 1→16→32 (3×3, stride 2, BN, ReLU) → avg-pool → Linear(32, 10)"),
    "deepnets": Case("image", _zoo("test_cnn", C=16, n_cells=4, reductions=[1, 3]),
                     "model_zoo test_cnn (DARTS-like cells), C=16, 4 cells"),
    "vit": Case("image", _zoo("test_vit", embed_dim=64, depth=2, num_heads=4, patch_size=4),
                "model_zoo test_vit, width 64, depth 2, 4 heads, 4×4 patches"),
    "timm_resnet": Case("image", _timm("resnet10t"), "timm resnet10t (in_chans=1, 10 classes)"),
    "timm_mobilenet": Case("image", _timm("mobilenetv3_small_050"),
                           "timm mobilenetv3_small_050 (in_chans=1, 10 classes)"),
    "gpt": Case("lm", _zoo("test_gpt", **_LM, n_layer=2, n_embd=64, n_head=4, n_inner=256),
                "model_zoo test_gpt: GPT-2, 2 layers, width 64, vocab 256, tied"),
    "llama": Case("lm", _zoo("test_llama", **_LM, n_layer=2, width=64, n_head=4, n_kv_head=2, head_dim=16,
                             intermediate_size=172), "model_zoo test_llama: 2 layers, width 64, 4/2 heads, vocab 256"),
    # the same hand-written decoder (fused qkv, LayerNorm, GELU MLP, tied) with learned or rotary positions
    "nanolm": Case("lm", _zoo("test_nanolm", **_LM, n_layer=2, width=64, n_head=4, hidden=256, mlp="gelu",
                              norm="layer", pos="learned", bias=True),
                   "model_zoo test_nanolm: 2 blocks, width 64, fused qkv, learned positions, tied"),
    "nanolm_rope": Case("lm", _zoo("test_nanolm", **_LM, n_layer=2, width=64, n_head=4, hidden=256, mlp="gelu",
                                   norm="layer", pos="rope", bias=True),
                        "model_zoo test_nanolm: 2 blocks, width 64, fused qkv, rotary positions, tied"),
}
QUICK = ("linear",)


# ---- data -------------------------------------------------------------------------------------------------------
class _Data:
    """The shared training stream and evaluation data of one task."""

    def __init__(self, task: str, batch_size: int, test_images: int | None):
        from train.streams import ImageStream, TextStream
        from train.evaluate import ImageEvalData
        self.task = task
        if task == "image":
            self.stream = ImageStream(batch_size, seed=0)
            self.eval = ImageEvalData.load(test_images=test_images)
        else:
            self.stream = TextStream(batch_size, LM_SEQ_LEN, seed=0)
            self.val = self.stream.val

    def example_inputs(self) -> torch.Tensor:
        return self.stream.batch(0)[0][:2]

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), y.reshape(-1))

    def context_use(self, model: nn.Module) -> tuple[float, float]:
        """LMs: validation loss (nats/byte) at the first position of a window (the current byte alone) and at
        positions 16-63 (long context): a model that ignores its context scores the same at both."""
        from train.evaluate import lm_windows
        x, y = lm_windows(self.val, LM_SEQ_LEN, windows=64, seed=0)
        model.eval()
        with torch.no_grad():
            loss = F.cross_entropy(logits_of(model(x)).flatten(0, 1).float(), y.flatten(), reduction="none")
        per_position = loss.view(y.shape).mean(0)
        return per_position[0].item(), per_position[16:].mean().item()

    def score(self, model: nn.Module) -> float:
        """Test accuracy (%) for images, validation loss (nats/byte) for LMs."""
        from train.evaluate import lm_loss, zero_shot_accuracy
        if self.task == "image":
            return zero_shot_accuracy(model, self.eval)
        return sum(lm_loss(model, self.val, LM_SEQ_LEN, windows=64, seed=s) for s in range(4)) / 4


# ---- the two runs --------------------------------------------------------------------------------------------------
def train_direct(case: Case, data: _Data, steps: int, lr: float, seed: int) -> tuple[nn.Module, list[float]]:
    torch.manual_seed(seed)
    model = case.build()
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        x, y = data.stream.batch(step)
        loss = data.loss(logits_of(model(x)), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model, losses


def train_ghn(case: Case, data: _Data, steps: int, lr: float, seed: int, ghn_config: GHNConfig,
              balance: bool = False) -> tuple[nn.Module, GHN, list[float]]:
    """Meta-train a fresh GHN on ``case``'s one architecture; returns the predicted model, the GHN, losses."""
    from train.tasks import run_functional
    torch.manual_seed(seed)
    model = case.build()
    graph = build_graph(model, data.example_inputs())
    torch.manual_seed(seed)
    ghn = GHN(ghn_config)
    ghn.train()
    opt = torch.optim.Adam(ghn.parameters(), lr=lr)
    model.train()
    losses = []
    for step in range(steps):
        x, y = data.stream.batch(step)
        params = ghn(graph)[0]
        if balance:
            params = balance_gradients(params)
        loss = data.loss(run_functional(model, params, x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    ghn.eval()
    ghn.config.trained = True  # (quiet the "untrained GHN" log line: it was meta-trained, on one arch)
    ghn.predict(model, graph=graph)
    return model, ghn, losses


# ---- effective rank per layer (benchmarks.common.effective_rank) ----------------------------------------------------
def block_similarity(model: nn.Module) -> float | None:
    """Mean cosine similarity between the same weight matrix of consecutive repeated blocks (``…layers.0.q.weight``
    vs ``…layers.1.q.weight``); None without repeated blocks. Trained blocks are near 0; a decoder that cannot tell
    the blocks apart predicts near 1."""
    params = dict(model.named_parameters())
    sims = []
    for name, p in params.items():
        m = re.search(r"(?:^|\.)(\d+)\.", name)  # the first block index in the name
        if p.dim() < 2 or not m:
            continue
        nxt = name[:m.start(1)] + str(int(m.group(1)) + 1) + name[m.end(1):]
        if nxt in params and params[nxt].shape == p.shape:
            sims.append(F.cosine_similarity(p.detach().flatten(), params[nxt].detach().flatten(), dim=0).item())
    return sum(sims) / len(sims) if sims else None


def rank_rows(models: dict[str, nn.Module]) -> list[dict[str, Any]]:
    """Per weight matrix (≥ 2-D parameters): its width ``min(rows, rest)`` and effective rank per model."""
    first = dict(next(iter(models.values())).named_parameters())
    rows = []
    for n, p in first.items():
        if min(as_matrix(p).shape) < 2:
            continue  # vectors stored as (1, 1, d): no rank to speak of
        row = {"layer": n, "shape": "×".join(map(str, p.shape)), "width": min(as_matrix(p).shape)}
        for label, m in models.items():
            row[label] = effective_rank(dict(m.named_parameters())[n])
        rows.append(row)
    return rows


def run_case(name: str, steps: int, lr: float = 1e-3, batch_size: int = 64, seed: int = 0,
             ghn_config: GHNConfig | None = None, test_images: int | None = None,
             data: _Data | None = None, balance: bool = False) -> dict[str, Any]:
    """Both runs of one case; returns a row of the results table (plus per-layer ranks under ``ranks``)."""
    case = CASES[name]
    ghn_config = ghn_config or GHNConfig.preset("small")
    data = data or _Data(case.task, batch_size, test_images)
    torch.manual_seed(seed)
    default = case.build()
    t0 = time.perf_counter()
    direct, direct_losses = train_direct(case, data, steps, lr, seed)
    t1 = time.perf_counter()
    predicted, ghn, ghn_losses = train_ghn(case, data, steps, lr, seed, copy.deepcopy(ghn_config),
                                         balance)
    t2 = time.perf_counter()
    s_default, s_direct, s_ghn = data.score(default), data.score(direct), data.score(predicted)
    ratio = s_ghn / s_direct  # accuracy: higher is better, goal ≥ 0.95; LM loss: lower is better, goal ≤ 1.05
    tail = max(1, steps // 10)
    return {
        "family": name, "task": case.task, "arch": case.about,
        "params": sum(p.numel() for p in direct.parameters()),
        "ghn_params": sum(p.numel() for p in ghn.parameters()),
        "metric": "test acc %" if case.task == "image" else "val loss (nats/byte)",
        "default": round(s_default, 3), "direct": round(s_direct, 3), "ghn": round(s_ghn, 3),
        "ratio": round(ratio, 4),
        "goal_met": bool(ratio >= 0.95) if case.task == "image" else bool(ratio <= 1.05),
        "train_loss_direct": round(sum(direct_losses[-tail:]) / tail, 4),
        "train_loss_ghn": round(sum(ghn_losses[-tail:]) / tail, 4),
        "time_direct_s": round(t1 - t0, 1), "time_ghn_s": round(t2 - t1, 1),
        "curve_direct": direct_losses[::max(1, steps // 50)], "curve_ghn": ghn_losses[::max(1, steps // 50)],
        "ranks": rank_rows({"default": default, "direct": direct, "ghn": predicted}),
        **(_lm_diagnostics(data, direct, predicted) if case.task == "lm" else {}),
    }


def _lm_diagnostics(data: _Data, direct: nn.Module, predicted: nn.Module) -> dict[str, Any]:
    """Context use (loss at position 0 / positions 16-63) and block similarity of both runs."""
    out = {}
    for label, model in (("direct", direct), ("ghn", predicted)):
        first, late = data.context_use(model)
        sim = block_similarity(model)
        out[f"context_{label}"] = f"{first:.2f} / {late:.2f}"
        out[f"block_cos_{label}"] = None if sim is None else round(sim, 3)
    return out


# ---- report ----------------------------------------------------------------------------------------------------
def _markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    cols = ["family", "arch", "params", "metric", "default", "direct", "ghn", "ratio", "goal_met",
            "time_direct_s", "time_ghn_s"]
    lines = [f"# Decoder ceiling ({meta['tag']})", "",
             f"Command: `{meta['command']}`  ", f"GHN: {meta['ghn_config']}  ",
             f"Optimiser: Adam lr {meta['lr']}, batch {meta['batch_size']} images (LMs: {LM_BATCH} windows of "
             f"{LM_SEQ_LEN} bytes), {meta['steps']} steps for both runs "
             f"(same batches). Machine: {meta['env']['cpu_count']} CPUs, torch {meta['env']['torch']}, commit "
             f"{meta['env']['git_commit']}, {meta['env']['date']}.", "",
             "Goal: ratio ≥ 0.95 (accuracy, images), ≤ 1.05 (loss, LMs).", "",
             md_table(rows, cols, digits=4), "",
             *(["LMs, *context*: validation loss at position 0 / at positions 16-63 (a model that ignores its "
                "context scores the same at both); *block cos*: cosine similarity of the same weight in consecutive "
                "blocks (1: the blocks are copies).", "",
                md_table([r for r in rows if r["task"] == "lm"], ["family", "context_direct", "context_ghn",
                                                                   "block_cos_direct", "block_cos_ghn"]), ""]
               if any(r["task"] == "lm" for r in rows) else []),
             "## Effective rank per weight (singular values > 1 % of the largest; width = min(c_out, fan_in))", ""]
    for r in rows:
        lines += [f"### {r['family']}", "", md_table(r["ranks"], ["layer", "shape", "width", "default", "direct",
                                                                  "ghn"]), ""]
    return "\n".join(lines)


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(13, 4))
    names = [r["family"] for r in rows]
    axes[0].bar(names, [r["ratio"] for r in rows], color=["tab:green" if r["goal_met"] else "tab:red" for r in rows])
    axes[0].axhline(0.95, ls="--", c="k", lw=0.8)
    axes[0].axhline(1.05, ls=":", c="k", lw=0.8)
    axes[0].set_ylabel("GHN / direct (acc; loss for LMs)")
    axes[0].tick_params(axis="x", rotation=45)
    for r in rows:
        axes[1].plot(r["curve_ghn"], label=f"{r['family']} ghn")
        axes[1].plot(r["curve_direct"], ls="--", c=axes[1].lines[-1].get_color())
    axes[1].set_yscale("log")
    axes[1].set_xlabel("step / (steps/50)")
    axes[1].set_ylabel("training loss (solid GHN, dashed direct)")
    axes[1].legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ceiling", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--families", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    p.add_argument("--steps", type=int, default=1000, help="optimiser steps of both runs")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate of both runs")
    p.add_argument("--batch-size", type=int, default=64, help="images per batch (LMs: 16 windows of 64 bytes)")
    p.add_argument("--preset", default="small", help="GHN preset")
    p.add_argument("--ghn-overrides", default="", help="GHNConfig overrides, e.g. 'basis=128,rank=64'")
    p.add_argument("--balance-grads", action="store_true",
                   help="normalise the gradient reaching each predicted tensor (ghn.decoder.balance_gradients)")
    p.add_argument("--test-images", type=int, default=None, help="first N test images (default: all 10,000)")
    p.add_argument("--quick", action="store_true", help="linear case only, 300 steps, 2,000 test images")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--tag", default=None, help="results file name suffix (default: full/quick)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    families = list(QUICK) if args.quick else [f for f in args.families.split(",") if f]
    unknown = [f for f in families if f not in CASES]
    if unknown:
        p.error(f"unknown families {unknown}; choose from {', '.join(CASES)}")
    steps = 300 if args.quick and args.steps == 1000 else args.steps
    test_images = args.test_images or (2000 if args.quick else None)
    overrides = {}
    for kv in filter(None, re.split(r",(?![^\[]*\])", args.ghn_overrides)):  # commas inside [...] stay
        k, v = kv.split("=", 1)
        try:
            overrides[k] = json.loads(v)
        except json.JSONDecodeError:
            overrides[k] = v
    cfg = GHNConfig.preset(args.preset, **overrides)
    tag = args.tag or ("quick" if args.quick else "full")
    env = env_info()  # at the start: the commit that ran, not the one checked out when it ends
    rows, data_by_task = [], {}
    for name in families:
        task = CASES[name].task
        if task not in data_by_task:
            data_by_task[task] = _Data(task, args.batch_size if task == "image" else LM_BATCH, test_images)
        row = run_case(name, steps, args.lr, args.batch_size, 0, cfg, test_images, data_by_task[task],
                       args.balance_grads)
        rows.append(row)
        logger.info("%-15s default %.3f direct %.3f ghn %.3f ratio %.3f (%.0fs + %.0fs)", name, row["default"],
                    row["direct"], row["ghn"], row["ratio"], row["time_direct_s"], row["time_ghn_s"])
    meta = {"tag": tag, "command": "python -m benchmarks.ceiling " + " ".join(argv if argv is not None else
                                                                              __import__("sys").argv[1:]),
            "ghn_config": {k: v for k, v in cfg.to_dict().items() if k not in ("notes",)}, "lr": args.lr,
            "batch_size": args.batch_size, "steps": steps, "test_images": test_images or 10000,
            "env": env}
    name = f"ceiling_{tag}"
    write_results(args.out, name, {"meta": meta, "rows": rows}, _markdown(rows, meta))
    _plot(rows, Path(args.out) / f"{name}.png")
    logger.info("wrote %s", Path(args.out) / f"{name}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
