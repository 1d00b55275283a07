"""``ghn-predict``: predict the parameters of a model and write them to safetensors.

Examples:
    ghn-predict --model timm:resnet18 --model-kwargs '{"num_classes": 10, "in_chans": 1}' \\
        --ghn checkpoints/ghn-fmnist --out resnet18.safetensors
    ghn-predict --model hf:gpt2 --model-kwargs '{"n_layer": 2}' --out gpt2-2l.safetensors
    ghn-predict --model hf:path/to/config.json --meta --out big.safetensors --max-shard-size 2GB
    ghn-predict --model torchvision:resnet50 --input-shape 3,224,224 --out r50.safetensors
"""
from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from .errors import ConfigError, GHNError

__all__ = ["main", "load_model", "save_sharded"]

logger = logging.getLogger("ghn")
DEFAULT_GHN = "checkpoints/ghn-fmnist"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ghn-predict", description=__doc__.split("\n")[0], allow_abbrev=False,
                                epilog=__doc__.split("Examples:")[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("model")
    g.add_argument("--model", required=True,
                   help="timm:<name>, torchvision:<name>, or hf:<config name (gpt2, bert-base-uncased, ...) or path to "
                        "a config.json / directory>")
    g.add_argument("--model-kwargs", default="{}", help="JSON dict passed to the model constructor / config")
    g.add_argument("--input-shape", default=None, type=_shape,
                   help="example input shape without batch, e.g. 3,224,224 (default: what the model declares)")
    g.add_argument("--meta", action="store_true",
                   help="build the model on the meta device (no weight memory) and stream predictions: for big models")
    g = p.add_argument_group("predictor")
    g.add_argument("--ghn", default=DEFAULT_GHN, help=f"GHN directory or Hub repo id (default: {DEFAULT_GHN})")
    g.add_argument("--device", default="cpu", help="device of the GHN (cpu, cuda, ...)")
    g.add_argument("--classifier", choices=("predict", "reinit"), default="predict")
    g = p.add_argument_group("output")
    g.add_argument("--out", required=True, help="output .safetensors file (shards: <stem>-00001-of-0000N.safetensors)")
    g.add_argument("--max-shard-size", default=5 * 10**9, type=_size, help="split the output into shards of at most this size")
    g.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return _run(args)
    except GHNError as e:
        print(f"ghn-predict: error: {e}", file=sys.stderr)
        return 1


def _run(args: argparse.Namespace) -> int:
    from .graph import build_graph
    from .hypernet import GHN
    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as e:
        raise ConfigError(f"--model-kwargs is not valid JSON ({e}); e.g. --model-kwargs '{{\"num_classes\": 10}}'")
    if not isinstance(kwargs, dict):
        raise ConfigError("--model-kwargs must be a JSON object, e.g. '{\"num_classes\": 10}'")
    ghn = GHN.from_pretrained(args.ghn, device=args.device)
    print(f"GHN: {args.ghn} ({sum(p.numel() for p in ghn.parameters()):,} parameters, "
          f"{'trained' if ghn.config.trained else 'UNTRAINED: predictions are a structured random init'})")
    t0 = time.perf_counter()
    model = load_model(args.model, kwargs, meta=args.meta)
    n_params = sum(p.numel() for p in model.parameters())
    example = None
    if args.input_shape:
        example = torch.randn(2, *args.input_shape)
    t1 = time.perf_counter()
    graph = build_graph(model, example, max_hops=ghn.config.max_hops)
    model = ghn.predict(model, graph=graph, classifier=args.classifier, device=args.device)
    t2 = time.perf_counter()
    pred_coverage = graph.coverage
    files = save_sharded(model, Path(args.out), args.max_shard_size)
    t3 = time.perf_counter()
    print(f"model: {args.model} ({type(model).__name__}, {n_params:,} parameters) built in {t1 - t0:.2f}s")
    print(f"predicted in {t2 - t1:.2f}s (graph build included): {pred_coverage}")
    print(f"wrote {', '.join(str(f) for f in files)} in {t3 - t2:.2f}s")
    return 0


def load_model(spec: str, kwargs: dict, meta: bool = False) -> nn.Module:
    """Build a model from ``timm:<name>``, ``torchvision:<name>`` or ``hf:<config name or path>``.

    Raises:
        ConfigError: unknown source prefix or model name (with close matches).
    """
    source, _, name = spec.partition(":")
    if not name:
        raise ConfigError(f"--model {spec!r} has no source prefix; use timm:<name>, torchvision:<name> or hf:<name>")
    if source not in ("timm", "torchvision", "hf"):
        raise ConfigError(f"unknown model source {source!r} in {spec!r}; use timm:, torchvision: or hf:")
    try:
        return _build(source, name, kwargs, meta)
    except (TypeError, ValueError) as e:
        if isinstance(e, GHNError):
            raise
        raise ConfigError(f"could not build {spec} with --model-kwargs {json.dumps(kwargs)}: {e}") from e


def _build(source: str, name: str, kwargs: dict, meta: bool) -> nn.Module:
    ctx = torch.device("meta") if meta else torch.device("cpu")
    if source == "timm":
        import timm
        if not timm.is_model(name):
            raise ConfigError(f"unknown timm model {name!r}{_suggest(name, timm.list_models())}")
        with ctx:
            return timm.create_model(name, pretrained=False, **kwargs)
    if source == "torchvision":
        import torchvision
        names = torchvision.models.list_models()
        if name not in names:
            raise ConfigError(f"unknown torchvision model {name!r}{_suggest(name, names)}")
        with ctx:
            return torchvision.models.get_model(name, weights=None, **kwargs)
    return _hf_model(name, kwargs, ctx)


def _hf_model(name: str, kwargs: dict, ctx: torch.device) -> nn.Module:
    import transformers
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    path = Path(name)
    if path.is_file():
        config_dict = json.loads(path.read_text())
        model_type = config_dict.pop("model_type", None)
        if model_type is None:
            raise ConfigError(f"{name} has no 'model_type'; it is not a transformers config.json")
        config = AutoConfig.for_model(model_type, **{**config_dict, **kwargs})
    elif path.is_dir():
        config = AutoConfig.from_pretrained(name, **kwargs)
    else:
        model_type = {"gpt2": "gpt2", "gpt2-medium": "gpt2", "gpt2-large": "gpt2", "gpt2-xl": "gpt2",
                      "bert-base-uncased": "bert", "llama": "llama", "bert": "bert", "mistral": "mistral",
                      "qwen2": "qwen2", "opt": "opt"}.get(name)
        sizes = {"gpt2-medium": dict(n_embd=1024, n_layer=24, n_head=16),
                 "gpt2-large": dict(n_embd=1280, n_layer=36, n_head=20),
                 "gpt2-xl": dict(n_embd=1600, n_layer=48, n_head=25)}.get(name, {})
        if model_type is None:
            known = sorted(transformers.CONFIG_MAPPING.keys())
            raise ConfigError(f"unknown transformers config {name!r} (offline: only built-in model types and local "
                              f"config files work){_suggest(name, known)}")
        config = AutoConfig.for_model(model_type, **{**sizes, **kwargs})
    with ctx:
        try:
            return AutoModelForCausalLM.from_config(config)
        except ValueError:
            return AutoModel.from_config(config)


def _suggest(name: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(name, choices, n=5, cutoff=0.6)
    return f"; did you mean {', '.join(close)}?" if close else ""


def _size(text: str) -> int:
    """argparse type: ``5GB``, ``100MB``, ``2048`` → bytes."""
    units = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "B": 1}
    t = text.strip().upper()
    try:
        for unit, factor in units.items():
            if t.endswith(unit):
                return int(float(t[:-len(unit)]) * factor)
        return int(t)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size; use e.g. 500MB or 5GB") from None


def _shape(text: str) -> tuple[int, ...]:
    """argparse type: ``3,224,224`` → (3, 224, 224)."""
    try:
        dims = tuple(int(s) for s in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a shape; use comma-separated sizes, e.g. 3,224,224") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be positive, e.g. 3,224,224")
    return dims


def save_sharded(model: nn.Module, out: Path, max_shard_bytes: int) -> list[Path]:
    """Write the model's parameters (canonical names) to one or more safetensors files, each written atomically.

    Shards are named ``<stem>-00001-of-00003.safetensors`` with an index ``<stem>.safetensors.index.json``.
    Each shard holds at most ``max_shard_bytes`` (except a single larger tensor), so peak extra memory is one shard.
    """
    from safetensors.torch import save_file
    out.parent.mkdir(parents=True, exist_ok=True)
    named = list(model.named_parameters())
    shards: list[list[tuple[str, torch.Tensor]]] = [[]]
    size = 0
    for name, p in named:
        nbytes = p.numel() * p.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, p))
        size += nbytes
    if len(shards) == 1:
        paths = [out]
    else:
        paths = [out.with_name(f"{out.stem}-{i + 1:05d}-of-{len(shards):05d}{out.suffix}") for i in range(len(shards))]
    for path, shard in zip(paths, shards):
        tmp = path.with_name(f".{path.name}.tmp")
        save_file({n: p.detach().contiguous().cpu() for n, p in shard}, str(tmp), metadata={"format": "pt"})
        os.replace(tmp, path)
    if len(paths) > 1:
        index = {"metadata": {"total_size": sum(p.numel() * p.element_size() for _, p in named)},
                 "weight_map": {n: paths[i].name for i, shard in enumerate(shards) for n, _ in shard}}
        index_path = out.with_name(out.name + ".index.json")
        index_path.write_text(json.dumps(index, indent=2))
        paths.append(index_path)
    return paths


if __name__ == "__main__":
    sys.exit(main())
