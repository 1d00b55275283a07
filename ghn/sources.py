"""Models by name for the command line: ``timm:<name>``, ``torchvision:<name>``, ``hf:<name>``.

``hf:`` accepts, in this order:

* a local ``config.json`` (or a directory holding one);
* any transformers model type (``hf:t5``, ``hf:vit``, ``hf:llama``, ...: the 800-odd keys of
  ``transformers.CONFIG_MAPPING``), built from that type's default config (``AutoConfig.for_model``);
* a Hub-style name (``gpt2-large``, ``google-bert/bert-base-uncased``, ``org/name``) whose ``config.json`` is in the
  local Hugging Face cache, else downloaded unless ``HF_HUB_OFFLINE=1``; a few well-known names (``gpt2-medium``,
  ``gpt2-large``, ``gpt2-xl``, ``bert-base-uncased``) also work offline with an empty cache.

The head class is the one the config names (``architectures``); a bare model type gets the natural one: an
encoder-decoder its seq2seq LM (T5 → ``T5ForConditionalGeneration``), a decoder its causal LM, an image model its
classifier, an encoder (BERT, RoBERTa, ...) its base model, or its sequence classifier when ``num_labels`` is given.
Config keys from ``--model-kwargs`` are checked against the config class: a misspelled key is an error with close
names, never a silently ignored attribute.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
from pathlib import Path
from typing import Any, ContextManager

import torch
import torch.nn as nn

from .errors import ConfigError, GHNError
from .prediction import init_empty_weights

__all__ = ["SOURCES", "LIBRARIES", "load_model"]

SOURCES = ("timm", "torchvision", "hf")
#: the library each source builds its models with
LIBRARIES = {"timm": "timm", "torchvision": "torchvision", "hf": "transformers"}

#: Hub names whose config is a model type's default plus these fields (so they build offline, cache or not).
HF_PRESETS: dict[str, dict[str, Any]] = {
    "gpt2-medium": dict(model_type="gpt2", n_embd=1024, n_layer=24, n_head=16, architectures=["GPT2LMHeadModel"]),
    "gpt2-large": dict(model_type="gpt2", n_embd=1280, n_layer=36, n_head=20, architectures=["GPT2LMHeadModel"]),
    "gpt2-xl": dict(model_type="gpt2", n_embd=1600, n_layer=48, n_head=25, architectures=["GPT2LMHeadModel"]),
    "bert-base-uncased": dict(model_type="bert", architectures=["BertForMaskedLM"]),
}

# Keywords every transformers config accepts besides its own fields (PretrainedConfig.__post_init__ pops them).
_COMMON_CONFIG_KWARGS = frozenset({"num_labels", "torch_dtype", "attn_implementation", "experts_implementation",
                                   "rope_theta", "rope_scaling", "name_or_path", "output_attentions"})


def load_model(spec: str, kwargs: dict[str, Any], meta: bool = False) -> nn.Module:
    """Build the model ``spec`` names (``timm:<name>``, ``torchvision:<name>`` or ``hf:<name>``), untrained.

    Args:
        spec: source prefix and name.
        kwargs: constructor keywords (timm, torchvision) or config fields (hf).
        meta: parameters on the ``meta`` device (no weight memory), buffers computed for real
            (:func:`ghn.prediction.init_empty_weights`), so ``GHN.predict`` materialises exactly a CPU build.

    Raises:
        ConfigError: unknown source, name or keyword (with close matches), or a model that cannot be built.
    """
    source, _, name = spec.partition(":")
    if not name:
        raise ConfigError(f"--model {spec!r} has no source prefix; use timm:<name>, torchvision:<name> or hf:<name>")
    if source not in SOURCES:
        raise ConfigError(f"unknown model source {source!r} in {spec!r}; use timm:, torchvision: or hf:")
    try:
        return _build(source, name, kwargs, init_empty_weights() if meta else torch.device("cpu"))
    except GHNError:
        raise
    except ImportError as e:  # some transformers models need an extra package
        raise ConfigError(f"could not build {spec}: {e}") from e
    except (TypeError, ValueError, AttributeError, KeyError, RuntimeError, AssertionError) as e:
        raise ConfigError(f"could not build {spec} with --model-kwargs {json.dumps(kwargs)}: "
                          f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e


def _build(source: str, name: str, kwargs: dict, context: ContextManager) -> nn.Module:
    """Build under ``context``: ``torch.device("cpu")`` or :func:`init_empty_weights`."""
    if source == "timm":
        import timm
        if not timm.is_model(name):
            raise ConfigError(f"unknown timm model {name!r}{suggest(name, timm.list_models())}")
        with context:
            return timm.create_model(name, pretrained=False, **kwargs)
    if source == "torchvision":
        import torchvision
        names = torchvision.models.list_models()
        if name not in names:
            raise ConfigError(f"unknown torchvision model {name!r}{suggest(name, names)}")
        with context:
            return torchvision.models.get_model(name, weights=None, **kwargs)
    config = hf_config(name, kwargs)
    cls = hf_model_class(config, kwargs)
    with context:
        return cls._from_config(config)


def hf_config(name: str, kwargs: dict[str, Any]):
    """The transformers config ``hf:<name>`` stands for, with ``kwargs`` applied (checked against its class).

    Raises:
        ConfigError: unknown name or misspelled key (close matches), unreadable config file.
    """
    from transformers import AutoConfig, CONFIG_MAPPING
    config_dict = _hf_config_dict(name, CONFIG_MAPPING)
    model_type = config_dict.pop("model_type", None)
    if model_type not in CONFIG_MAPPING:
        raise ConfigError(f"hf:{name}: config has model_type {model_type!r}, which this transformers version does not "
                          f"know{suggest(str(model_type), list(CONFIG_MAPPING.keys()))}")
    check_config_kwargs(CONFIG_MAPPING[model_type], kwargs, f"hf:{name}")
    return AutoConfig.for_model(model_type, **{**config_dict, **kwargs})


def _hf_config_dict(name: str, mapping) -> dict[str, Any]:
    path = Path(name).expanduser()
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ConfigError(f"hf:{name}: cannot read {path} ({e})") from e
        if not isinstance(d, dict) or "model_type" not in d:
            raise ConfigError(f"hf:{name}: {path} has no 'model_type'; it is not a transformers config.json")
        return d
    if name.endswith(".json") or name.startswith(("/", "./", "../", "~")):
        raise ConfigError(f"hf:{name}: no such file or directory")
    if name in mapping:
        return {"model_type": name}
    cached = _hub_config_dict(name)
    if cached is not None:
        return cached
    if name in HF_PRESETS:
        return dict(HF_PRESETS[name])
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes", "on")
    where = "the local Hugging Face cache (HF_HUB_OFFLINE=1: nothing is downloaded)" if offline else \
        "the local Hugging Face cache or on the Hub"
    raise ConfigError(f"hf:{name} is not a transformers model type, a local config.json, or a model in {where}"
                      f"{suggest(name, [*mapping.keys(), *HF_PRESETS])}")


def _hub_config_dict(name: str) -> dict[str, Any] | None:
    """``config.json`` of Hub model ``name`` from the local cache, else from the Hub (unless offline); None if absent."""
    from transformers import PretrainedConfig
    for local_only in (True, False):
        try:
            d, _ = PretrainedConfig.get_config_dict(name, local_files_only=local_only)
            return d
        except (OSError, ValueError):  # not cached / not on the Hub / offline / not a valid repo id
            continue
    return None


def check_config_kwargs(config_cls: type, kwargs: dict[str, Any], what: str) -> None:
    """Raise if a key of ``kwargs`` is not something ``config_cls`` reads (transformers would store it silently).

    Raises:
        ConfigError: each unknown key, with the closest valid names.
    """
    valid = set(_COMMON_CONFIG_KWARGS) | set(getattr(config_cls, "attribute_map", {}))
    if dataclasses.is_dataclass(config_cls):
        valid |= {f.name for f in dataclasses.fields(config_cls)}
    valid |= {n for n in dir(config_cls) if not n.startswith("_") and isinstance(getattr(config_cls, n), property)}
    bad = [k for k in kwargs if k not in valid]
    if bad:
        try:  # attributes set in __init__ / __post_init__ (older, non-dataclass configs)
            valid |= {k for k in vars(config_cls()) if not k.startswith("_")}
        except Exception:  # noqa: BLE001 - only widens the check
            pass
        bad = [k for k in bad if k not in valid]
    if bad:
        names = sorted(valid)
        hints = "; ".join(f"{k!r}{suggest(k, names)}" for k in bad)
        raise ConfigError(f"{what}: --model-kwargs has keys that {config_cls.__name__} does not know: {hints} "
                          f"(transformers would ignore them silently)")


def hf_model_class(config, kwargs: dict[str, Any]) -> type:
    """The transformers class to build for ``config`` (see the module docstring)."""
    import transformers
    from transformers.models.auto import modeling_auto as auto
    for arch in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, arch, None)
        if cls is not None:
            return cls
    t = config.model_type
    seq2seq = next((m for m in (auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
                                auto.MODEL_FOR_SPEECH_SEQ_2_SEQ_MAPPING_NAMES) if t in m), None)
    if getattr(config, "is_encoder_decoder", False) and seq2seq is not None:
        table = seq2seq
    elif t in auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES:  # an encoder (its causal-LM class needs is_decoder=True)
        use_head = "num_labels" in kwargs and t in auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES
        table = auto.MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES if use_head else auto.MODEL_MAPPING_NAMES
    elif t in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        table = auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    elif t in auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES:
        table = auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    else:
        table = auto.MODEL_MAPPING_NAMES
    name = table.get(t) or auto.MODEL_MAPPING_NAMES.get(t)
    if isinstance(name, tuple | list):
        name = name[0]
    cls = getattr(transformers, name, None) if name else None
    if cls is None:
        raise ConfigError(f"transformers has no model class for model type {t!r} (it may be a sub-config of another "
                          "model, or need an extra package)")
    return cls


def suggest(name: str, choices: list[str]) -> str:
    """``"; did you mean a, b?"`` with the closest ``choices`` (``""`` if none is close)."""
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""
