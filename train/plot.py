"""Training curves as a PNG (matplotlib's Agg backend: no display needed)."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)

__all__ = ["plot_curves"]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in records if r.get(key) is not None]
    return [s for s, _ in pts], [v for _, v in pts]


def plot_curves(records: list[dict[str, Any]], path: str | Path) -> Path:
    """Plot losses, the training-batch metric, held-out evaluation and the learning rate; write ``path``.

    Panels: (1) loss and task loss (log scale), (2) accuracy on the training batch / bits per byte (or token), with the
    zero-shot held-out metric of predicted vs default init when evaluated, (3) learning rate and gradient norm.
    The file is written to a temporary name and renamed, so readers never see a partial PNG.
    """
    path = Path(path)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    ax = axes[0]
    for key in ("loss", "task_loss"):
        ax.plot(*_series(records, key), label=key)
    ax.set_yscale("log")
    ax.set_title("meta-training loss")
    ax = axes[1]
    for key, label in (("acc", "train-batch acc (%)"), ("bits_per_byte", "train bits/byte"),
                       ("bits_per_token", "train bits/token"),
                       ("eval_acc_ghn", "held-out zero-shot acc, GHN (%)"),
                       ("eval_acc_default", "held-out zero-shot acc, default init (%)"),
                       ("eval_loss_ghn", "held-out val loss, GHN"),
                       ("eval_loss_default", "held-out val loss, default")):
        steps, values = _series(records, key)
        if steps:
            ax.plot(steps, values, "o-" if key.startswith("eval") else "-", label=label)
    ax.set_title("task metric")
    ax = axes[2]
    ax.plot(*_series(records, "lr"), label="lr", color="tab:green")
    ax.set_title("learning rate / grad norm")
    ax2 = ax.twinx()
    ax2.plot(*_series(records, "grad_norm"), label="grad norm (right axis)", color="tab:gray", alpha=0.6)
    for ax in axes:
        ax.set_xlabel("step")
        handles, labels = ax.get_legend_handles_labels()
        if ax is axes[2]:
            h2, l2 = ax2.get_legend_handles_labels()
            handles, labels = handles + h2, labels + l2
        if handles:
            ax.legend(handles, labels, fontsize=8)
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=80)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        Path(tmp).unlink(missing_ok=True)
    return path
