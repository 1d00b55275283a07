"""``metrics.jsonl``: one JSON object per logged step, appended by rank 0, trimmed consistently on resume.

Each line is ``{"step": int, "time": unix seconds, <metric>: float | null, ...}``; non-finite values are written as
``null`` (strict JSON). A resumed run keeps the lines up to its checkpoint's step (a killed run may have logged
steps past its last checkpoint, which the resumed run will log again) and drops a torn last line.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from .checkpoint import atomic_write_text

__all__ = ["MetricsLog", "read_metrics", "METRICS", "CURVES"]

METRICS = "metrics.jsonl"
CURVES = "curves.png"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics file; unparsable lines (a write torn by a kill) are skipped."""
    records = []
    p = Path(path)
    if not p.is_file():
        return records
    for line in p.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int):
            records.append(rec)
    return records


class MetricsLog:
    """Append-only metrics of a run directory.

    Args:
        out: the run directory.
        start: the step the run starts at; earlier records (from ``resumed_from`` or ``out``) are kept.
        enabled: False on ranks other than 0 (nothing is read or written).
        resumed_from: the run directory of the checkpoint being resumed (may differ from ``out``).
    """

    def __init__(self, out: str | Path, start: int = 0, enabled: bool = True, resumed_from: str | Path | None = None):
        self.path = Path(out) / METRICS
        self.enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if resumed_from is not None:
            kept = [r for r in read_metrics(Path(resumed_from) / METRICS) if r["step"] <= start]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def write(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        rec = {"step": step, "time": round(time.time(), 3)}
        rec.update({k: (v if isinstance(v, (int, str)) or math.isfinite(v) else None) for k, v in values.items()})
        with self.path.open("a") as f:
            f.write(json.dumps(rec) + "\n")  # one write per record: a kill tears at most the last line

    def plot(self) -> Path | None:
        """Render ``curves.png`` next to the checkpoints (see :func:`train.plot.plot_curves`)."""
        if not self.enabled:
            return None
        from .plot import plot_curves
        return plot_curves(read_metrics(self.path), self.path.parent / CURVES)
