"""Shipped predictors: GHN checkpoints that come with a checkout of this repository, found by name from any cwd.

``checkpoints/<name>/`` sits next to the ``ghn`` package in a checkout (an editable install keeps the package there),
so ``GHN.from_pretrained("ghn-fmnist")`` and ``ghn-predict --ghn ghn-fmnist`` work from any directory. A wheel
installed elsewhere has no ``checkpoints/``; names then go to the Hub as before.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

from .errors import CheckpointError

__all__ = ["SHIPPED_DIR", "shipped_predictors", "resolve_predictor"]

#: where a checkout keeps its predictors (may not exist in an installed wheel)
SHIPPED_DIR = Path(__file__).resolve().parent.parent / "checkpoints"
_CONFIG = "config.json"


def shipped_predictors() -> list[str]:
    """Names of the predictors in :data:`SHIPPED_DIR` (directories with a ``config.json``), sorted."""
    if not SHIPPED_DIR.is_dir():
        return []
    return sorted(d.name for d in SHIPPED_DIR.iterdir() if (d / _CONFIG).is_file())


def resolve_predictor(name: str | os.PathLike) -> str:
    """What ``name`` means as a GHN location: a local directory, a shipped predictor, or a Hub repo id.

    * an existing path: itself (``from_pretrained`` checks what is inside);
    * ``<name>`` or ``checkpoints/<name>`` of a shipped predictor: its directory in this checkout, from any cwd;
    * a path that looks local (``./x``, ``../x``, ``/x``, ``~/x``, ``checkpoints/x``, more than one ``/``, or a first
      component that is a local directory) but does not exist: an error, never a Hub lookup;
    * anything else: unchanged (a Hub repo id such as ``org/name``).

    Raises:
        CheckpointError: a local-looking path that does not exist ("no such directory"), with the shipped names.
    """
    text = os.fspath(name)
    path = Path(text).expanduser()
    if path.exists():
        return str(path)
    shipped = shipped_predictors()
    parts = Path(text).parts
    short = parts[-1] if len(parts) == 2 and parts[0] == SHIPPED_DIR.name else text
    if short in shipped:
        return str(SHIPPED_DIR / short)
    if _looks_local(text):
        close = difflib.get_close_matches(path.name, shipped, n=1)
        hint = f"did you mean {close[0]}? " if close else ""
        names = f" or a shipped predictor ({', '.join(shipped)})" if shipped else ""
        raise CheckpointError(f"{text}: no such directory; {hint}pass a directory written by GHN.save_pretrained, "
                              f"a Hub repo id ('org/name'){names}")
    return text


def _looks_local(text: str) -> bool:
    if text.startswith(("/", "./", "../", "~", ".\\", "..\\")) or text in (".", "..") or text.endswith(("/", "\\")):
        return True
    parts = text.replace("\\", "/").split("/")
    # a Hub id is "name" or "org/name"; "checkpoints/x" or "runs/x" next to an existing folder is a path
    return len(parts) > 2 or (len(parts) == 2 and (parts[0] == SHIPPED_DIR.name or Path(parts[0]).is_dir()))
