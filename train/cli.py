"""``python -m train`` / ``ghn-train``: meta-train a GHN on real data.

Examples:
    # the CI smoke run: a tiny GHN, tiny archs, a few steps on CPU (well under a minute)
    python -m train --config train/configs/tiny_cpu.yaml --out runs/tiny

    # the shipped Fashion-MNIST predictor (about 40 minutes on 2 CPU cores)
    python -m train --config train/configs/fmnist.yaml --out runs/fmnist

    # continue a run (its config is read from the checkpoint; flags still override, e.g. more steps)
    python -m train --resume runs/fmnist --steps 3000

    # two processes (gloo on CPU, nccl on CUDA); only rank 0 writes
    torchrun --nproc_per_node 2 -m train --config train/configs/tiny_cpu.yaml --out runs/ddp

    # byte-level language models on the fortunes text
    python -m train --config train/configs/fortunes_lm.yaml --out runs/lm

    # your own data: a folder of class subfolders, a torchvision dataset on disk, a text corpus (+ a tokenizer)
    python -m train --config train/configs/tiny_cpu.yaml --dataset imagefolder:~/photos --image-size 32 --out runs/p
    python -m train --config train/configs/fmnist.yaml --dataset torchvision:CIFAR10:~/data/cifar10 --out runs/c10
    python -m train --config train/configs/fortunes_lm.yaml --dataset text:corpus.txt --tokenizer ~/tok --out runs/t

    # several machines: the same command on each (--node-rank 0, 1, ...), data at the same path everywhere
    torchrun --nnodes 2 --node-rank 0 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST0:29500 \\
        -m train --config train/configs/fmnist.yaml --dataset torchvision:CIFAR10:/data/cifar10 --out runs/c10

Precedence: defaults < the resumed checkpoint's config.yaml < --config FILE.yaml < flags.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import shlex
import sys
import types
import typing
from typing import Any

import yaml

from ghn.errors import ConfigError, GHNError

from .checkpoint import CONFIG_YAML, find_checkpoint
from .config import TrainConfig, load_yaml, unknown_key_message
from .datasets import DATASET_TASKS, parse_dataset

__all__ = ["main", "build_parser", "resolve_config"]

GROUPS = ("Run", "Data", "Zoo", "GHN", "Optim", "Eval")
LM_FAMILIES = ("gpt", "llama")  # what --task lm samples when no families are named


def _yaml_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise argparse.ArgumentTypeError(f"not valid YAML/JSON: {e}") from None


def _flag_type(hint: Any) -> type:
    """The Python type a flag parses to: ``int`` for ``int``, ``str`` for ``str | None``, ``list`` for ``list[str]``."""
    if isinstance(hint, types.UnionType):
        hint = next(t for t in typing.get_args(hint) if t is not type(None))
    return typing.get_origin(hint) or hint


def build_parser() -> argparse.ArgumentParser:
    """One flag per :class:`TrainConfig` field (``meta_batch`` → ``--meta-batch``), grouped like the dataclass.

    Every flag defaults to "not given" (``argparse.SUPPRESS``), so only flags typed on the command line override
    the YAML and checkpoint values.
    """
    p = argparse.ArgumentParser(prog="python -m train", description=__doc__.split("\n")[0], allow_abbrev=False,
                                epilog="Examples:" + __doc__.split("Examples:")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="FILE.yaml", help="YAML file of config keys (presets: train/configs/)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    groups = {g: p.add_argument_group(g) for g in GROUPS}
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        help_ = f"{f.metadata['help']} (default: {getattr(defaults, f.name)!r})"
        kw: dict[str, Any] = dict(default=argparse.SUPPRESS, help=help_, dest=f.name)
        origin = _flag_type(hints[f.name])
        if origin is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif origin is list:
            kw["nargs"] = "+"
        elif origin is dict:
            kw.update(type=_yaml_value, metavar="YAML")
        else:
            kw["type"] = origin
        groups[f.metadata["group"]].add_argument(flag, **kw)
    return p


def resolve_config(argv: list[str] | None = None) -> tuple[TrainConfig, argparse.Namespace]:
    """Parse the command line into a :class:`TrainConfig` (see the module docstring for precedence).

    Raises:
        ConfigError: unknown flags or YAML keys (with close matches), wrong types, invalid values, or a
            ``--resume`` path that is not a checkpoint.
    """
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        flags = [a.split("=", 1)[0] for a in unknown if a.startswith("-")]
        known = [s for a in parser._actions for s in a.option_strings]
        raise ConfigError(unknown_key_message(flags[0] if flags else unknown[0], known, "the command line", "flag"))
    given = {k: v for k, v in vars(args).items() if k not in ("config", "print_config")}
    cfg = TrainConfig()
    resume = given.get("resume")
    if resume is None and args.config:
        resume = load_yaml(args.config).get("resume")
    if resume:
        ckpt = find_checkpoint(resume)  # CheckpointError if it is not one
        saved = load_yaml(ckpt / CONFIG_YAML)
        # The checkpoint's run continues where it is, unless --out (or the YAML) says otherwise.
        cfg = TrainConfig.from_dict({**saved, "resume": str(resume), "out": str(ckpt.parent)},
                                    source=str(ckpt / CONFIG_YAML))
    yaml_d = load_yaml(args.config) if args.config else {}
    task, extra = _task_defaults(yaml_d, given) if not resume else (None, {})
    if args.config:
        mine = yaml_d if yaml_d.get("task", task) != task else {**extra, **yaml_d}
        cfg = TrainConfig.from_dict(mine, base=cfg, source=args.config)
    cfg = TrainConfig.from_dict({**extra, **given}, base=cfg, source="the command line")
    return cfg, args


def _task_defaults(yaml_d: dict, given: dict) -> tuple[str | None, dict]:
    """``(task, keys to default)``: the task follows the dataset when neither the YAML nor the flags name one, and a
    language-model run samples the LM families when neither names families; so ``--dataset text:FILE`` alone (or
    ``--task lm``) trains language models."""
    layers = {**yaml_d, **given}
    task = layers.get("task")
    if task is None and isinstance(layers.get("dataset"), str):
        task = DATASET_TASKS.get(parse_dataset(layers["dataset"])[0])
    if task != "lm" or "families" in layers:
        return task, ({"task": task} if task and "task" not in layers else {})
    return task, {"task": "lm", "families": list(LM_FAMILIES)}


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m train`` and ``ghn-train``; returns the exit code (2: bad config, 1: failure)."""
    rank = int(os.environ.get("RANK", "0"))
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        cfg, args = resolve_config(argv)
    except GHNError as e:
        print(f"python -m train: error: {e}", file=sys.stderr)
        return 2
    if rank == 0:
        print("# resolved config\n" + cfg.to_yaml(), flush=True)
    if args.print_config:
        return 0
    from tqdm.contrib.logging import logging_redirect_tqdm

    from .loop import train
    command = "python -m train " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        with logging_redirect_tqdm():
            summary = train(cfg, command=command)
    except ConfigError as e:
        print(f"python -m train: error: {e}", file=sys.stderr)
        return 2
    except GHNError as e:
        print(f"python -m train: error: {e}", file=sys.stderr)
        return 1
    if rank == 0:
        print("# done\n" + yaml.safe_dump({k: (round(v, 5) if isinstance(v, float) else v)
                                           for k, v in summary.items()}, sort_keys=False), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
