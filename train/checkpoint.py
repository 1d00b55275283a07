"""Training checkpoints: safetensors + JSON/YAML only, written atomically, enough to resume bit-exactly.

Layout of a run directory::

    out/
      latest.json                 {"step": 300, "dir": "ckpt-0000300"}: the newest complete checkpoint
      ckpt-0000300/
        config.json               GHN config     } Hub layout (GHN.save_pretrained):
        model.safetensors         GHN weights    } GHN.from_pretrained("out/ckpt-0000300") works
        README.md                 model card     }
        train_state.safetensors   optimizer moments, RNG state of every rank
        train_state.json          step, optimizer hyper-parameters, scheduler, arch-stream position of every rank,
                                  counters, git hash
        config.yaml               the resolved TrainConfig
      metrics.jsonl, curves.png, config.yaml

Atomicity: a checkpoint is assembled in a hidden temporary directory, every file flushed, and the directory is
renamed to ``ckpt-<step>``; only then is ``latest.json`` replaced (temporary file + ``os.replace``). A process
killed at any instant leaves ``latest.json`` pointing to a complete checkpoint (or absent; a complete checkpoint
newer than it is found too); leftovers of an interrupted save are hidden ``.ckpt-*.tmp*`` directories, removed by
the next run. A checkpoint directory, once written, is never written into or replaced.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ghn import GHN
from ghn.errors import CheckpointError, ConfigError

from .options import option

__all__ = ["Checkpoint", "save_checkpoint", "load_checkpoint", "find_checkpoint", "atomic_write_text",
           "optimizer_state", "load_optimizer_state", "clean_partial_saves", "git_hash", "check_run_dir",
           "checkpoint_step", "ghn_location", "LATEST"]

logger = logging.getLogger(__name__)

LATEST = "latest.json"
STATE_JSON = "train_state.json"
STATE_TENSORS = "train_state.safetensors"
CONFIG_YAML = "config.yaml"
PREFIX = "ckpt-"


@dataclass
class Checkpoint:
    """A loaded checkpoint: its directory, the JSON state and the tensors of ``train_state.safetensors``."""

    path: Path
    state: dict[str, Any]
    tensors: dict[str, torch.Tensor]

    @property
    def step(self) -> int:
        return int(self.state["step"])


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a flushed temporary file and ``os.replace``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def git_hash() -> str | None:
    """The commit of the source tree this package runs from (None outside a git checkout)."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


# ---- optimizer state <-> (tensors, JSON) ---------------------------------------------------------------------------
def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split ``opt.state_dict()`` into tensors (``optim.<param id>.<key>``) and the JSON-able rest."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"optim.{pid}.{k}"] = v.detach().cpu().contiguous()
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`optimizer_state`."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("optim."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = t
    for name, v in meta.get("scalars", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    groups = [dict(g, betas=tuple(g["betas"])) if "betas" in g else g for g in meta["param_groups"]]
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"optimizer state does not fit this GHN ({e}); resume with the same GHN config") from e


# ---- save ----------------------------------------------------------------------------------------------------------
def save_checkpoint(run_dir: str | os.PathLike, step: int, ghn: GHN, state: dict[str, Any],
                    tensors: dict[str, torch.Tensor], config_yaml: str, keep: int = 2) -> Path:
    """Write ``run_dir/ckpt-<step>`` atomically, point ``latest.json`` at it, delete older checkpoints.

    Args:
        state: JSON-able training state (``step`` is added).
        tensors: training-state tensors (optimizer moments, RNG states).
        config_yaml: the resolved TrainConfig as YAML.
        keep: keep this many newest checkpoints (0: all).

    Returns:
        the checkpoint directory.

    Raises:
        CheckpointError: ``run_dir/ckpt-<step>`` already exists (checkpoints are never overwritten).
    """
    run = Path(run_dir)
    run.mkdir(parents=True, exist_ok=True)
    name = f"{PREFIX}{step:07d}"
    final = run / name
    if final.exists():  # it belongs to a run that got there first: replacing it would lose that state
        raise CheckpointError(f"{final} already exists; a checkpoint directory is never written into again — "
                              f"resume from it, or write this run to a new {option('out')} directory")
    tmp = Path(tempfile.mkdtemp(dir=run, prefix=f".{name}.tmp"))
    try:
        ghn.save_pretrained(tmp)  # config.json + model.safetensors + README.md, each written atomically
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / STATE_TENSORS),
                  metadata={"format": "pt", "library": "ghn-train"})
        _fsync(tmp / STATE_TENSORS)
        os.chmod(tmp / STATE_TENSORS, 0o644)
        atomic_write_text(tmp / STATE_JSON, json.dumps({**state, "step": step}, indent=1, allow_nan=False))
        atomic_write_text(tmp / CONFIG_YAML, config_yaml)
        os.chmod(tmp, 0o755)
        os.rename(tmp, final)  # not os.replace: never over a checkpoint that appeared meanwhile
        _fsync(run)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    atomic_write_text(run / LATEST, json.dumps({"step": step, "dir": name}))
    if keep:
        for old_ckpt in sorted(run.glob(f"{PREFIX}[0-9]*"))[:-keep]:
            if old_ckpt.name != name:
                shutil.rmtree(old_ckpt, ignore_errors=True)
    return final


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_partial_saves(run_dir: str | os.PathLike) -> None:
    """Remove hidden leftovers of saves that were interrupted (they are never referenced by ``latest.json``)."""
    for tmp in Path(run_dir).glob(f".{PREFIX}*.tmp*"):
        shutil.rmtree(tmp, ignore_errors=True)


# ---- load ----------------------------------------------------------------------------------------------------------
def checkpoint_step(path: Path) -> int | None:
    """The step of a ``ckpt-<step>`` directory name (None for any other name)."""
    m = re.fullmatch(rf"{PREFIX}(\d+)", path.name)
    return int(m.group(1)) if m else None


def find_checkpoint(path: str | os.PathLike) -> Path:
    """The checkpoint directory that ``path`` names: a checkpoint itself, or a run directory (its latest).

    The latest of a run is what ``latest.json`` points to, or a newer complete checkpoint: a save killed between
    renaming its directory into place and updating ``latest.json`` leaves one.

    Raises:
        CheckpointError: ``path`` is neither.
    """
    p = Path(path)
    if (p / STATE_JSON).is_file():
        return p
    if (p / LATEST).is_file():
        try:
            latest = json.loads((p / LATEST).read_text())
            ckpt = p / latest["dir"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{p / LATEST} is not a valid pointer ({e}); resume from a ckpt-* directory "
                                  "instead") from None
        if not (ckpt / STATE_JSON).is_file():
            raise CheckpointError(f"{p / LATEST} points to {ckpt}, which is not a complete checkpoint")
        newer = [c for c in p.glob(f"{PREFIX}[0-9]*") if (c / STATE_JSON).is_file()
                 and (checkpoint_step(c) or -1) > (checkpoint_step(ckpt) or -1)]
        if newer:
            ckpt = max(newer, key=checkpoint_step)
            logger.info("%s points to an older checkpoint than %s (a save was interrupted): using %s", p / LATEST,
                        ckpt.name, ckpt.name)
        return ckpt
    found = sorted(p.glob(f"{PREFIX}[0-9]*")) if p.is_dir() else []
    hint = f"; checkpoints there: {', '.join(c.name for c in found)}" if found else ""
    raise CheckpointError(f"{p} is neither a run directory (with {LATEST}) nor a checkpoint directory (with "
                          f"{STATE_JSON}){hint}")


def ghn_location(name: str | os.PathLike) -> str:
    """What ``name`` means as a GHN to load: a training run directory (with ``latest.json``) means its newest
    checkpoint; anything else is for ``GHN.from_pretrained`` unchanged (a GHN or checkpoint directory, a shipped
    predictor's name such as ``ghn-fmnist``, a Hub repo id), which says what is wrong with it.

    The one reading of ``--ghn`` (``python -m train.evaluate``) and ``--init-from`` (``python -m train``).

    Raises:
        CheckpointError: a run directory whose ``latest.json`` points nowhere.
    """
    return str(find_checkpoint(name)) if (Path(name) / LATEST).is_file() else os.fspath(name)


def check_run_dir(out: str | os.PathLike, resumed: Checkpoint | None, steps: int) -> None:
    """Raise unless a run that ends at ``steps`` can write into ``out`` without touching a checkpoint of its own past
    or of another run.

    Raises:
        ConfigError: ``steps`` is below the resumed step; ``out`` holds another run; or ``out`` is the resumed run's
            directory and has checkpoints after the resumed one (continuing would overwrite them).
    """
    out = Path(out)
    if resumed is not None and resumed.step > steps:
        raise ConfigError(f"run is at step {resumed.step}, config asks for {steps} ({resumed.path}); steps is the "
                          f"total number of steps, so pass {option('steps', resumed.step)} or more to continue it (or "
                          f"resume an earlier checkpoint into a new {option('out')})")
    existing = sorted(c for c in out.glob(f"{PREFIX}[0-9]*") if checkpoint_step(c) is not None)
    if resumed is None or resumed.path.parent.resolve() != out.resolve():
        if existing or (out / LATEST).exists():
            raise ConfigError(f"{out} already holds a run ({LATEST} or ckpt-* directories); continue it with "
                              f"{option('resume', str(out))}, or write to a new {option('out')} directory")
        return
    later = [c.name for c in existing if checkpoint_step(c) > resumed.step]
    if later:
        raise ConfigError(f"{out} has checkpoints after {resumed.path.name} ({', '.join(later)}), which continuing "
                          "from it in place would overwrite; resume the newest "
                          f"({option('resume', str(out))}), or pass a new {option('out')} to branch off from it")


def load_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Read the training state of the checkpoint ``path`` names (see :func:`find_checkpoint`).

    The GHN itself is loaded with ``GHN.from_pretrained(checkpoint.path)``.

    Raises:
        CheckpointError: missing, unreadable or corrupt files.
    """
    ckpt = find_checkpoint(path)
    try:
        state = json.loads((ckpt / STATE_JSON).read_text())
        int(state["step"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{ckpt / STATE_JSON} is unreadable or incomplete ({e})") from None
    try:
        tensors = load_file(str(ckpt / STATE_TENSORS))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{ckpt / STATE_TENSORS} is not a readable safetensors file ({e})") from None
    return Checkpoint(ckpt, state, tensors)
