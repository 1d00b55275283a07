"""Real data for meta-training: the Fashion-MNIST and fortunes readers (other datasets are opened by
:mod:`train.datasets`, and every dataset is batched by :mod:`train.streams`).

* Fashion-MNIST (Debian ``dataset-fashion-mnist``): the four idx ``.gz`` files under
  ``/usr/share/datasets/fashion-mnist`` (override: ``--data-dir`` or ``$GHN_FMNIST_DIR``), parsed with gzip + torch
  (no numpy, no torchvision download). Images are normalised as ``x = (pixel/255 - 0.2860) / 0.3530``, shape
  ``(N, 1, 28, 28)``; 10 classes.
* fortunes (Debian ``fortunes``): every plain fortune file under ``/usr/share/games/fortunes`` (override:
  ``--data-dir`` or ``$GHN_FORTUNES_DIR``), concatenated in sorted order. Tokens are **bytes** (vocab 256): no
  tokenizer to ship or version, every text is representable, and the LMs' embeddings stay tiny, which is what a
  2-core CPU can meta-train. The last 5 % of the bytes is the validation split.

``stream_seed`` turns any parts (seed, rank, step, ...) into an unrelated 63-bit seed: the streams, the BatchNorm
batches and the LM evaluation windows draw from it, so every draw is a pure function of its parts.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import torch

from ghn.errors import ConfigError

from .options import option

__all__ = ["FMNIST_MEAN", "FMNIST_STD", "read_idx", "fashion_mnist", "normalize", "fortunes_bytes", "fortunes_split",
           "fmnist_dir", "fortunes_dir", "stream_seed"]

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530  # Fashion-MNIST train-set pixel mean / std (after /255)
FMNIST_DEFAULT = "/usr/share/datasets/fashion-mnist"
FORTUNES_DEFAULT = "/usr/share/games/fortunes"
VAL_FRACTION = 0.05  # fortunes: the tail kept for validation


def fmnist_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$GHN_FMNIST_DIR``, else the Debian package's directory."""
    return Path(data_dir or os.environ.get("GHN_FMNIST_DIR") or FMNIST_DEFAULT)


def fortunes_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """``data_dir``, else ``$GHN_FORTUNES_DIR``, else the Debian package's directory."""
    return Path(data_dir or os.environ.get("GHN_FORTUNES_DIR") or FORTUNES_DEFAULT)


def stream_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (a hash, so nearby seeds/ranks/steps give unrelated streams)."""
    return int(hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:15], 16)


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an idx file (``.gz`` or plain) of unsigned bytes into a uint8 tensor of its declared shape.

    Format (LeCun's MNIST page): 2 zero bytes, a type byte (0x08 = uint8), a rank byte, then one big-endian
    uint32 per dimension, then the data in C order.

    Raises:
        ConfigError: the file is missing, truncated, or not an idx file of uint8.
    """
    p = Path(path)
    try:
        opener = gzip.open if p.suffix == ".gz" else open
        with opener(p, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise ConfigError(f"{p} does not exist; install Fashion-MNIST (`apt-get install dataset-fashion-mnist`) "
                          f"or point {option('data_dir')} / $GHN_FMNIST_DIR at a directory with the idx .gz files"
                          ) from None
    except (OSError, EOFError) as e:
        raise ConfigError(f"{p} is not readable ({e}); the file is truncated or corrupt") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ConfigError(f"{p} is not an idx file of uint8 (bad magic {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    n = 1
    for d in dims:
        n *= d
    if len(raw) != header + n:
        raise ConfigError(f"{p} declares shape {dims} ({n} bytes) but holds {len(raw) - header} bytes of data")
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8, offset=header).reshape(dims)


def fashion_mnist(split: str = "train", data_dir: str | os.PathLike | None = None,
                  limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw Fashion-MNIST: uint8 images ``(N, 1, 28, 28)`` and int64 labels ``(N,)``; ``limit`` keeps a prefix.

    Args:
        split: "train" (60,000 images) or "test" (10,000).
    """
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    root = fmnist_dir(data_dir)
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(root / f"{prefix}-images-idx3-ubyte.gz")[:limit]
    y = read_idx(root / f"{prefix}-labels-idx1-ubyte.gz")[:limit].long()
    if len(x) != len(y) or x.shape[1:] != (28, 28):
        raise ConfigError(f"{root}: {len(x)} images of shape {tuple(x.shape[1:])} and {len(y)} labels; expected "
                          "matching counts of 28x28 images")
    return x.unsqueeze(1), y


def normalize(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels → float inputs, ``(pixel/255 - 0.2860) / 0.3530`` (the convention of the shipped GHN)."""
    return (pixels.float() / 255 - FMNIST_MEAN) / FMNIST_STD


def fortunes_bytes(data_dir: str | os.PathLike | None = None) -> torch.Tensor:
    """All plain fortune files (no extension, symlinks skipped; ``.dat`` indexes and ``.u8`` copies left out),
    sorted by name, concatenated: an int64 tensor of byte values in ``[0, 256)``."""
    root = fortunes_dir(data_dir)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory; install fortunes (`apt-get install fortunes`) or point "
                          f"{option('data_dir')} / $GHN_FORTUNES_DIR at a directory of text files")
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.is_symlink() and not p.suffix)
    data = b"".join(p.read_bytes() for p in files)
    if len(data) < 10_000:
        raise ConfigError(f"{root} holds only {len(data)} bytes of plain text files; expected the fortunes corpus")
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).long()


def fortunes_split(data_dir: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, val)`` byte tensors: the fortunes corpus with its last 5 % held out for validation."""
    data = fortunes_bytes(data_dir)
    split = int(len(data) * (1 - VAL_FRACTION))
    return data[:split], data[split:]
