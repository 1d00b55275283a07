"""The seeded batch streams every training dataset goes through.

Batches are pure functions of ``(seed, rank, step)``, so a resumed run sees exactly the data it would have seen,
and DDP ranks see different data without any coordination. The streams read an ``ImageSource`` / ``TextSource``
(:mod:`train.datasets`); without one they read Fashion-MNIST / fortunes (:mod:`train.data`).
"""
from __future__ import annotations

import torch

from .data import fortunes_split, stream_seed
from .datasets import ImageSource, TextSource

__all__ = ["ImageStream", "TextStream"]


class ImageStream:
    """Training batches of an image dataset: batch ``n`` of rank ``r`` is a pure function of ``(seed, r, n)``.

    Each rank walks its own sequence of epochs, each a fresh permutation of the training images (seeded per epoch),
    ``batch_size`` images per step.

    Args:
        source: a :class:`train.datasets.ImageSource` (default: Fashion-MNIST from ``data_dir``).

    Shapes:
        ``batch(n)`` → ``x (B, C, H, W)`` float (normalised; ``(B, 1, 28, 28)`` for Fashion-MNIST), ``y (B,)`` int64.
    """

    def __init__(self, batch_size: int, seed: int = 0, rank: int = 0, data_dir: str | None = None,
                 source: ImageSource | None = None):
        self.source = source if source is not None else ImageSource.fashion_mnist(data_dir)
        self.batch_size, self.seed, self.rank = batch_size, seed, rank
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> torch.Tensor:
        if epoch != self._epoch:  # consecutive steps share an epoch: cache its permutation
            g = torch.Generator().manual_seed(stream_seed("fmnist", self.seed, self.rank, epoch))
            self._epoch, self._perm = epoch, torch.randperm(len(self.source.train), generator=g)
        return self._perm

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.source.train)
        pos = torch.arange(step * self.batch_size, (step + 1) * self.batch_size)
        idx = torch.cat([self._permutation(int(e))[pos[pos // n == e] % n] for e in torch.unique(pos // n)])
        return self.source.load("train", idx)


class TextStream:
    """Training windows of a token stream: ``batch(n)`` draws ``batch_size`` random windows of ``seq_len + 1``
    tokens (seeded by ``(seed, rank, n)``) and returns them shifted by one for next-token prediction.

    Args:
        source: a :class:`train.datasets.TextSource` (default: the fortunes bytes from ``data_dir``).

    Shapes:
        ``batch(n)`` → ``x (B, T)`` int64 inputs, ``y (B, T)`` int64 targets (``y[:, t] = x[:, t + 1]``).
    """

    def __init__(self, batch_size: int, seq_len: int, seed: int = 0, rank: int = 0, data_dir: str | None = None,
                 source: TextSource | None = None):
        self.train, self.val = fortunes_split(data_dir) if source is None else (source.train, source.val)
        self.batch_size, self.seq_len, self.seed, self.rank = batch_size, seq_len, seed, rank

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(stream_seed("fortunes", self.seed, self.rank, step))
        starts = torch.randint(0, len(self.train) - self.seq_len - 1, (self.batch_size,), generator=g)
        win = self.train[starts[:, None] + torch.arange(self.seq_len + 1)]
        return win[:, :-1], win[:, 1:]
