"""The train / held-out split of architectures.

An arch belongs to the held-out split when a hash of its *architecture* (family + hparams, not the sampling seed,
so an arch sampled twice lands on the same side) falls below ``heldout_fraction``:

    u = int(sha256(f"{SPLIT_SALT}/{seed}/" + canonical_json([family, hparams]))[:16], 16) / 2**64
    split = "heldout" if u < heldout_fraction else "train"

The split is a pure function of the spec: no list to store, identical on every machine, DataLoader worker and DDP
rank, and stable when new archs are sampled. ``ArchDataset(split="train")`` only yields train archs;
evaluation uses :func:`heldout_archs` (or any spec with ``split_of(spec) == "heldout"``), so the GHN never
meta-trains on an evaluation arch. Changing ``seed`` or ``heldout_fraction`` draws a different split: keep the
defaults unless you meta-train from scratch with the new values.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

from ghn.errors import ConfigError

from .registry import sample_arch
from .spec import ArchSpec

__all__ = ["split_of", "split_score", "heldout_archs", "HELDOUT_FRACTION", "SPLIT_SALT", "SPLITS"]

HELDOUT_FRACTION = 0.1  # GHN-2 held out 500 of DeepNets-1M's 1M archs; 10% keeps held-out sampling cheap
SPLIT_SALT = "model_zoo-split-v1"
SPLITS = ("train", "heldout")


def split_score(spec: ArchSpec, seed: int = 0) -> float:
    """The arch's uniform hash value in ``[0, 1)`` for split ``seed``."""
    key = json.dumps([spec.family, spec.hparams], sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(f"{SPLIT_SALT}/{seed}/{key}".encode()).hexdigest()
    return int(digest[:16], 16) / 2**64


def split_of(spec: ArchSpec, *, seed: int = 0, heldout_fraction: float = HELDOUT_FRACTION) -> str:
    """``"train"`` or ``"heldout"`` (see the module docstring for the rule)."""
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ConfigError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    return "heldout" if split_score(spec, seed) < heldout_fraction else "train"


def heldout_archs(n: int = 8, seed: int = 0, families: tuple[str, ...] = ("cnn", "vit"),
                  **constraints: Any) -> dict[str, ArchSpec]:
    """``n`` named held-out archs, alternating over ``families``; deterministic given ``(n, seed, constraints)``.

    Names are ``heldout_{family}_{sample_seed}``, so ``sample_arch(family, sample_seed, **constraints)`` rebuilds
    the spec. Defaults: the families' defaults (1x28x28 inputs, 10 classes, small models). The split itself always
    uses split seed 0 and the default fraction, the split ArchDataset trains on; ``seed`` only picks which
    held-out archs (different seeds give disjoint sets).

    Example:
        >>> for name, spec in heldout_archs(4).items():
        ...     model = spec.build()
    """
    if n < 0:
        raise ConfigError(f"n must be >= 0, got {n}")
    out: dict[str, ArchSpec] = {}
    sample_seed = seed * 1_000_003  # disjoint seed ranges per `seed` (up to a million candidates each)
    while len(out) < n:
        fam = families[len(out) % len(families)]
        spec = sample_arch(fam, sample_seed, **constraints)
        if split_of(spec) == "heldout":
            out[f"heldout_{fam}_{sample_seed}"] = spec
        sample_seed += 1
    return out
