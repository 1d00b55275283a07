"""``GHNConfig``: every size and switch of the hypernetwork, with named presets."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

__all__ = ["GHNConfig", "PRESETS", "DECODER_VERSION"]

# 1: fixed index codes only (checkpoints up to Dec 2026); 2: learned codes on the data-facing axes.
DECODER_VERSION = 3
# What a version-1 config means in today's fields: loading one gives exactly the decoder that wrote it.
_V1_DECODER = dict(data_codes=[0, 0, 0], code_gain=1.0)


@dataclass
class GHNConfig:
    """Sizes of a GHN. None of them depends on the widths of the models it predicts.

    The decoder writes every weight as ``W = Φ_out · U · V · Φ_inᵀ`` where ``Φ`` are fixed index codes of size
    ``basis`` for the rows/columns (any width, never repeating) and ``U`` (basis × rank), ``V`` (rank × basis) are
    produced per node; so ``A = Φ_out·U`` and ``B = V·Φ_inᵀ`` are the low-rank factors of LoGAH.
    """

    hidden_dim: int = 64  # width of node embeddings and of the Graphormer
    num_layers: int = 3  # Graphormer layers (message passing rounds over the whole graph)
    num_heads: int = 4  # attention heads; each gets its own shortest-path bias
    max_hops: int = 8  # shortest-path distances beyond this are "far" (one shared bias)
    max_degree: int = 16  # in/out degrees are clipped here for the centrality embedding
    ffn_ratio: int = 2  # Graphormer feed-forward width = ffn_ratio * hidden_dim
    dropout: float = 0.0  # attention/FFN dropout during meta-training
    basis: int = 64  # size of the row/column index code Φ; the "effective width" the GHN reasons in
    rank: int = 32  # rank r of the factors A (rows × r) and B (r × cols)
    decoder_hidden: int = 128  # width of the decoder's shared MLP trunk
    code_seed: int = 0  # seed of the fixed random frequencies of Φ (stored in the checkpoint as buffers)
    # Learned codes added to Φ on the data-facing axes, table sizes (input features/tokens, input channels of
    # convs, classes/vocabulary): these axes mean the same in every model of a task, so the GHN may learn what
    # index i there is (a linear classifier's pixels, an LM's bytes). Indices beyond a table use Φ alone.
    data_codes: list[int] = field(default_factory=lambda: [4096, 64, 1024])
    code_gain: float = 30.0  # learned codes are multiplied by it: their learning-rate multiplier under Adam
    decoder_version: int = DECODER_VERSION  # which decoder wrote a checkpoint (see GHNConfig.upgrade)
    # Decoder v3: a linear reading a flattened conv map (columns = channels x positions) is predicted on its
    # channels' codes and spread over the positions: global average pooling, then a linear (v1/v2: False, they
    # gave every column its own code, which breaks the channel correspondence with the conv that produced it)
    pooled_flatten: bool = True
    # Metadata about what the GHN was trained for (written to config.json; used by predict() defaults).
    num_classes: int | None = None  # classifier width seen in training (None: unknown / untrained)
    input_shape: list[int] | None = None  # one input: [C, H, W] for images ([1, 28, 28]: Fashion-MNIST), [T] for LMs
    task: str | None = None  # "image" (classifiers of input_shape images) or "lm" (LMs over vocab_size tokens)
    vocab_size: int | None = None  # lm: token vocabulary seen in training (256: bytes)
    input_mean: list[float] | None = None  # image: per-channel mean of pixel/255 that inputs are normalised with
    input_std: list[float] | None = None  # image: per-channel std; x = (pixel/255 - mean) / std
    # predict()'s default branch_scale: the gain ending each residual branch is multiplied by it after prediction
    # (a calibration measured for this predictor, set at release; 1.0 leaves predictions as decoded)
    branch_scale: float = 1.0
    trained: bool = False  # False for a randomly initialised GHN: predict() says so in its logs
    notes: dict[str, Any] = field(default_factory=dict)  # free-form provenance (data, steps, command)

    def __post_init__(self) -> None:
        for name in ("hidden_dim", "num_layers", "num_heads", "max_hops", "basis", "rank", "decoder_hidden",
                     "ffn_ratio", "max_degree"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"GHNConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"GHNConfig.hidden_dim ({self.hidden_dim}) must be divisible by num_heads "
                              f"({self.num_heads})")
        if self.task not in (None, "image", "lm"):
            raise ConfigError(f"GHNConfig.task must be 'image', 'lm' or None, got {self.task!r}")
        if (not isinstance(self.data_codes, (list, tuple)) or len(self.data_codes) != 3
                or not all(isinstance(n, int) and n >= 0 for n in self.data_codes)):
            raise ConfigError(f"GHNConfig.data_codes must be three non-negative integers (input features, input "
                              f"channels, outputs), got {self.data_codes!r}")
        self.data_codes = list(self.data_codes)
        if self.rank > self.basis:
            raise ConfigError(f"GHNConfig.rank ({self.rank}) cannot exceed basis ({self.basis}): the factors "
                              "would have more rank than the index codes can carry")

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> GHNConfig:
        """A named preset (``"tiny"``, ``"small"``, ``"base"``) with optional field overrides."""
        if name not in PRESETS:
            raise ConfigError(f"unknown GHN preset {name!r}; choose one of {', '.join(PRESETS)}")
        return cls.from_dict({**PRESETS[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GHNConfig:
        """Build from a dict, rejecting unknown keys (typos must not pass silently)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ConfigError(f"unknown GHNConfig field(s) {unknown}; known fields: {', '.join(sorted(known))}")
        return cls(**d)

    @classmethod
    def upgrade(cls, d: dict[str, Any]) -> dict[str, Any]:
        """A config dict as saved by any ghn version → today's fields, meaning the same decoder.

        Raises:
            ConfigError: the config comes from a newer, unknown decoder version (upgrade ghn to load it).
        """
        if not isinstance(d, dict):
            raise ConfigError(f"a GHN config is a JSON object, got {type(d).__name__}")
        version = d.get("decoder_version", 1)  # version-1 configs predate the field
        if not isinstance(version, int) or not 1 <= version <= DECODER_VERSION:
            raise ConfigError(f"decoder_version {version!r} is not one this ghn knows (1..{DECODER_VERSION}); the "
                              "checkpoint was written by a newer ghn: upgrade the package to load it")
        if version == 1:
            return {**d, **_V1_DECODER, "pooled_flatten": False, "decoder_version": 1}
        if version == 2:
            return {"pooled_flatten": False, **d}
        return dict(d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # for tests: a few thousand parameters' worth of compute per graph
    "tiny": dict(hidden_dim=32, num_layers=2, num_heads=2, basis=32, rank=16, decoder_hidden=64,
                 data_codes=[2048, 16, 256]),
    # the default: ~0.4M parameters, trains on a 2-core CPU
    "small": dict(hidden_dim=64, num_layers=3, num_heads=4, basis=64, rank=32, decoder_hidden=128),
    # more capacity for GPU training
    "base": dict(hidden_dim=128, num_layers=6, num_heads=8, basis=128, rank=64, decoder_hidden=256),
}
