"""Labelled images from local files: class folders (``imagefolder:DIR``) and torchvision datasets already on disk
(``torchvision:NAME:ROOT``), read as map-style datasets of ``(uint8 (C, H, W) tensor, int label)``.

* Image folders follow torchvision's ``ImageFolder`` layout, ``DIR/<class>/<image>`` (any depth below the class
  folder; extensions ``.png .jpg .jpeg .bmp .ppm .pgm .tif .tiff .webp``; hidden files skipped). If ``DIR`` holds
  ``train/`` and ``test/`` (or ``val/``) folders of that layout, those are the splits; otherwise a fixed 10 % of each
  class is held out for testing (seeded, the same for every run, so evaluation never sees training images).
  Every file is opened and verified up front, so a bad file stops the run before training, naming the file.
  Channels come from the files (1 if every image is greyscale, else 3: RGB, alpha dropped); sizes must agree
  unless ``image_size`` resizes every image to ``image_size x image_size`` (bilinear).
* torchvision datasets are built with ``download=False`` from ``ROOT``; their own test split is used when they have
  one (``train=False``, or ``split="test"`` / ``"val"``), otherwise 10 % of the training split is held out.
"""
from __future__ import annotations

import difflib
import inspect
import logging
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ghn.errors import ConfigError

from .options import option

__all__ = ["IMAGE_EXTENSIONS", "HOLDOUT", "ImageFiles", "PILImages", "image_folder", "torchvision_dataset",
           "holdout_split", "to_uint8", "resize_fix"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
HOLDOUT = 0.1  # fraction of each class held out for testing when a dataset has no test split
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")
_LAYOUT = "one subfolder of images per class (DIR/cat/1.png, DIR/dog/2.png, ...)"


def resize_fix(side: int, resizable: bool = True) -> str:
    """What to do about images of different sizes: resize them all to ``side x side``, with ``image_size`` (spelled as
    the caller spells it, :func:`train.options.option`) for a dataset spec, or in the dataset itself for a Python
    dataset (``resizable=False``: train reads its items as they are)."""
    if resizable:
        return f"pass {option('image_size', side)} to resize them all to {side}x{side}"
    return f"resize them in the dataset itself, e.g. with a torchvision.transforms.Resize(({side}, {side})) transform"


def to_uint8(img, mode: str, size: int | None) -> torch.Tensor:
    """A PIL image as a uint8 ``(C, H, W)`` tensor in ``mode`` ("L" or "RGB"), resized to ``size x size`` if given."""
    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    if img.mode != mode:
        img = img.convert(mode)
    if size and img.size != (size, size):
        img = img.resize((size, size), Image.BILINEAR)
    return pil_to_tensor(img)


class ImageFiles(Dataset):
    """Image files with labels: item ``i`` is ``(uint8 (C, H, W) tensor, label)``.

    Args:
        items: ``(path, label)`` pairs; mode: "L" or "RGB"; size: resize to ``size x size`` (None: as stored).
    """

    def __init__(self, items: list[tuple[Path, int]], mode: str, size: int | None):
        self.items, self.mode, self.size = items, mode, size

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        path, label = self.items[i]
        try:
            with Image.open(path) as im:
                return to_uint8(im, self.mode, self.size), label
        except OSError as e:  # the file changed since it was verified
            raise ConfigError(f"{path} is not a readable image ({e}); delete it or move it out of the dataset") from e


class PILImages(Dataset):
    """A dataset of ``(PIL image, label)`` items (torchvision's) as ``(uint8 (C, H, W) tensor, int label)``."""

    def __init__(self, dataset: Dataset, mode: str, size: int | None):
        self.dataset, self.mode, self.size = dataset, mode, size

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img, label = self.dataset[i]
        return to_uint8(img, self.mode, self.size), int(label)


def holdout_split(labels: list[int], fraction: float = HOLDOUT, seed: int = 0) -> tuple[list[int], list[int]]:
    """``(train, test)`` indices: a seeded ``fraction`` of each class (at least one image of every class with two or
    more) goes to test. Fixed by ``seed`` alone, so every run and every evaluation agree on it."""
    by_class: dict[int, list[int]] = {}
    for i, y in enumerate(labels):
        by_class.setdefault(int(y), []).append(i)
    g = torch.Generator().manual_seed(seed)
    train, test = [], []
    for y in sorted(by_class):
        idx = by_class[y]
        k = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        order = [idx[j] for j in torch.randperm(len(idx), generator=g).tolist()]
        test += order[:k]
        train += order[k:]
    return sorted(train), sorted(test)


def _scan_classes(root: Path) -> tuple[list[str], list[tuple[Path, int]]]:
    """Class names and ``(file, label)`` items of an ImageFolder-style directory (typed errors for bad layouts)."""
    if not root.exists():
        raise ConfigError(f"{root} does not exist; imagefolder:DIR needs a directory with {_LAYOUT}")
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory; imagefolder:DIR needs a directory with {_LAYOUT}")
    classes: list[str] = []
    items: list[tuple[Path, int]] = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not any(part.startswith(".") for part in p.relative_to(d).parts))
        if not files:
            logger.warning("%s holds no images (%s): not a class", d, ", ".join(IMAGE_EXTENSIONS))
            continue
        items += [(p, len(classes)) for p in files]
        classes.append(d.name)
    if not classes:
        loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
        what = f"its {len(loose)} images lie directly in it" if loose else "it holds no images"
        raise ConfigError(f"{root} has no class subfolders with images ({what}); put each class's images in its own "
                          f"subfolder: {root}/<class>/<image>.png")
    if len(classes) == 1:
        raise ConfigError(f"{root} has one class folder ({classes[0]!r}); classification needs at least two: add "
                          f"a subfolder of images for every other class ({root}/<class>/<image>.png)")
    return classes, items


def _inspect_files(items: list[tuple[Path, int]], root: Path, image_size: int | None) -> str:
    """Open and verify every file; return the mode ("L" or "RGB"). Raises for unreadable or mixed-size images."""
    from PIL import Image

    sizes: Counter = Counter()
    example: dict[tuple[int, int], Path] = {}
    grey = True
    for path, _ in items:
        try:
            with Image.open(path) as im:
                size, mode = im.size, im.mode
                im.verify()  # reads the whole file: truncated or corrupt data fails here, not mid-training
        except Exception as e:  # noqa: BLE001 - PIL raises many types for bad files
            raise ConfigError(f"{path} is not a readable image ({type(e).__name__}: {e}); delete it or move it out "
                              f"of {root}") from None
        sizes[size] += 1
        example.setdefault(size, path)
        grey = grey and mode in _GREY_MODES
    if image_size is None and len(sizes) > 1:
        common = ", ".join(f"{w}x{h}: {n} files (e.g. {example[(w, h)].name})" for (w, h), n in sizes.most_common(4))
        top = sizes.most_common(1)[0][1]
        side = max(max(size) for size, n in sizes.items() if n == top)  # the most common size's longer side
        raise ConfigError(f"{root} has images of {len(sizes)} different sizes ({common}); {resize_fix(side)}")
    return "L" if grey else "RGB"


def image_folder(root: str | Path, image_size: int | None = None) -> tuple[Dataset, Dataset, list[str], str]:
    """Read an image folder; returns ``(train, test, classes, where the test split comes from)``.

    Raises:
        ConfigError: a missing or empty directory, a single class, an unreadable file, images of different sizes
            without ``image_size``, or test classes the training split does not have.
    """
    root = Path(root).expanduser()
    test_dir = next((root / n for n in ("test", "val") if (root / n).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None and any(p.is_dir() for p in (root / "train").iterdir()):
        classes, train_items = _scan_classes(root / "train")
        test_classes, test_items = _scan_classes(test_dir)
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise ConfigError(f"{test_dir} has classes that {root / 'train'} does not have: {unknown[:5]}; give both "
                              "splits the same class folders")
        relabel = [classes.index(c) for c in test_classes]
        test_items = [(p, relabel[y]) for p, y in test_items]
        note = f"the {test_dir.name}/ folder"
    else:
        classes, items = _scan_classes(root)
        tr, te = holdout_split([y for _, y in items])
        train_items, test_items = [items[i] for i in tr], [items[i] for i in te]
        note = f"{HOLDOUT:.0%} of each class held out (fixed seed)"
    mode = _inspect_files(train_items + test_items, root, image_size)
    return ImageFiles(train_items, mode, image_size), ImageFiles(test_items, mode, image_size), classes, note


def _torchvision_class(name: str) -> Any:
    import torchvision.datasets as tvd

    names = {n.lower(): n for n in tvd.__all__ if n[0].isupper() and n not in ("VisionDataset", "DatasetFolder")}
    if name.lower() in ("imagefolder",):
        raise ConfigError(f"for a folder of class subfolders use {option('dataset', 'imagefolder:DIR')}")
    if name.lower() not in names:
        close = difflib.get_close_matches(name.lower(), list(names), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(names[c] for c in close)}?" if close else ""
        raise ConfigError(f"torchvision has no dataset {name!r}{hint} (image classification sets include CIFAR10, "
                          "CIFAR100, MNIST, FashionMNIST, KMNIST, SVHN, STL10, Flowers102, ImageNet)")
    return getattr(tvd, names[name.lower()])


def torchvision_dataset(name: str, root: str | Path, image_size: int | None = None
                        ) -> tuple[Dataset, Dataset, list[str], str]:
    """A torchvision dataset already on disk (never downloaded); returns ``(train, test, classes, test note)``.

    Raises:
        ConfigError: an unknown name (with close names), a missing ROOT, or files torchvision cannot find there.
    """
    cls = _torchvision_class(name)
    root = Path(root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"torchvision:{cls.__name__}:{root}: {root} is not a directory; point ROOT at the directory "
                          f"you downloaded {cls.__name__} into")
    params = inspect.signature(cls).parameters
    extra = {"download": False} if "download" in params else {}

    def build(**split: Any) -> Dataset:
        return cls(str(root), **split, **extra)

    try:
        if "train" in params:
            train, test_args = build(train=True), [{"train": False}]
        elif "split" in params:
            train, test_args = build(split="train"), [{"split": "test"}, {"split": "val"}]
        else:
            train, test_args = build(), []
    except (RuntimeError, FileNotFoundError, OSError, ValueError) as e:
        raise ConfigError(
            f"torchvision:{cls.__name__}:{root}: torchvision cannot read it ({type(e).__name__}: {e}); ghn never "
            f"downloads here, so fetch it once where there is internet: python -c \"import torchvision; "
            f"torchvision.datasets.{cls.__name__}('{root}', download=True)\" and copy {root} to this machine") from e
    test, note = None, "its test split"
    for args in test_args:
        try:
            test = build(**args)
            note = f"its {next(iter(args.values())) if 'split' in args else 'test'} split"
            break
        except (RuntimeError, FileNotFoundError, OSError, ValueError):
            continue
    first, _ = train[0]
    mode = "L" if getattr(first, "mode", "RGB") in _GREY_MODES else "RGB"
    labels = getattr(train, "targets", None)
    labels = getattr(train, "labels", None) if labels is None else labels
    classes = list(getattr(train, "classes", None) or [])
    if not classes:
        labels = [int(train[i][1]) for i in range(len(train))] if labels is None else labels
        classes = [str(c) for c in range(int(max(labels)) + 1)]
    train_ds: Dataset = PILImages(train, mode, image_size)
    if test is None:
        if labels is None:
            labels = [int(train[i][1]) for i in range(len(train))]
        tr, te = holdout_split([int(y) for y in labels])
        train_ds, test_ds = torch.utils.data.Subset(train_ds, tr), torch.utils.data.Subset(train_ds, te)
        note = f"{HOLDOUT:.0%} of each class of its training split held out (fixed seed)"
    else:
        test_ds = PILImages(test, mode, image_size)
    return train_ds, test_ds, [str(c) for c in classes], note
