"""``GHNConfig``: every size and switch of the hypernetwork, with named presets."""
from __future__ import annotations

import dataclasses
import math
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
    # Options measured in the fit benchmark (ledger E21), off by default: they change predictions, so a checkpoint
    # records them. centered_fan_in: the rows of a hidden layer's weight sum to zero over its hidden input channels
    # (no common offset of all predicted weights, which can silence ReLU/GELU layers for good: a GHN meta-trained on
    # one DARTS cell stuck at chance without it). output_gain: the layers writing the model's output start at this
    # fraction of their fan-in-scaled size (full size gives first losses of 5-14 nats).
    centered_fan_in: bool = False
    output_gain: float = 1.0
    # whitened_codes: the fixed codes of a width-n hidden space replaced by the nearest ones with a flat spectrum
    # (raw Fourier codes are ill-conditioned when n ~ basis: a width-64 layer got ~49 of 64 usable directions);
    # measured on the LM ceiling (ledger E23). Off by default: it changes predictions.
    whitened_codes: bool = False
    # depth_code: a fixed sinusoidal code of the node's position in the graph, times this, added to the decoder's
    # input (0: off). Without it the same tensor of repeated blocks decodes almost alike (cos 0.94-0.999 between
    # the q_proj of layers 0-2 of a Llama): measured on the LM ceiling (ledger E23). Changes predictions.
    depth_code: float = 0.0
    # fused_blocks: a fused q/k/v projection (3x as many rows as columns, feeding attention) decoded as three blocks,
    # each with its own row factor on the codes of its rows' index within the block: one shared factor tied q, k
    # and v to one fixed bilinear form and gave v's channels other codes than the output projection's columns
    # (a GPT-2 meta-trained alone used no context at all: ledger E23). Changes predictions.
    fused_blocks: bool = False
    # position_codes: > 0 gives the rows of a position table (an embedding with fewer rows than the token table
    # beside it: GPT-2's wpe) their own codes, sinusoids of the position plus a learned table of this many rows.
    # 0: they share the token codes (position i = token i), and a GHN meta-trained on one GPT-2 used no context.
    position_codes: int = 0
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
        """Check every field's type and range (config.json is user-editable: a bad value must fail here, naming the
        field, not later in a way that blames the model)."""
        def bad(name: str, want: str) -> ConfigError:
            return ConfigError(f"GHNConfig.{name} must be {want}, got {getattr(self, name)!r}")

        for name in ("hidden_dim", "num_layers", "num_heads", "max_hops", "basis", "rank", "decoder_hidden",
                     "ffn_ratio", "max_degree"):
            if not (_is_int(getattr(self, name)) and getattr(self, name) >= 1):
                raise bad(name, "a positive integer")
        if self.hidden_dim % self.num_heads:
            raise ConfigError(f"GHNConfig.hidden_dim ({self.hidden_dim}) must be divisible by num_heads "
                              f"({self.num_heads})")
        if not (_is_number(self.dropout) and 0 <= self.dropout < 1):
            raise bad("dropout", "a number in [0, 1)")
        if not (_is_int(self.code_seed) and self.code_seed >= 0):
            raise bad("code_seed", "a non-negative integer")
        if not (_is_number(self.code_gain) and self.code_gain > 0):
            raise bad("code_gain", "a finite number > 0")
        if not (_is_number(self.output_gain) and self.output_gain > 0):
            raise bad("output_gain", "a finite number > 0")
        if not (_is_number(self.depth_code) and self.depth_code >= 0):
            raise bad("depth_code", "a finite number >= 0")
        if not (_is_int(self.position_codes) and self.position_codes >= 0):
            raise bad("position_codes", "a non-negative integer")
        if not (_is_int(self.decoder_version) and 1 <= self.decoder_version <= DECODER_VERSION):
            raise bad("decoder_version", f"an integer from 1 to {DECODER_VERSION}")
        for name in ("pooled_flatten", "centered_fan_in", "whitened_codes", "fused_blocks", "trained"):
            if not isinstance(getattr(self, name), bool):
                raise bad(name, "true or false")
        if self.task not in (None, "image", "lm"):
            raise bad("task", "'image', 'lm' or None")
        for name in ("num_classes", "vocab_size"):
            if getattr(self, name) is not None and not (_is_int(getattr(self, name)) and getattr(self, name) >= 1):
                raise bad(name, "a positive integer or None")
        if self.input_shape is not None:
            dims = {"image": 3, "lm": 1}.get(self.task)  # [C, H, W] or [T]
            if (not isinstance(self.input_shape, (list, tuple)) or not self.input_shape
                    or not all(_is_int(n) and n >= 1 for n in self.input_shape)
                    or (dims is not None and len(self.input_shape) != dims)):
                want = {3: " [C, H, W]", 1: " [T]"}.get(dims, "")
                raise bad("input_shape", f"None or {dims or 'a list of'} positive integers{want} for task "
                          f"{self.task!r}")
            self.input_shape = list(self.input_shape)
        channels = self.input_shape[0] if self.task == "image" and self.input_shape else None
        for name, low in (("input_mean", -math.inf), ("input_std", 0.0)):
            value = getattr(self, name)
            if value is None:
                continue
            if (not isinstance(value, (list, tuple)) or not value
                    or not all(_is_number(v) and v > low for v in value)
                    or (channels is not None and len(value) != channels)):
                per = f"{channels} " if channels is not None else ""
                raise bad(name, f"None or a list of {per}finite numbers{' > 0' if low == 0 else ''} (one per input "
                          "channel)")
            setattr(self, name, list(value))
        if not (_is_number(self.branch_scale) and self.branch_scale >= 0):
            raise bad("branch_scale", "a finite number >= 0")
        if (not isinstance(self.data_codes, (list, tuple)) or len(self.data_codes) != 3
                or not all(_is_int(n) and n >= 0 for n in self.data_codes)):
            raise bad("data_codes", "three non-negative integers (input features, input channels, outputs)")
        self.data_codes = list(self.data_codes)
        if not isinstance(self.notes, dict):
            raise bad("notes", "a JSON object (a dict)")
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
        if not _is_int(version) or version < 1:
            raise ConfigError(f"GHNConfig.decoder_version must be an integer from 1 to {DECODER_VERSION}, got "
                              f"{version!r}; the config is corrupt: re-save or re-download the checkpoint")
        if version > DECODER_VERSION:
            raise ConfigError(f"decoder_version {version!r} is not one this ghn knows (1..{DECODER_VERSION}); the "
                              "checkpoint was written by a newer ghn: upgrade the package to load it")
        if version == 1:
            return {**d, **_V1_DECODER, "pooled_flatten": False, "decoder_version": 1}
        if version == 2:
            return {"pooled_flatten": False, **d}
        return dict(d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON true is not 1


def _is_number(value: Any) -> bool:
    """A finite int or float (JSON's NaN and 1e999 load as float nan / inf)."""
    return _is_int(value) or (isinstance(value, float) and math.isfinite(value))


PRESETS: dict[str, dict[str, Any]] = {
    # for tests: a few thousand parameters' worth of compute per graph
    "tiny": dict(hidden_dim=32, num_layers=2, num_heads=2, basis=32, rank=16, decoder_hidden=64,
                 data_codes=[2048, 16, 256]),
    # the default: ~0.4M parameters, trains on a 2-core CPU
    "small": dict(hidden_dim=64, num_layers=3, num_heads=4, basis=64, rank=32, decoder_hidden=128),
    # more capacity for GPU training
    "base": dict(hidden_dim=128, num_layers=6, num_heads=8, basis=128, rank=64, decoder_hidden=256),
}
