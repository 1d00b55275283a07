"""Zero-shot evaluation of predicted parameters on held-out architectures (the protocol of DESIGN.md).

Image protocol: initialise the model (``ghn.predict`` or its own default init), then, if it has BatchNorm, reset the
running statistics and recompute them from 20 training batches of 128 images in train mode (cumulative average,
``momentum=None``), switch to eval mode and measure top-1 accuracy on the test images (those of the data the GHN
was trained on by default, e.g. Fashion-MNIST's 10,000, or any ``--dataset``'s test or held-out split; all of them
unless a prefix is asked for). No other training. The BatchNorm batches are the same for every initialisation.

LM protocol: next-token cross-entropy (nats) on fixed windows of the validation split (of the GHN's own corpus by
default, e.g. the fortunes bytes), in eval mode.

Command line: compares predicted vs default init on held-out archs of model_zoo (see ``EXAMPLES``), writes JSON.
"""
from __future__ import annotations

import argparse
import json
import logging
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ghn import GHN, GHNConfig
from ghn.errors import ConfigError, GHNError
from ghn.prediction import recalibrate_bn

from .checkpoint import ghn_location
from .config import TrainConfig, family_task, load_yaml
from .data import stream_seed
from .datasets import DATASET_TASKS, ImageEvalData, ImageSource, TextSource, open_source, parse_dataset
from .tasks import logits_of, zoo_constraints

__all__ = ["ImageEvalData", "bn_batches", "accuracy", "zero_shot_accuracy", "lm_loss", "lm_windows", "evaluate_archs",
           "eval_specs", "summarize", "format_summary", "recorded_data", "check_data", "main"]

logger = logging.getLogger(__name__)

EXAMPLES = """Examples:
    # the shipped predictor on 30 held-out archs of its own training distribution, all 10,000 test images
    python -m train.evaluate --ghn checkpoints/ghn-fmnist --config train/configs/fmnist.yaml --archs 30 \\
        --out eval.json
    # other families or sizes
    python -m train.evaluate --ghn checkpoints/ghn-fmnist --families cnn --max-params 200000 --archs 8
    # a GHN you trained (python -m train --config train/configs/tiny_cpu.yaml --out runs/tiny): a run directory
    # means its latest checkpoint, evaluated on the test (or held-out) split of the data it was trained on
    python -m train.evaluate --ghn runs/tiny --config train/configs/tiny_cpu.yaml --archs 4
    # one trained with --dataset imagefolder:DIR --image-size 32 is evaluated on DIR's held-out images; --dataset
    # picks other data of the same shape and classes, e.g. a second folder of photos
    python -m train.evaluate --ghn runs/photos --config train/configs/tiny_cpu.yaml --archs 4
    python -m train.evaluate --ghn runs/photos --dataset imagefolder:OTHER_DIR --image-size 32
"""

BN_BATCHES, BN_BATCH_SIZE = 20, 128  # BatchNorm recalibration protocol
#: what the ``ghn`` / ``default`` columns hold, per task
METRICS = {"image": "zero-shot test accuracy (%, higher is better)",
           "lm": "zero-shot validation loss (nats/token, lower is better)"}


def bn_batches(train_x: torch.Tensor, n: int = BN_BATCHES, batch_size: int = BN_BATCH_SIZE,
               seed: int = 0) -> Iterator[torch.Tensor]:
    """``n`` batches of ``batch_size`` training images, from a permutation seeded by ``seed`` alone (so every
    initialisation of every arch is recalibrated on the same images)."""
    g = torch.Generator().manual_seed(stream_seed("bn-recalibration", seed))
    idx = torch.randperm(len(train_x), generator=g)[:n * batch_size]
    for i in range(n):
        batch = idx[i * batch_size:(i + 1) * batch_size]
        if len(batch) == 0:  # fewer than n * batch_size training images
            return
        yield train_x[batch]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy (%) of ``model`` (in its current mode) on ``(x, y)``, batched, on the model's device."""
    device = next(model.parameters()).device
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size].to(device))
        correct += (logits.argmax(1).cpu() == y[i:i + batch_size]).sum().item()
    return 100.0 * correct / max(1, len(x))


def zero_shot_accuracy(model: nn.Module, data: ImageEvalData, *, seed: int = 0) -> float:
    """Test accuracy (%) of an initialised model with no training, by the protocol in the module docstring.

    Args:
        model: an image model ``(B, C, H, W) -> (B, num_classes)`` whose parameters are already set (predicted or
            default). Its BatchNorm statistics are recomputed; it is left in eval mode.
        data: the evaluation tensors.
        seed: picks the BatchNorm batches (keep it fixed when comparing initialisations).

    Example:
        >>> data = ImageEvalData.load()
        >>> zero_shot_accuracy(ghn.predict(spec.build(), spec.example_inputs()), data)
    """
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        recalibrate_bn(model, bn_batches(data.train_x, seed=seed))  # resets, momentum=None, train mode, restores
    model.eval()
    return accuracy(model, data.test_x, data.test_y)


def lm_windows(val: torch.Tensor, seq_len: int, windows: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed evaluation windows of ``val`` (1-D token ids) for ``seed``: inputs and next tokens, (windows, T)."""
    g = torch.Generator().manual_seed(stream_seed("lm-eval", seed))
    starts = torch.randint(0, len(val) - seq_len - 1, (windows,), generator=g)
    win = val[starts[:, None] + torch.arange(seq_len + 1)]
    return win[:, :-1], win[:, 1:]


@torch.no_grad()
def lm_loss(model: nn.Module, val: torch.Tensor, seq_len: int, windows: int = 64, seed: int = 0) -> float:
    """Mean next-token cross-entropy (nats) on ``windows`` fixed windows of ``val`` (1-D token ids), eval mode."""
    x, y = lm_windows(val, seq_len, windows, seed)
    device = next(model.parameters()).device
    model.eval()
    out = model(x.to(device))
    logits = logits_of(out).float().cpu()
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)).item()


def eval_specs(n: int, families: tuple[str, ...], constraints: dict[str, Any], seed: int = 0) -> dict:
    """``n`` named held-out archs of model_zoo (never in the training split), split evenly over ``families``.

    ``constraints`` are shared (``{max_params: ...}``) or per family (``{cnn: {...}, vit: {...}}``), as in
    :class:`model_zoo.ArchDataset`.
    """
    from model_zoo import heldout_archs
    per_family = constraints if constraints and set(constraints) <= set(families) else \
        {f: constraints for f in families}
    out = {}
    for i, fam in enumerate(families):
        k = n // len(families) + (i < n % len(families))
        out.update(heldout_archs(k, seed=seed, families=(fam,), **per_family.get(fam, {})))
    return out


def evaluate_archs(ghn: GHN, specs: dict, *, image_data: ImageEvalData | None = None,
                   lm_val: torch.Tensor | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Zero-shot metric of each spec with GHN-predicted vs default (seeded, random) initialisation.

    Returns:
        one row per arch: ``name``, ``family``, ``params``, and ``ghn`` / ``default`` (accuracy % for images,
        validation loss in nats for LMs).
    """
    rows = []
    for name, spec in specs.items():
        row: dict[str, Any] = {"name": name, "family": spec.family, "params": spec.num_params()}
        for init in ("ghn", "default"):
            with torch.random.fork_rng(devices=[]):  # evaluation never moves the caller's RNG
                model = spec.build(device="cpu")
                if init == "ghn":
                    ghn.predict(model, spec.example_inputs(batch_size=2))
                if spec.task == "image":
                    if image_data is None:
                        raise GHNError("evaluate_archs: image archs need image_data=ImageEvalData.load()")
                    row[init] = zero_shot_accuracy(model, image_data, seed=seed)
                else:
                    if lm_val is None:
                        raise GHNError("evaluate_archs: LM archs need lm_val (the validation token ids)")
                    row[init] = lm_loss(model, lm_val, spec.hparams["seq_len"], seed=seed)
        rows.append(row)
        logger.info("%s (%s, %d params): %s ghn %.2f, default init %.2f", name, spec.family, row["params"],
                    "accuracy (%)" if spec.task == "image" else "loss (nats/token)", row["ghn"], row["default"])
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means over archs (overall and per family) of the ``ghn`` and ``default`` columns."""
    def means(rs):
        return {k: round(statistics.fmean(r[k] for r in rs), 2) for k in ("ghn", "default")} | {"archs": len(rs)}
    out = {"all": means(rows)} if rows else {}
    for fam in sorted({r["family"] for r in rows}):
        out[fam] = means([r for r in rows if r["family"] == fam])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.evaluate", description=__doc__.split("\n")[0],
                                allow_abbrev=False, epilog=EXAMPLES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ghn", default="checkpoints/ghn-fmnist",
                   help="GHN directory, training run directory (its latest checkpoint), shipped predictor name "
                        "(ghn-fmnist) or Hub repo id")
    p.add_argument("--config", metavar="FILE.yaml", default=None,
                   help="a training config: its task, families, max_params and zoo_constraints pick the archs")
    p.add_argument("--archs", type=int, default=24, help="number of held-out archs, split evenly over the families")
    p.add_argument("--families", nargs="+", default=None, help="model_zoo families (overrides --config)")
    p.add_argument("--max-params", type=int, default=None, help="largest arch (overrides --config)")
    p.add_argument("--constraints", default=None, help="sampler constraints as YAML/JSON (overrides --config)")
    p.add_argument("--images", type=int, default=10_000, help="test images (a prefix of the test set)")
    p.add_argument("--seed", type=int, default=0, help="selects the held-out archs and the BatchNorm batches")
    p.add_argument("--dataset", default=None, help="the data, as for python -m train (overrides --config; default: "
                   "the data the GHN was trained on, as its config.json records it, else fashion-mnist, or fortunes "
                   "for LM families); data of another shape, class count or vocabulary is refused")
    p.add_argument("--image-size", type=int, default=None, help="resize images to SIZExSIZE (as in training)")
    p.add_argument("--tokenizer", default=None, help="lm: the tokenizer directory the GHN was trained with")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="write rows and summary as JSON here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        _zoo_config(args)  # the flags and the config are checked before the GHN is loaded
        ghn = GHN.from_pretrained(ghn_location(args.ghn))
        cfg = _zoo_config(args, ghn.config)
        source = open_source(cfg)
        check_data(ghn.config, source, args.ghn)
        constraints = zoo_constraints(cfg, source)
        specs = eval_specs(args.archs, tuple(cfg.families), constraints, seed=args.seed)
        t0 = time.time()
        if cfg.task == "lm":
            rows = evaluate_archs(ghn, specs, lm_val=source.val, seed=args.seed)
        else:
            rows = evaluate_archs(ghn, specs, image_data=ImageEvalData.from_source(source, args.images),
                                  seed=args.seed)
    except GHNError as e:
        print(f"train.evaluate: error: {e}", file=sys.stderr)
        return 1
    summary = summarize(rows)
    command = "python -m train.evaluate " + shlex.join(sys.argv[1:] if argv is None else argv)
    result = {"command": command, "ghn": str(args.ghn), "task": cfg.task, "dataset": source.name, "archs": len(rows),
              "families": cfg.families, "constraints": constraints,
              "test_images": min(args.images, len(source.test)) if cfg.task == "image" else None,
              "seed": args.seed, "seconds": round(time.time() - t0, 1), "metric": METRICS[cfg.task],
              "summary": summary, "rows": rows}
    print(format_summary(summary, cfg.task))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1, default=str))
    return 0


def format_summary(summary: dict[str, Any], task: str) -> str:
    """The summary as labelled lines: which metric, which way is better, per group of archs."""
    lines = [f"{METRICS[task]} of ghn-predicted vs default init, mean over held-out archs:"]
    for group, m in summary.items():
        lines.append(f"  {group} ({m['archs']} archs): ghn {m['ghn']:.2f}, default init {m['default']:.2f}")
    return "\n".join(lines)


def recorded_data(c: GHNConfig, name: str) -> dict[str, Any]:
    """The data keys (``dataset``, ``image_size``, ``tokenizer``) of the data a GHN was trained on, as its
    config.json records them; empty when it records none (an untrained GHN, or one older than that record).

    Raises:
        ConfigError: the GHN was trained on a Python dataset (``train.meta_train``), which cannot be reopened here.
    """
    spec = c.notes.get("dataset")
    if not spec:
        return {}
    kind, _ = parse_dataset(spec)
    if kind == "python":
        raise ConfigError(f"{name} was trained on a Python dataset ({spec}), which train.evaluate cannot open; pass "
                          "--dataset with a spec of the same data (e.g. imagefolder:DIR)")
    d: dict[str, Any] = {"dataset": spec}
    shape = c.input_shape or []
    if kind in ("imagefolder", "torchvision") and len(shape) == 3 and shape[1] == shape[2]:
        d["image_size"] = shape[2]  # the size it trained at (images already that size are not resized)
    if c.task == "lm" and c.notes.get("tokenizer"):
        d["tokenizer"] = c.notes["tokenizer"]
    return d


def check_data(c: GHNConfig, source: ImageSource | TextSource, name: str) -> None:
    """Refuse to evaluate a GHN on data other than the kind it was trained on (task, input shape and classes, or
    vocabulary): the held-out archs are sampled for the data, so the numbers would say nothing about the GHN.

    Raises:
        ConfigError: naming both the GHN's data and the evaluation data, and how to evaluate on the GHN's own.
    """
    if c.task is None:  # an untrained GHN, or one that records no data: any data goes
        return
    mine = _data_kind(c.task, c.input_shape, c.num_classes, c.vocab_size)
    theirs = (_data_kind("image", source.input_shape, source.num_classes, None) if source.task == "image" else
              _data_kind("lm", None, None, source.vocab_size))
    if mine != theirs:
        raise ConfigError(f"{name} was trained on {c.notes.get('dataset') or 'other data'} ({mine}) but the evaluation "
                          f"data is {source.name} ({theirs}); omit --dataset (and any dataset key of --config) to "
                          "evaluate on the GHN's own data, or pass data of its kind")


def _data_kind(task: str, input_shape, num_classes: int | None, vocab_size: int | None) -> str:
    """What must agree between a GHN's training data and its evaluation data, in words."""
    if task == "lm":
        return f"language modelling over {vocab_size} tokens"
    return f"{'x'.join(map(str, input_shape or []))} images, {num_classes} classes"


def _zoo_config(args: argparse.Namespace, trained: GHNConfig | None = None) -> TrainConfig:
    """The arch distribution to evaluate on: a training config's, with the command line's overrides; the data is
    ``--dataset``, else the config's, else the data the GHN ``trained`` records (:func:`recorded_data`)."""
    d = load_yaml(args.config) if args.config else {}
    if args.families is not None:
        d["families"] = args.families
        if all(family_task(f) == "lm" for f in args.families):
            d["task"] = "lm"
    for key in ("dataset", "image_size", "tokenizer", "data_dir"):
        if getattr(args, key) is not None:
            d[key] = getattr(args, key)
    if "dataset" not in d and trained is not None:
        families = d.get("families")
        task = d.get("task") or (family_task(families[0]) if isinstance(families, list) and families else None)
        if task in (None, trained.task):  # archs of another task: check_data names the mismatch
            d = {**recorded_data(trained, args.ghn), **d}
    data_task = DATASET_TASKS[parse_dataset(d["dataset"])[0]] if d.get("dataset") else None
    if data_task and args.families is None and d.get("task", "image") != data_task:
        # e.g. --dataset text:FILE alone: evaluate the LM families on it
        d["task"], d["families"] = data_task, ["gpt", "llama"] if data_task == "lm" else ["cnn", "vit", "mlp"]
    if args.max_params is not None:
        d["max_params"] = args.max_params
    if args.constraints is not None:
        try:
            d["zoo_constraints"] = yaml.safe_load(args.constraints)
        except yaml.YAMLError as e:
            raise ConfigError(f"--constraints is not valid YAML/JSON: {e}") from None
    return TrainConfig.from_dict(d, source=args.config or "the command line")


if __name__ == "__main__":
    sys.exit(main())
