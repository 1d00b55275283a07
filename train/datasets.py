"""What a run trains on: a ``--dataset`` spec opened as an :class:`ImageSource` (labelled images, train + test) or a
:class:`TextSource` (token ids, train + validation); :class:`ImageEvalData` is an image source's test split, ready
for zero-shot evaluation.

Specs (``--dataset`` / the ``dataset`` YAML key):

==========================  ======  ==================================================================================
``fashion-mnist[:DIR]``      image   the Debian idx files (default for ``--task image``; DIR: ``--data-dir`` or default)
``fortunes[:DIR]``           lm      the Debian fortunes text, bytes (default for ``--task lm``)
``imagefolder:DIR``          image   ``DIR/<class>/<image>`` files (see :mod:`train.images`)
``torchvision:NAME:ROOT``    image   a torchvision dataset already in ROOT (``download=False``), e.g. CIFAR10, SVHN
``text:PATH``                lm      a text file or a directory of them (see :mod:`train.text`); ``--tokenizer DIR``
==========================  ======  ==================================================================================

Images are normalised per channel, ``x = (pixel/255 - mean) / std``, with the dataset's known statistics
(Fashion-MNIST, MNIST, CIFAR-10/100) or ones computed from up to 2,000 training images (seeded sample; all of them
when fewer). A dataset without a test split gets a held-out one (10 % of each class; for text, the last 5 %).
Shapes, classes, vocabulary and statistics go into the trained GHN's ``config.json``.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ghn.errors import ConfigError

from .data import FMNIST_MEAN, FMNIST_STD, fashion_mnist, fortunes_bytes, normalize
from .images import image_folder, resize_fix, torchvision_dataset
from .options import option

__all__ = ["DATASET_TASKS", "parse_dataset", "default_dataset", "ImageTensors", "ImageSource", "ImageEvalData",
           "TextSource", "open_dataset", "open_source", "to_values", "channel_stats"]

DATASET_TASKS = {"fashion-mnist": "image", "fortunes": "lm", "imagefolder": "image", "torchvision": "image",
                 "text": "lm", "python": None}  # python: a run started by train.meta_train with a Python dataset
_FORMS = "fashion-mnist[:DIR], fortunes[:DIR], imagefolder:DIR, torchvision:NAME:ROOT or text:PATH"
STATS_IMAGES = 2000  # training images the normalisation statistics are computed from (seeded sample)
TEXT_VAL_FRACTION = 0.05  # the tail of a corpus held out for validation
KNOWN_STATS = {  # per-channel mean / std of pixel/255 over the training split (the values used in the literature)
    "fashionmnist": ([0.2860], [0.3530]), "mnist": ([0.1307], [0.3081]),
    "cifar10": ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616]),
    "cifar100": ([0.5071, 0.4865, 0.4409], [0.2673, 0.2564, 0.2762]),
}
FMNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]


def parse_dataset(spec: str) -> tuple[str, str]:
    """``"imagefolder:/data/x"`` → ``("imagefolder", "/data/x")``; the argument is ``""`` when there is none.

    Raises:
        ConfigError: an unknown kind (with the closest ones) or a kind missing its required argument.
    """
    kind, _, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind not in DATASET_TASKS:
        close = difflib.get_close_matches(kind, list(DATASET_TASKS), n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise ConfigError(f"unknown dataset {spec!r}; {hint}use {_FORMS}")
    if kind in ("imagefolder", "text") and not arg:
        raise ConfigError(f"dataset {spec!r} needs a path: {kind}:PATH")
    if kind == "torchvision" and (arg.count(":") < 1 or not all(arg.split(":", 1))):
        raise ConfigError(f"dataset {spec!r} needs a name and a root directory: torchvision:NAME:ROOT, e.g. "
                          "torchvision:CIFAR10:/data/cifar10")
    return kind, arg


def default_dataset(task: str) -> str:
    return "fashion-mnist" if task == "image" else "fortunes"


# ---- images ------------------------------------------------------------------------------------------------------
def to_values(img: Any) -> torch.Tensor:
    """An image item as float ``(C, H, W)``: uint8 tensors and PIL images are divided by 255, float tensors kept."""
    if type(img).__module__.startswith("PIL."):  # a PIL image (PIL is imported only when there are any)
        from torchvision.transforms.functional import pil_to_tensor
        img = pil_to_tensor(img)
    x = torch.as_tensor(img)
    if x.ndim == 2:
        x = x.unsqueeze(0)
    if x.dtype == torch.uint8:
        return x.float() / 255
    if x.is_floating_point() and x.ndim == 3:
        return x.float()
    raise ConfigError(f"an image must be a (C, H, W) uint8 or float tensor or a PIL image, got {x.dtype} of shape "
                      f"{tuple(x.shape)}")


class ImageTensors(Dataset):
    """Images and labels held in tensors (Fashion-MNIST, or a Python dataset already in memory).

    Shapes:
        x: (N, C, H, W) uint8 pixels or float values; y: (N,) int64.
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y.long()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])

    def take(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Float values ``(B, C, H, W)`` and labels of the items ``idx``, in one indexing operation."""
        x = self.x[idx]
        return (x.float() / 255 if x.dtype == torch.uint8 else x.float()), self.y[idx]


def _take(ds: Dataset, idx: torch.Tensor, resizable: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(ds, ImageTensors):
        return ds.take(idx)
    items = [ds[i] for i in idx.tolist()]
    values = [to_values(x) for x, _ in items]
    shapes = sorted({tuple(v.shape) for v in values})
    if len(shapes) > 1:
        raise ConfigError(f"images of different shapes in one batch ({shapes}); "
                          f"{resize_fix(max(values[0].shape[1:]), resizable)}")
    return torch.stack(values), torch.tensor([int(y) for _, y in items], dtype=torch.long)


def channel_stats(ds: Dataset, n: int = STATS_IMAGES, seed: int = 0, *,
                  resizable: bool = True) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the values of up to ``n`` items of ``ds`` (a seeded sample; all if fewer).
    ``resizable``: see :func:`train.images.resize_fix`."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(ds), generator=g)[:n]
    total, squares, count = 0.0, 0.0, 0
    for chunk in idx.split(256):
        x = _take(ds, chunk, resizable)[0].double()  # (B, C, H, W)
        total = total + x.sum((0, 2, 3))
        squares = squares + (x * x).sum((0, 2, 3))
        count += x.numel() // x.shape[1]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt().clamp_min(1e-3)  # a constant channel: no blow-up
    return [round(v, 4) for v in mean.tolist()], [round(v, 4) for v in std.tolist()]


class ImageSource:
    """Labelled images for classification, split into train and test, with their normalisation.

    Args:
        name: what the data is (the ``--dataset`` spec).
        train, test: map-style datasets of ``(image, label)``; an image is a ``(C, H, W)`` uint8 or float tensor
            (or a PIL image); uint8 means pixels, divided by 255.
        classes: class names; labels are indices into it.
        mean, std: per-channel statistics of the training values; None computes them (:func:`channel_stats`).
        test_note: where the test split comes from (for provenance).
        resizable: whether images of different sizes can be fixed with ``image_size`` (dataset specs); False for
            Python datasets, whose errors say to resize them in the dataset.

    Shapes:
        ``load(split, idx)`` → ``x (B, C, H, W)`` float32 normalised, ``y (B,)`` int64.
    """

    task = "image"

    def __init__(self, name: str, train: Dataset, test: Dataset, classes: list[str], *,
                 mean: list[float] | None = None, std: list[float] | None = None, test_note: str = "its test split",
                 resizable: bool = True):
        if len(train) == 0 or len(test) == 0:
            raise ConfigError(f"{name}: the {'training' if len(train) == 0 else 'test'} split is empty; add images")
        self.name, self.train, self.test, self.classes, self.test_note = name, train, test, list(classes), test_note
        self.resizable = resizable
        self.input_shape = tuple(_take(train, torch.tensor([0]))[0].shape[1:])
        if mean is None or std is None or len(mean) != self.input_shape[0]:
            mean, std = channel_stats(train, resizable=resizable)
        self.mean, self.std = list(mean), list(std)
        self._mean = torch.tensor(self.mean).view(-1, 1, 1)
        self._std = torch.tensor(self.std).view(-1, 1, 1)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load(self, split: str, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised images and labels of items ``idx`` of ``split`` ("train" or "test")."""
        x, y = _take(self.train if split == "train" else self.test, idx, self.resizable)
        if tuple(x.shape[1:]) != self.input_shape:
            raise ConfigError(f"{self.name}: an image of shape {tuple(x.shape[1:])} among images of shape "
                              f"{self.input_shape}; {resize_fix(max(self.input_shape[1:]), self.resizable)}")
        return (x - self._mean) / self._std, y

    def describe(self) -> str:
        c, h, w = self.input_shape
        return (f"{self.name}: {len(self.train):,} training images, {c}x{h}x{w}, {self.num_classes} classes; test: "
                f"{len(self.test):,} images ({self.test_note}); x = (pixel/255 - {self.mean}) / {self.std}")

    @classmethod
    def fashion_mnist(cls, data_dir: str | os.PathLike | None = None) -> ImageSource:
        train, test = fashion_mnist("train", data_dir), fashion_mnist("test", data_dir)
        return cls("fashion-mnist", ImageTensors(*train), ImageTensors(*test), FMNIST_CLASSES, mean=[FMNIST_MEAN],
                   std=[FMNIST_STD], test_note="the 10,000 test images")


@dataclass
class ImageEvalData:
    """Normalised test images of a dataset, ready for zero-shot evaluation (:mod:`train.evaluate`), and its training
    images for the BatchNorm batches.

    Shapes:
        train_x: (N_train, C, H, W) float (only the BatchNorm batches are read; Fashion-MNIST: 60000 x 1x28x28);
        test_x: (N, C, H, W) float; test_y: (N,) int64.
    """

    train_x: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor

    @classmethod
    def load(cls, data_dir: str | None = None, test_images: int | None = None) -> ImageEvalData:
        """All Fashion-MNIST training images and the first ``test_images`` test images (None: all 10,000)."""
        train_x, _ = fashion_mnist("train", data_dir)
        test_x, test_y = fashion_mnist("test", data_dir, limit=test_images)
        return cls(normalize(train_x), normalize(test_x), test_y)

    @classmethod
    def from_source(cls, source: ImageSource, test_images: int | None = None) -> ImageEvalData:
        """Any image dataset: its first ``test_images`` test images (None: all), and its training images as a lazy
        view (only the BatchNorm batches are ever read, so big image folders are not decoded in full)."""
        n = len(source.test) if test_images is None else min(test_images, len(source.test))
        test_x, test_y = source.load("test", torch.arange(n))
        return cls(_TrainView(source), test_x, test_y)


class _TrainView:
    """``view[idx]`` → normalised training images ``(B, C, H, W)`` of an :class:`ImageSource`, loaded on demand."""

    def __init__(self, source: ImageSource):
        self.source = source

    def __len__(self) -> int:
        return len(self.source.train)

    def __getitem__(self, idx: torch.Tensor) -> torch.Tensor:
        return self.source.load("train", torch.as_tensor(idx).reshape(-1))[0]


# ---- text ----------------------------------------------------------------------------------------------------------
class TextSource:
    """Token ids for causal language modelling: a training stream and the held-out tail for validation.

    Args:
        tokens: the whole corpus, ``(n,)`` ids in ``[0, vocab_size)``; its last 5 % (at least ``seq_len + 2``
            tokens) is the validation split.
        tokenizer: the tokenizer directory (None: bytes).

    Raises:
        ConfigError: ids outside the vocabulary, or too few tokens for a training and a validation window.
    """

    task = "lm"

    def __init__(self, name: str, tokens: torch.Tensor, vocab_size: int, seq_len: int, tokenizer: str | None = None):
        tokens = torch.as_tensor(tokens).long().flatten()
        n, need = len(tokens), seq_len + 2
        if n and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab_size):
            raise ConfigError(f"{name}: token ids span [{int(tokens.min())}, {int(tokens.max())}] but the vocabulary "
                              f"has {vocab_size} tokens; pass the vocab_size the ids come from")
        if n < 2 * need:
            raise ConfigError(f"{name} holds {n} tokens; training and validation windows of seq_len {seq_len} need at "
                              f"least {2 * need}: add text or lower {option('seq_len')}")
        split = min(int(n * (1 - TEXT_VAL_FRACTION)), n - need)
        self.name, self.vocab_size, self.tokenizer = name, int(vocab_size), tokenizer
        self.train, self.val = tokens[:split], tokens[split:]

    def describe(self) -> str:
        unit = f"tokens of {self.tokenizer} (vocabulary {self.vocab_size})" if self.tokenizer else "bytes (vocab 256)"
        return f"{self.name}: {len(self.train):,} training {unit}; validation: the last {len(self.val):,}"


# ---- opening a spec ------------------------------------------------------------------------------------------------
def open_dataset(spec: str | None, task: str, *, data_dir: str | None = None, image_size: int | None = None,
                 tokenizer: str | None = None, seq_len: int = 64) -> ImageSource | TextSource:
    """Open the dataset a spec names (None: the task's default), checked and ready to stream.

    Raises:
        ConfigError: a bad spec, a spec of the other task, or bad data (the message names the path and the fix).
    """
    spec = spec or default_dataset(task)
    kind, arg = parse_dataset(spec)
    if DATASET_TASKS[kind] not in (None, task):
        raise ConfigError(f"dataset {spec!r} is for task {DATASET_TASKS[kind]!r}, not {task!r}")
    if kind == "python":
        raise ConfigError(f"this run trained on a Python dataset ({spec}); continue it from Python with "
                          "train.meta_train(dataset, out, resume=...)")
    if kind == "fashion-mnist":
        if image_size:
            raise ConfigError(f"{option('image_size')} does not apply to fashion-mnist (28x28); use "
                              "torchvision:FashionMNIST:ROOT to resize it")
        return ImageSource.fashion_mnist(arg or data_dir)
    if kind == "imagefolder":
        train, test, classes, note = image_folder(arg, image_size)
        return ImageSource(spec, train, test, classes, test_note=note)
    if kind == "torchvision":
        name, root = arg.split(":", 1)
        train, test, classes, note = torchvision_dataset(name, root, image_size)
        mean, std = KNOWN_STATS.get(name.lower(), (None, None))
        return ImageSource(spec, train, test, classes, mean=mean, std=std, test_note=note)
    from .text import BYTE_VOCAB, encode, load_tokenizer, read_corpus
    if kind == "fortunes":
        data = fortunes_bytes(arg or data_dir).to(torch.uint8).numpy().tobytes()
    else:
        data = read_corpus(arg)
    tok = load_tokenizer(tokenizer) if tokenizer else None
    tokens = encode(data, tok)
    vocab = len(tok) if tok is not None else BYTE_VOCAB
    return TextSource(spec, tokens, vocab, seq_len, str(Path(tokenizer).expanduser()) if tokenizer else None)


def open_source(cfg: Any) -> ImageSource | TextSource:
    """:func:`open_dataset` for a :class:`~train.config.TrainConfig`."""
    return open_dataset(cfg.dataset, cfg.task, data_dir=cfg.data_dir, image_size=cfg.image_size,
                        tokenizer=cfg.tokenizer, seq_len=cfg.seq_len)
