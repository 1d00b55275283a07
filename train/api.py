"""``meta_train``: meta-train a GHN on your own data from Python — a dataset in, a trained GHN directory out.

The same run as ``python -m train`` (same config keys, checkpoints, metrics), for notebooks and scripts whose data
is a ``torch.utils.data.Dataset`` rather than files.

Example:
    >>> import timm, torchvision
    >>> from ghn import GHN
    >>> from train import meta_train
    >>> cifar = torchvision.datasets.CIFAR10("~/data", transform=torchvision.transforms.PILToTensor())
    >>> ghn_dir = meta_train(cifar, "runs/cifar", config="train/configs/tiny_cpu.yaml", steps=200)
    >>> ghn = GHN.from_pretrained(ghn_dir)          # config.json: task image, input_shape [3, 32, 32], 10 classes
    >>> model = ghn.predict(timm.create_model("resnet18", num_classes=10))   # traced at 3x32x32, no inputs needed
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from ghn.errors import ConfigError

from .config import TrainConfig, load_yaml
from .datasets import DATASET_TASKS, ImageSource, TextSource, parse_dataset
from .images import holdout_split
from .options import python_spelling

__all__ = ["meta_train", "as_source"]

LM_FAMILIES = ["gpt", "llama"]


def _labels(ds: Dataset) -> list[int]:
    """Every label of an ``(image, label)`` dataset (torchvision's ``targets`` when it has them: no image decoded)."""
    targets = getattr(ds, "targets", None)
    if targets is not None and len(targets) == len(ds):
        return [int(y) for y in targets]
    return [int(ds[i][1]) for i in range(len(ds))]


def as_source(dataset: Any, *, test_dataset: Dataset | None = None, classes: list[str] | None = None,
              vocab_size: int | None = None, seq_len: int = 64, name: str | None = None) -> ImageSource | TextSource:
    """Wrap Python data as a training source.

    Args:
        dataset: a map-style dataset of ``(image, label)`` (image: a ``(C, H, W)`` uint8 or float tensor, or a PIL
            image) for classification; or token ids for language modelling: a 1-D integer tensor, or a dataset of
            1-D integer tensors (documents, concatenated).
        test_dataset: images held out for evaluation (default: 10 % of each class of ``dataset``, seeded).
        classes: class names (default: ``dataset.classes``, else the label values).
        vocab_size: token vocabulary (default: 256 if every id is a byte, else the largest id + 1).
        seq_len: context length of the language models (bounds the smallest usable corpus).
    """
    name = name or f"python:{type(dataset).__name__}"
    tokens = dataset if isinstance(dataset, torch.Tensor) else None
    if tokens is None and len(dataset) and isinstance(dataset[0], torch.Tensor):
        tokens = torch.cat([torch.as_tensor(dataset[i]).flatten() for i in range(len(dataset))])
    if tokens is not None:
        if tokens.is_floating_point() or tokens.ndim != 1:
            raise ConfigError(f"{name}: token ids must be a 1-D integer tensor, got {tokens.dtype} of shape "
                              f"{tuple(tokens.shape)}")
        top = int(tokens.max()) + 1 if len(tokens) else 0
        return TextSource(name, tokens, vocab_size or (256 if top <= 256 else top), seq_len)
    if len(dataset) == 0:
        raise ConfigError(f"{name} is empty; pass a dataset of (image, label) pairs")
    labels = _labels(dataset)
    if test_dataset is None:
        tr, te = holdout_split(labels)
        train, test, note = Subset(dataset, tr), Subset(dataset, te), "10% of each class held out (fixed seed)"
    else:
        train, test, note = dataset, test_dataset, "the test dataset passed in"
    classes = classes or getattr(dataset, "classes", None) or [str(c) for c in range(max(labels) + 1)]
    if max(labels) >= len(classes) or min(labels) < 0:
        raise ConfigError(f"{name}: labels span [{min(labels)}, {max(labels)}] but there are {len(classes)} classes")
    # resizable=False: train reads a Python dataset's items as they are (image_size is for dataset specs)
    return ImageSource(name, train, test, [str(c) for c in classes], test_note=note, resizable=False)


@python_spelling()  # its messages name keywords (image_size=32), not the command line's flags
def meta_train(dataset: Any, out: str | os.PathLike, *, config: TrainConfig | dict | str | os.PathLike | None = None,
               test_dataset: Dataset | None = None, classes: list[str] | None = None, vocab_size: int | None = None,
               **overrides: Any) -> Path:
    """Meta-train a GHN on ``dataset``; returns the directory of the trained GHN (``GHN.from_pretrained`` loads it).

    Args:
        dataset: Python data (see :func:`as_source`), or a ``--dataset`` spec string such as ``"imagefolder:DIR"``.
        out: the run directory (checkpoints, metrics.jsonl, curves.png), as ``--out``.
        config: a :class:`TrainConfig`, a dict of its keys or a YAML file (default: the defaults); the task follows
            the data, and language data gets the LM families (gpt, llama) unless the config names families.
        test_dataset, classes, vocab_size: see :func:`as_source`.
        **overrides: any TrainConfig key (``steps=500``, ``families=["cnn"]``, ``resume=out`` to continue).

    Returns:
        the newest checkpoint directory, ``out/ckpt-<step>`` (Hub layout: config.json records the task, input
        shape, classes or vocabulary, and the normalisation).

    Raises:
        ConfigError: unusable data or config keys; CheckpointError: a bad ``resume``.
    """
    from .checkpoint import find_checkpoint
    from .loop import train

    if isinstance(config, TrainConfig):
        d = config.to_dict()
    elif isinstance(config, (str, os.PathLike)):
        d = load_yaml(config)
    else:
        d = dict(config or {})
    d.update(overrides)
    d["out"] = str(out)
    if isinstance(dataset, str):
        d["dataset"] = dataset
        task = DATASET_TASKS[parse_dataset(dataset)[0]]
        source = None
    else:
        if d.get("image_size") is not None:
            raise ConfigError(f"image_size={d['image_size']!r} resizes the images of a dataset spec "
                              "('imagefolder:DIR', 'torchvision:NAME:ROOT'); a Python dataset is read as it is: resize "
                              "its images in the dataset itself (e.g. a torchvision.transforms.Resize transform), and "
                              "drop image_size")
        source = dataset if isinstance(dataset, (ImageSource, TextSource)) else as_source(
            dataset, test_dataset=test_dataset, classes=classes, vocab_size=vocab_size,
            seq_len=int(d.get("seq_len", TrainConfig().seq_len)))
        d["dataset"], task = f"python:{type(dataset).__name__}", source.task
    if task is not None and d.get("task", "image") != task:
        d["task"] = task
        if "families" not in overrides and (task == "lm") != all(f in LM_FAMILIES for f in d.get("families", [])):
            d["families"] = LM_FAMILIES if task == "lm" else TrainConfig().families
            d.pop("zoo_constraints", None)  # they were written for the other families
    cfg = TrainConfig.from_dict(d, source="meta_train")
    train(cfg, command=f"train.meta_train({d['dataset']!r}, {str(out)!r})", data=source)
    return find_checkpoint(out)
