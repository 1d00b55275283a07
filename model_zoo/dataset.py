"""ArchDataset: an infinite, deterministic stream of (spec, model, graph) for meta-training a GHN.

Stream layout. Global position ``k = 0, 1, 2, ...`` determines one arch: a family drawn from ``families``
(weighted) and sample seeds drawn until the arch is in ``split``, all from ``random.Random(f".../{seed}/{k}")``,
so item ``k`` never depends on other items, workers or ranks. DDP rank ``r`` of ``world_size`` takes positions
``k = n * world_size + r`` (``n`` = the rank-local position), so ranks never share an item. Inside one rank,
DataLoader worker ``w`` of ``W`` takes ``n = start + w, start + w + W, ...``; PyTorch's DataLoader reads workers
round-robin, so with ``batch_size=None`` the rank sees exactly the order of ``num_workers=0``.

Resuming. ``state_dict()`` is ``{"seed", "position", "rank", "world_size"}`` (JSON). When iterating in the main
process, ``ds.state_dict()`` is the position after the last yielded sample. With DataLoader workers the dataset
copies live in the workers, so use ``sample.state`` (the same dict, carried by each sample):
``ds.load_state_dict(last_sample.state)`` continues right after it.

Graph cache. With ``cache_dir``, each graph is stored as JSON (``graph.to_dict()``) in
``cache_dir/<h[:2]>/<h>.json`` with ``h = sha256(spec JSON + ghn version)``, written atomically (temporary file +
``os.replace``), so concurrent workers and ranks may share one cache directory. A corrupt or stale file is
rebuilt and overwritten.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.utils.data import IterableDataset, get_worker_info

import ghn
from ghn import Graph, build_graph
from ghn.errors import ConfigError, GraphError

from .registry import get_family, sample_arch
from .spec import ArchSpec
from .split import SPLITS, split_of

__all__ = ["ArchDataset", "ArchSample", "GraphCache", "graph_of"]
log = logging.getLogger(__name__)


def graph_of(spec: ArchSpec) -> Graph:
    """The graph of ``spec``: built on the meta device (no weight memory) with ``spec.example_inputs(2)``."""
    return build_graph(spec.build(device="meta"), spec.example_inputs(batch_size=2))


class GraphCache:
    """On-disk JSON cache of graphs keyed by a hash of the spec (and the ghn version that built them).

    Args:
        root: cache directory (created on first write).
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, spec: ArchSpec) -> Path:
        """``root/<h[:2]>/<h>.json`` with ``h = sha256(spec JSON + ghn version)``."""
        h = hashlib.sha256(f"{spec.to_json()}|ghn={ghn.__version__}".encode()).hexdigest()
        return self.root / h[:2] / f"{h}.json"

    def get(self, spec: ArchSpec) -> Graph | None:
        """The cached graph, or None when absent, unreadable or from another spec / graph format."""
        p = self.path(spec)
        try:
            d = json.loads(p.read_text())
            if d.get("spec") != spec.to_dict():
                raise GraphError("cache entry belongs to another spec")
            return Graph.from_dict(d["graph"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # GraphError is a ValueError
            log.warning("ignoring unusable graph cache file %s (%s: %s); rebuilding it", p, type(e).__name__, e)
            return None

    def put(self, spec: ArchSpec, graph: Graph) -> Path:
        """Write atomically: readers see the old file or the complete new one, never a partial file."""
        p = self.path(spec)
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=p.stem[:8], suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump({"spec": spec.to_dict(), "ghn_version": ghn.__version__, "graph": graph.to_dict()}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, p)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return p

    def get_or_build(self, spec: ArchSpec) -> Graph:
        graph = self.get(spec)
        if graph is None:
            graph = graph_of(spec)
            self.put(spec, graph)
        return graph


class ArchSample:
    """One item of an :class:`ArchDataset`.

    Attributes:
        spec: the arch.
        graph: its ``ghn.Graph``.
        index: global stream position ``k``.
        state: the dataset state right after this sample (``ds.load_state_dict(sample.state)`` resumes after it).
        model: the ``nn.Module`` on ``device``, built (seeded by ``spec.seed``) on first access.
    """

    def __init__(self, spec: ArchSpec, graph: Graph, index: int, state: dict, device: str = "cpu"):
        self.spec, self.graph, self.index, self.state, self.device = spec, graph, index, state, device

    @cached_property
    def model(self) -> nn.Module:
        return self.spec.build(device=self.device)

    def __getstate__(self) -> dict:  # send specs and graphs between DataLoader workers, never built models
        d = dict(self.__dict__)
        d.pop("model", None)
        return d

    def __repr__(self) -> str:
        return f"ArchSample(index={self.index}, family={self.spec.family!r}, nodes={len(self.graph)})"


class ArchDataset(IterableDataset):
    """An infinite, deterministic stream of :class:`ArchSample` (see the module docstring).

    Args:
        families: family names to mix, e.g. ``("cnn", "vit")``.
        split: "train", "heldout" or None (both).
        seed: stream seed; the same seed gives the same stream.
        constraints: sampler constraints. Either shared by all families (``dict(max_params=200_000)``) or per
            family (``{"cnn": {...}, "vit": {...}}``, when every key is a family name).
        cache_dir: directory of the JSON graph cache; None: build graphs every time.
        rank, world_size: DDP partition of the stream.
        weights: relative family frequencies (default: equal).
        device: where ``sample.model`` is built.

    Raises:
        ConfigError: unknown family / split, bad rank, or constraints the samplers reject.

    Example:
        >>> ds = ArchDataset(families=("cnn", "vit"), seed=0, constraints=dict(max_params=100_000))
        >>> loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=2)
        >>> sample = next(iter(loader)); sample.graph, sample.model
    """

    def __init__(self, families: tuple[str, ...] | list[str] = ("cnn", "vit"), split: str | None = "train",
                 seed: int = 0, constraints: dict | None = None, cache_dir: str | os.PathLike | None = None,
                 rank: int = 0, world_size: int = 1, weights: list[float] | None = None, device: str = "cpu"):
        super().__init__()
        self.families = tuple(families)
        for f in self.families:
            get_family(f)  # raises ConfigError for unknown names
        if not self.families:
            raise ConfigError("ArchDataset needs at least one family")
        if split is not None and split not in SPLITS:
            raise ConfigError(f"split must be one of {SPLITS} or None, got {split!r}")
        if not 0 <= rank < world_size:
            raise ConfigError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if weights is not None and (len(weights) != len(self.families) or min(weights) < 0 or sum(weights) <= 0):
            raise ConfigError(f"weights must be {len(self.families)} non-negative numbers, got {weights}")
        constraints = dict(constraints or {})
        if constraints and set(constraints) <= set(self.families):
            self.constraints = {f: dict(constraints.get(f, {})) for f in self.families}
        else:
            self.constraints = {f: dict(constraints) for f in self.families}
        self.split, self.seed, self.rank, self.world_size = split, int(seed), rank, world_size
        self.weights = list(weights) if weights is not None else [1.0] * len(self.families)
        self.cache = GraphCache(cache_dir) if cache_dir is not None else None
        self.device = device
        self.position = 0  # next rank-local position

    # ---- the stream --------------------------------------------------------------------------------------------
    def spec_at(self, k: int) -> ArchSpec:
        """The arch at global position ``k`` (pure function of ``seed``, ``k`` and the configuration)."""
        rng = random.Random(f"model_zoo/ArchDataset/{self.seed}/{k}")
        fam = rng.choices(self.families, weights=self.weights)[0]
        for _ in range(10_000):  # P(train) = 0.9, P(heldout) = 0.1: this ends after a few tries
            spec = sample_arch(fam, rng.getrandbits(48), **self.constraints[fam])
            if self.split is None or split_of(spec) == self.split:
                return spec
        raise ConfigError(f"no {fam} arch of split {self.split!r} in 10000 samples; check the constraints")

    def sample_at(self, n: int) -> ArchSample:
        """This rank's ``n``-th item (global position ``n * world_size + rank``)."""
        k = n * self.world_size + self.rank
        spec = self.spec_at(k)
        graph = self.cache.get_or_build(spec) if self.cache is not None else graph_of(spec)
        return ArchSample(spec, graph, k, self._state(n + 1), self.device)

    def __iter__(self) -> Iterator[ArchSample]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        n = self.position + wid
        while True:
            sample = self.sample_at(n)
            if info is None:
                self.position = n + 1
            yield sample
            n += nw

    # ---- resuming ----------------------------------------------------------------------------------------------
    def _state(self, position: int) -> dict:
        return {"seed": self.seed, "position": position, "rank": self.rank, "world_size": self.world_size}

    def state_dict(self) -> dict[str, Any]:
        """JSON-able position: ``{"seed", "position", "rank", "world_size"}``."""
        return self._state(self.position)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue the stream at ``state["position"]``.

        Raises:
            ConfigError: the state belongs to another seed, rank or world size (another stream).
        """
        mine = self._state(state.get("position", -1))
        if any(state.get(k) != mine[k] for k in ("seed", "rank", "world_size")) or int(state["position"]) < 0:
            raise ConfigError(f"ArchDataset state {state} does not match this dataset (seed={self.seed}, "
                              f"rank={self.rank}, world_size={self.world_size})")
        self.position = int(state["position"])

    def __repr__(self) -> str:
        return (f"ArchDataset(families={self.families}, split={self.split!r}, seed={self.seed}, "
                f"rank={self.rank}/{self.world_size}, position={self.position})")
