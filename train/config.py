"""``TrainConfig``: every knob of a meta-training run, in one dataclass.

The same dataclass drives the command line (one flag per field, grouped as in timm's ``train.py``), the YAML
presets in ``train/configs/`` and the ``config.yaml`` saved with every checkpoint, so a run is reproducible from
its checkpoint alone. Precedence, lowest first: field defaults < the resumed checkpoint's config < ``--config``
YAML < explicit flags.
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ghn.config import GHNConfig
from ghn.errors import ConfigError

from .options import option
from .pool import check_pool

__all__ = ["TrainConfig", "load_yaml", "family_task", "unknown_key_message"]


def family_task(name: str) -> str:
    """The task ("image" or "lm") of a model_zoo family; ConfigError (with close names) if it is unknown."""
    from model_zoo import get_family  # late: model_zoo imports timm and transformers
    return get_family(name).task


def _f(default: Any, group: str, help: str, **kw: Any) -> Any:
    """A dataclass field carrying its CLI group and help text (read by :mod:`train.cli`)."""
    if isinstance(default, (list, dict)):
        kw["default_factory"] = lambda d=default: type(d)(d)
    else:
        kw["default"] = default
    return field(metadata={"group": group, "help": help}, **kw)


@dataclass
class TrainConfig:
    """A meta-training run: which archs, which data, which GHN, how to optimise, where to write.

    Defaults are a sensible CPU run on Fashion-MNIST; the presets in ``train/configs/`` are small diffs on them.
    """

    # ---- Run -------------------------------------------------------------------------------------------------------
    out: str = _f("runs/ghn", "Run", "output directory: checkpoints, metrics.jsonl, curves.png, config.yaml")
    steps: int = _f(1000, "Run", "total meta-training steps (one step = one meta-batch of archs)")
    seed: int = _f(0, "Run", "seed of the GHN init, the data order and the arch stream")
    device: str = _f("auto", "Run", "cpu, cuda, cuda:1, ... or auto (cuda when available)")
    resume: str | None = _f(None, "Run", "a run directory (its latest checkpoint) or one checkpoint directory")
    init_from: str | None = _f(None, "Run", "warm start: a GHN whose weights start this run (a run or checkpoint "
                               "directory, a released predictor's directory or a shipped one's name, e.g. "
                               "ghn-fmnist); optimizer, schedule and arch stream start afresh")
    ckpt_every: int = _f(100, "Run", "write a checkpoint every K steps (and always at the end)")
    keep_checkpoints: int = _f(2, "Run", "how many step checkpoints to keep (older ones are deleted; 0 keeps all)")
    log_every: int = _f(10, "Run", "append a line to metrics.jsonl every N steps")
    threads: int = _f(0, "Run", "torch CPU threads per process (0: leave torch's default)")
    # ---- Data ------------------------------------------------------------------------------------------------------
    task: str = _f("image", "Data", "image (classification; Fashion-MNIST by default) or lm (causal LM; fortunes "
                   "bytes by default)")
    dataset: str | None = _f(None, "Data", "fashion-mnist[:DIR], fortunes[:DIR], imagefolder:DIR, "
                             "torchvision:NAME:ROOT (on disk, never downloaded) or text:PATH (default: fashion-mnist "
                             "for image, fortunes for lm)")
    image_size: int | None = _f(None, "Data", "resize images to SIZExSIZE (default: their own size, when they all "
                                "agree)")
    tokenizer: str | None = _f(None, "Data", "lm: a local Hugging Face tokenizer directory (default: bytes, vocab "
                               "256)")
    data_dir: str | None = _f(None, "Data", "data directory (default: $GHN_FMNIST_DIR for task image, "
                              "$GHN_FORTUNES_DIR for lm, else the Debian package's)")
    batch_size: int = _f(64, "Data", "images (or text windows) per step, shared by all archs of the meta-batch")
    seq_len: int = _f(64, "Data", "lm: tokens per window (and the context length of sampled LMs)")
    workers: int = _f(0, "Data", "DataLoader processes that sample archs and build their graphs (0: in a thread)")
    prefetch: int = _f(2, "Data", "steps prepared ahead by the background prefetch thread")
    # ---- Zoo -------------------------------------------------------------------------------------------------------
    families: list[str] = _f(["cnn", "vit", "mlp"], "Zoo", "model_zoo families to sample (all of one task)")
    max_params: int = _f(100_000, "Zoo", "largest sampled arch (parameters)")
    zoo_constraints: dict = _f({}, "Zoo", "extra sampler constraints, e.g. '{max_depth: 4}' (YAML/JSON)")
    graph_cache: str | None = _f(None, "Zoo", "directory of the on-disk graph cache (shared across runs)")
    arch_pool: int = _f(0, "Zoo", "0: every step samples fresh archs; N: draw each step's archs from a pool of N whose "
                        "graphs and modules are cached (train/pool.py)")
    pool_refresh: int = _f(1, "Zoo", "with arch_pool: pool archs replaced by fresh ones per step (0: a fixed pool)")
    # ---- GHN -------------------------------------------------------------------------------------------------------
    ghn_preset: str = _f("small", "GHN", "GHNConfig preset: tiny, small or base")
    ghn_overrides: dict = _f({}, "GHN", "GHNConfig fields to override, e.g. '{num_layers: 2}' (YAML/JSON)")
    # ---- Optim -----------------------------------------------------------------------------------------------------
    meta_batch: int = _f(8, "Optim", "archs per step (per process)")
    lr: float = _f(1e-3, "Optim", "peak AdamW learning rate")
    weight_decay: float = _f(1e-2, "Optim", "AdamW weight decay")
    warmup_steps: int = _f(50, "Optim", "linear warm-up steps before the cosine decay")
    min_lr_ratio: float = _f(0.05, "Optim", "final learning rate as a fraction of lr")
    grad_clip: float = _f(5.0, "Optim", "clip the GHN's gradient norm to this (0: no clipping)")
    gamma: float = _f(3e-5, "Optim", "weight of the predicted-parameter norm penalty (GHN-3: sum of ||W||_F)")
    loss_clip: float = _f(10.0, "Optim", "an arch's task loss above this is scaled down to it (0: never)")
    amp: bool = _f(False, "Optim", "bf16 autocast for the graph encoder and the archs (decoder stays fp32)")
    # ---- Eval ------------------------------------------------------------------------------------------------------
    eval_every: int = _f(0, "Eval", "zero-shot evaluation on held-out archs every N steps (0: only at the end)")
    eval_archs: int = _f(0, "Eval", "held-out archs to evaluate (0: no evaluation)")
    eval_images: int = _f(2000, "Eval", "test images (a prefix of the 10k test set) per evaluation")

    def __post_init__(self) -> None:
        self.validate()

    # ---- checks ------------------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise :class:`ConfigError` for a value no run can use (types are checked by :meth:`from_dict`)."""
        positive = ("steps", "ckpt_every", "log_every", "batch_size", "seq_len", "meta_batch", "max_params",
                    "prefetch", "eval_images")
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("keep_checkpoints", "threads", "workers", "warmup_steps", "eval_every", "eval_archs",
                     "weight_decay", "grad_clip", "gamma", "loss_clip", "arch_pool", "pool_refresh"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0 or not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"need lr > 0 and 0 <= min_lr_ratio <= 1, got lr={self.lr}, "
                              f"min_lr_ratio={self.min_lr_ratio}")
        if self.task not in ("image", "lm"):
            raise ConfigError(f"task must be 'image' or 'lm', got {self.task!r}")
        if self.arch_pool:
            check_pool(self.arch_pool, self.pool_refresh, self.meta_batch)
        if self.arch_pool and self.workers:
            raise ConfigError("arch_pool builds the few new graphs in the prefetch thread; set workers: 0")
        self._validate_data()
        if not self.families:
            raise ConfigError("families is empty; name at least one model_zoo family, e.g. families: [cnn, mlp]")
        wrong = [f for f in self.families if family_task(f) != self.task]
        if wrong:
            # One shared data batch per step means one task per run.
            raise ConfigError(f"families {wrong} do not fit task {self.task!r} (image: cnn, vit, mlp, timm; "
                              "lm: gpt, llama, nanolm)")
        self._validate_zoo_constraints()
        # The GHN's sizes now, not when the run builds it: a typo in ghn_overrides must stop the command before it
        # prints the resolved config or touches --out (GHNConfig's message names the field and the known ones).
        GHNConfig.preset(self.ghn_preset, **self.ghn_overrides)

    def _validate_zoo_constraints(self) -> None:
        """Each key must be a constraint the samplers it applies to take, and each per-family entry a family this
        run trains: a typo would otherwise fail only after the run has started, and another family's entry would
        be ignored. Forms: shared by every family (``{max_depth: 4}``) or per family (``{cnn: {max_nodes: 2}}``)."""
        from model_zoo import get_family, list_families
        known = list_families()

        def takes(family: str) -> list[str] | None:  # None: any keyword
            params = inspect.signature(get_family(family).sample).parameters.values()
            if any(p.kind == p.VAR_KEYWORD for p in params):
                return None
            return [p.name for p in params if p.name != "rng"]

        def hint(key: str, names: list[str]) -> str:
            close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
            return f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""

        def check(family: str, constraints: dict, shared: bool) -> None:
            valid = takes(family)
            for key in constraints:
                if valid is not None and key not in valid:
                    others = [f for f in self.families if shared and key in (takes(f) or [key])]
                    per = (f"; shared keys apply to every family, so give it per family: {{{others[0]}: {{{key}: "
                           "...}}" if others else "")
                    raise ConfigError(f"unknown zoo_constraints key {key!r} for family {family!r}"
                                      f"{hint(str(key), valid)} ({family} takes {', '.join(valid)}){per}")

        extra = self.zoo_constraints
        if not any(k in known for k in extra):  # shared by all families
            for family in self.families:
                check(family, extra, shared=True)
            return
        for key, value in extra.items():
            if key not in known:
                names = known + sorted({n for f in known for n in takes(f) or []})
                raise ConfigError(f"zoo_constraints mixes per-family entries with {key!r}, which is not a model_zoo "
                                  f"family{hint(str(key), names)} (families: {', '.join(known)})")
            if key not in self.families:
                raise ConfigError(f"zoo_constraints[{key!r}] is for a family that is not trained (families: "
                                  f"{self.families}); remove it, or add {key!r} to families")
            if not isinstance(value, dict):
                raise ConfigError(f"zoo_constraints[{key!r}] must be a mapping of sampler constraints, e.g. "
                                  f"{{max_depth: 4}}, got {value!r}")
            check(key, value, shared=False)

    def _validate_data(self) -> None:
        """The dataset spec's form and task (the data itself is checked when it is opened)."""
        from .datasets import DATASET_TASKS, parse_dataset
        if self.dataset is not None:
            kind, _ = parse_dataset(self.dataset)
            task = DATASET_TASKS[kind]
            if task not in (None, self.task):
                families = ["gpt", "llama"] if task == "lm" else ["cnn", "vit", "mlp"]
                fix = f"{option('task', task)} {option('families', families)}"
                raise ConfigError(f"dataset {self.dataset!r} is {'text' if task == 'lm' else 'images'}, but the task "
                                  f"is {self.task!r}; add {fix}")
        if self.image_size is not None and (self.image_size < 1 or self.task != "image"):
            raise ConfigError(f"{option('image_size')} must be >= 1 and is for {option('task', 'image')}, got "
                              f"{self.image_size} (task {self.task!r})")
        if self.tokenizer is not None and self.task != "lm":
            raise ConfigError(f"{option('tokenizer')} is for language models: add {option('task', 'lm')} "
                              f"{option('families', ['gpt', 'llama'])}, or drop it")

    # ---- (de)serialisation -------------------------------------------------------------------------------------
    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, d: dict[str, Any], base: TrainConfig | None = None, source: str = "config") -> TrainConfig:
        """``base`` (default: the defaults) with the keys of ``d`` replaced, after checking names and types.

        Raises:
            ConfigError: an unknown key (the message names the closest known keys) or a value of the wrong type.
        """
        if not isinstance(d, dict):
            raise ConfigError(f"{source} must be a mapping of config keys, got {type(d).__name__}")
        names = cls.field_names()
        hints = typing.get_type_hints(cls)
        values = dataclasses.asdict(base) if base is not None else {}
        for key, value in d.items():
            if key not in names:
                raise ConfigError(unknown_key_message(str(key), names, source))
            values[key] = _check_type(key, value, hints[key], source)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def unknown_key_message(key: str, names: list[str], source: str, what: str = "key") -> str:
    """"unknown key 'lrr' in run.yaml; did you mean 'lr'? ..." (the closest names by difflib)."""
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown {what} {key!r} in {source}{hint} (`python -m train --help` lists them all)"


def _check_type(key: str, value: Any, hint: Any, source: str) -> Any:
    """``value`` if it fits the annotation ``hint`` (ints are accepted for floats); else ConfigError."""
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for t in allowed:
        origin = typing.get_origin(t) or t
        if t is type(None) and value is None:
            return None
        if origin is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if origin is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if origin in (str, bool, dict) and isinstance(value, origin):
            return value
        if origin is list and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return list(value)
    names = " or ".join("null" if t is type(None) else getattr(typing.get_origin(t) or t, "__name__", str(t))
                        for t in allowed)
    raise ConfigError(f"{source}: {key} must be {names}, got {value!r} ({type(value).__name__})")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML file (empty file: ``{}``).

    Raises:
        ConfigError: the file is missing, is not valid YAML, or is not a mapping.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {p} does not exist; presets are in train/configs/") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of config keys (key: value lines), got {type(data).__name__}")
    return data
