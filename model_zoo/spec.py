"""ArchSpec: a JSON-serialisable, seeded description of one architecture.

An arch is never stored as a pickled module: it is a family name plus plain hyper-parameters (JSON types only)
and the seed it was sampled with. ``spec.build()`` turns it into an ``nn.Module`` through the family's builder
(see :mod:`model_zoo.families`), on any device, including ``"meta"`` (shapes only, no weight memory).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ghn.errors import ConfigError

from .families import get_family

__all__ = ["ArchSpec", "TASKS", "count_params"]

TASKS = ("image", "lm")
# Bump when the meaning of hparams changes, so graph caches keyed by spec_hash() go stale instead of lying.
SPEC_VERSION = 1


def count_params(model: nn.Module) -> int:
    """Number of distinct parameter values (tied parameters counted once), meta tensors included."""
    return sum(p.numel() for p in model.parameters())


def _canonical(obj: Any) -> str:
    # sort_keys + compact separators: one spelling per spec, so hashes agree across processes and machines.
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False)


@dataclass(frozen=True, eq=True)
class ArchSpec:
    """One architecture: ``family`` + ``hparams`` (JSON-able) + the ``seed`` it was sampled with.

    Args:
        family: a registered family name ("cnn", "vit", "gpt", "llama", "timm", "mlp", ...).
        hparams: the family builder's keyword arguments; normalised through JSON on construction, so tuples
            become lists and ``ArchSpec.from_json(spec.to_json()) == spec`` always holds.
        seed: the sampling seed; also seeds the default weight init of :meth:`build` and :meth:`example_inputs`.
        task: "image" (inputs ``(B, C, H, W)`` floats, logits ``(B, num_classes)``) or "lm" (inputs ``(B, T)``
            token ids, logits ``(B, T, vocab_size)``).

    Raises:
        ConfigError: unknown task, or hparams that are not plain JSON.

    Example:
        >>> spec = sample_arch("cnn", seed=0)
        >>> model = spec.build(device="meta")
        >>> ArchSpec.from_json(spec.to_json()) == spec
        True
    """

    family: str
    hparams: dict = field(default_factory=dict)
    seed: int = 0
    task: str = "image"

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ConfigError(f"ArchSpec.task must be one of {TASKS}, got {self.task!r}")
        try:
            hparams = json.loads(_canonical(self.hparams))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"ArchSpec.hparams of family {self.family!r} must be plain JSON: {e}") from e
        object.__setattr__(self, "hparams", hparams)
        object.__setattr__(self, "seed", int(self.seed))

    # ---- serialisation -------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """JSON-able dict (``version`` marks the hparam format)."""
        return {"version": SPEC_VERSION, "family": self.family, "hparams": self.hparams, "seed": self.seed,
                "task": self.task}

    def to_json(self) -> str:
        """Canonical JSON (sorted keys, no whitespace): equal specs give equal strings."""
        return _canonical(self.to_dict())

    @classmethod
    def from_dict(cls, d: dict) -> "ArchSpec":
        """Inverse of :meth:`to_dict`. Raises ConfigError on unknown keys or another spec version."""
        d = dict(d)
        version = d.pop("version", SPEC_VERSION)
        if version != SPEC_VERSION:
            raise ConfigError(f"ArchSpec version {version} is not supported (this model_zoo writes {SPEC_VERSION})")
        unknown = set(d) - {"family", "hparams", "seed", "task"}
        if unknown or "family" not in d:
            raise ConfigError(f"not an ArchSpec dict: unknown keys {sorted(unknown)} or no 'family'")
        return cls(**d)

    @classmethod
    def from_json(cls, s: str) -> "ArchSpec":
        """Inverse of :meth:`to_json`."""
        return cls.from_dict(json.loads(s))

    def spec_hash(self) -> str:
        """sha256 hex digest of :meth:`to_json`: the key of on-disk graph caches."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def arch_hash(self) -> str:
        """sha256 of family + hparams only (not the seed): equal for the same architecture sampled twice."""
        return hashlib.sha256(_canonical([self.family, self.hparams]).encode()).hexdigest()

    # ---- models and inputs ---------------------------------------------------------------------------------
    def build(self, device: str | torch.device = "cpu") -> nn.Module:
        """Build the model.

        On a real device the default init is seeded by ``seed`` (the global RNG state is restored afterwards),
        so two builds of one spec are identical. On ``"meta"`` no weight memory is allocated.

        Returns:
            nn.Module on ``device``, in train mode.
        Raises:
            ConfigError: unknown family or invalid hparams.
        """
        fam = get_family(self.family)
        device = torch.device(device)
        with torch.device(device):
            if device.type == "meta":
                return fam.build(self.hparams)
            # fork the generator of the target device too, so seeding leaves the caller's RNG streams alone
            cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
                if device.type == "cuda" else []
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(self.seed)
                return fam.build(self.hparams)

    def example_inputs(self, batch_size: int = 2, device: str | torch.device = "cpu") -> torch.Tensor:
        """Random inputs for one forward pass, deterministic given ``seed``.

        Shapes:
            image: float ``(B, C, H, W)`` with ``(C, H, W) = hparams["input_shape"]``;
            lm: long ``(B, T)`` token ids in ``[0, vocab_size)``, ``T = hparams["seq_len"]``.
        """
        g = torch.Generator().manual_seed(self.seed)
        if self.task == "image":
            x = torch.randn(batch_size, *self.hparams["input_shape"], generator=g)
        else:
            x = torch.randint(0, self.hparams["vocab_size"], (batch_size, self.hparams["seq_len"]), generator=g)
        return x.to(device)

    def num_params(self) -> int:
        """Parameter count (tied parameters once), from a meta build."""
        return count_params(self.build(device="meta"))

    def __repr__(self) -> str:
        return f"ArchSpec(family={self.family!r}, seed={self.seed}, task={self.task!r}, hparams={self.hparams})"
