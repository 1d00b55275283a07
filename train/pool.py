"""A fixed-size pool of training archs whose graphs and built modules are reused across steps.

Sampling an arch, building its graph and constructing its module cost more than a GHN step on a GPU (and a
noticeable share on a CPU). With a pool, each step draws its meta-batch from ``size`` archs whose graphs and
modules are cached, and ``refresh`` pool slots per step are replaced by the next archs of the stream, so the
distribution still moves through the whole training split.

Everything is a pure function of the step index (and the stream's seed and rank): refresh ``q`` (0, 1, ...)
puts the stream's item ``size + q`` into slot ``q % size``; before step ``s``, ``s * refresh`` refreshes have
happened; step ``s`` draws ``meta_batch`` distinct slots with ``random.Random(seed, rank, s)``. A resumed run
therefore rebuilds exactly the pool the uninterrupted run had, with no extra checkpoint state. Graphs of
replacements are built lazily by whoever calls :meth:`ArchPool.draw` (the prefetch thread, in the background);
modules by :meth:`ArchPool.model` in the training thread (their seeded init must not interleave with its RNG use).
"""
from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from torch import nn

from ghn.errors import ConfigError

if TYPE_CHECKING:
    from model_zoo import ArchDataset, ArchSample

__all__ = ["ArchPool", "check_pool"]


def check_pool(size: int, refresh: int, meta_batch: int) -> None:
    """ConfigError unless ``meta_batch <= size`` and ``0 <= refresh <= size``."""
    if size < meta_batch or not 0 <= refresh <= size:
        raise ConfigError(f"arch_pool must be >= meta_batch ({meta_batch}) and pool_refresh in [0, arch_pool]; "
                          f"got arch_pool={size}, pool_refresh={refresh}")


class ArchPool:
    """Draw each step's archs from a pool over an :class:`~model_zoo.ArchDataset` stream.

    Args:
        ds: the rank's arch stream (positions are rank-local).
        size: archs in the pool (>= ``meta_batch``).
        refresh: slots replaced by fresh stream archs per step (0: a fixed pool).
        meta_batch: archs drawn per step (distinct slots).

    The draws depend on the stream's seed and rank, so runs and ranks differ.
    """

    def __init__(self, ds: ArchDataset, size: int, refresh: int, meta_batch: int):
        check_pool(size, refresh, meta_batch)
        self.ds, self.size, self.refresh, self.meta_batch = ds, size, refresh, meta_batch
        self._samples: dict[int, ArchSample] = {}  # stream position -> sample (graph); the drawing thread's
        self._models: dict[int, nn.Module] = {}  # stream position -> built module; the training thread's

    def position(self, slot: int, step: int) -> int:
        """Rank-local stream position of the arch in ``slot`` when step ``step`` runs."""
        done = step * self.refresh  # refreshes before this step
        if done <= slot:
            return slot  # still the initial fill
        last = slot + self.size * ((done - 1 - slot) // self.size)  # the last refresh that hit this slot
        return self.size + last

    def stream_state(self, step: int) -> dict[str, Any]:
        """The stream's state once step ``step`` has run (what a checkpoint records)."""
        return {**self.ds.state_dict(), "position": self.size + (step + 1) * self.refresh}

    def draw(self, step: int) -> list[ArchSample]:
        """The archs of step ``step``: ``meta_batch`` distinct slots, graphs built on first use."""
        rng = random.Random(f"train/pool/{self.ds.seed}/{self.ds.rank}/{step}")
        return [self._sample(self.position(s, step), step) for s in rng.sample(range(self.size), self.meta_batch)]

    def fill(self, step: int, device: Any = None) -> None:
        """Build every slot's graph (and module, on ``device`` when given) as of ``step`` now, rather than on first
        draw: the pool's steady state, for timing it."""
        for slot in range(self.size):
            sample = self._sample(self.position(slot, step), step)
            if device is not None:
                self.model(sample, device, step)

    def model(self, sample: ArchSample, device: Any, step: int) -> nn.Module:
        """``sample``'s module (seeded default init, train mode) for step ``step``, built once and reused while it
        is in the pool (modules of archs the pool has replaced by then are dropped).

        The training loop runs it functionally with predicted parameters, so its own weights never change; only
        BatchNorm running statistics accumulate, which train-mode forward passes do not read.
        """
        n = (sample.index - self.ds.rank) // self.ds.world_size  # global stream index -> rank-local position
        if n not in self._models:
            self._models = self._current(self._models, step)
            self._models[n] = sample.spec.build(device=device).train()
        return self._models[n]

    def _sample(self, n: int, step: int) -> ArchSample:
        """The sample at stream position ``n`` (graph built on first use; replaced archs dropped then)."""
        if n not in self._samples:
            self._samples = self._current(self._samples, step)
            self._samples[n] = self.ds.sample_at(n)
        return self._samples[n]

    def _current(self, cache: dict, step: int) -> dict:
        """``cache`` without the positions the pool no longer holds at ``step``."""
        def slot(n: int) -> int:
            return n if n < self.size else (n - self.size) % self.size
        return {n: v for n, v in cache.items() if self.position(slot(n), step) == n}
