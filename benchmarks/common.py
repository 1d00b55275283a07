"""Helpers shared by the benchmarks: GHN loading, timing, environment info and results files."""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ghn import GHN, GHNConfig

__all__ = ["RESULTS_DIR", "DEFAULT_GHN", "Arch", "add_common_args", "setup", "load_ghn", "ghn_label", "seeded",
           "as_matrix", "effective_rank", "sync", "timed", "median_time", "env_info", "write_results", "md_table",
           "fmt", "mean_over_orders", "orders_note"]

RESULTS_DIR = Path(__file__).parent / "results"
DEFAULT_GHN = "checkpoints/ghn-fmnist"


@dataclass
class Arch:
    """One evaluated architecture of a quality benchmark (image or LM): how to build it (default init, seeded) and
    why it is held out."""

    name: str
    family: str
    build: Callable[[], nn.Module]
    heldout: str  # why the GHN never saw it in meta-training
    spec: dict | None = None  # model_zoo spec (JSON) when it comes from the zoo

    @property
    def set(self) -> str:
        """``"zoo"`` (a model_zoo held-out spec) or ``"real"`` (a named library or hand-written net)."""
        return "zoo" if self.spec is not None else "real"


def add_common_args(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--device``, ``--threads``, ``--ghn`` and ``--out`` (results directory), shared by every benchmark."""
    p.add_argument("--device", default="cpu", help="device of the GHN and the models (cpu, cuda, cuda:1, ...)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch.set_num_threads (default: leave; use 1 on a shared machine for stable ratios)")
    p.add_argument("--ghn", default=DEFAULT_GHN,
                   help=f"GHN checkpoint directory or Hub id; 'untrained' for a fresh 'small' GHN (default: "
                        f"{DEFAULT_GHN}, falling back to an untrained GHN if it is absent)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory (default: benchmarks/results)")
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Apply ``--threads``, create ``--out``, check ``--device`` and return it."""
    if args.threads:
        torch.set_num_threads(args.threads)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {args.device}: CUDA is not available on this machine")
    return device


def load_ghn(name: str = DEFAULT_GHN, device: str | torch.device = "cpu", seed: int = 0) -> GHN:
    """The GHN to benchmark: a checkpoint if ``name`` is one, else (``"untrained"`` or a missing default directory)
    a freshly initialised ``small`` GHN seeded by ``seed``. Outputs say which via :func:`ghn_label`."""
    if name != "untrained" and (Path(name).is_dir() or name != DEFAULT_GHN):
        return GHN.from_pretrained(name, device=device).eval()
    torch.manual_seed(seed)
    return GHN(GHNConfig.preset("small"), device=device).eval()


def ghn_label(ghn: GHN, name: str) -> str:
    """E.g. ``"checkpoints/ghn-fmnist (UNTRAINED, 681,949 params)"``: every results file states what it measured."""
    n = sum(p.numel() for p in ghn.parameters())
    state = "trained" if ghn.config.trained else "UNTRAINED"
    return f"{name if Path(name).is_dir() or name != DEFAULT_GHN else 'untrained small GHN'} ({state}, {n:,} params)"


def seeded(make: Callable[[], Any], seed: int) -> Callable[[], Any]:
    """``make`` wrapped so that every call builds under ``torch.manual_seed(seed)`` (the default init of a model,
    reproducibly) without touching the caller's RNG state."""
    def build() -> Any:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return make()
    return build


def mean_over_orders(finetune: Callable[[nn.Module, int], dict], model: nn.Module, seed: int, n: int = 1) -> dict:
    """Fine-tune ``model`` with ``n`` data orders and average them: the one place a quality cell's orders are run.

    ``finetune(model, order_seed)`` trains in place and returns curves ``{name: {step: value}}`` and flags (bools).
    The order seeds are ``seed, seed + 1, …, seed + n - 1``; each order starts from ``model`` as given (the first
    trains ``model`` itself, the others a copy), so ``n=1`` is exactly one ``finetune(model, seed)``, and the global
    RNG is left as that one call leaves it (what is initialised next is the same for any ``n``).

    Returns:
        ``finetune``'s result when ``n == 1``; else each curve's mean over orders per step, each flag true if it was
        in any order (``diverged``), and ``orders``: ``{"seeds": [...], name: {step: [one value per order]},
        f"{name}_std": {step: std}}``.
    """
    if n == 1:
        return finetune(model, seed)
    seeds = list(range(seed, seed + n))
    start = copy.deepcopy(model)
    runs = [finetune(model, seed)]
    with torch.random.fork_rng():  # the further orders leave the global RNG as one order does (LSUV draws from it)
        runs += [finetune(copy.deepcopy(start), s) for s in seeds[1:]]
    out: dict = {}
    orders: dict = {"seeds": seeds}
    for key, first in runs[0].items():
        if not isinstance(first, dict):
            out[key] = any(r[key] for r in runs)
            continue
        orders[key] = {st: [r[key][st] for r in runs] for st in first}
        orders[f"{key}_std"] = {st: statistics.stdev(v) for st, v in orders[key].items()}
        out[key] = {st: statistics.fmean(v) for st, v in orders[key].items()}
    return {**out, "orders": orders}


def orders_note(protocol: dict) -> str:
    """The report's sentence on how many data orders each fine-tuned number is a mean of."""
    n, seed = protocol.get("data_orders", 1), protocol.get("seed", 0)
    if n == 1:
        return f"Fine-tuned numbers come from one data order (seed {seed}; `--seeds N` reports the mean of N)."
    return (f"Fine-tuned numbers are the **mean of {n} data orders** (seeds {seed}–{seed + n - 1}, the same for "
            "every init; each order's value and the std are in the JSON); zero-shot numbers are measured once.")


def as_matrix(w: torch.Tensor) -> torch.Tensor:
    """``(rows, rest)``: leading singleton dims dropped first (a ``(1, n, d)`` pos_embed is an ``n × d`` matrix)."""
    w = w.detach().float()
    while w.ndim > 2 and w.shape[0] == 1:
        w = w[0]
    return w.reshape(w.shape[0], -1)


def effective_rank(w: torch.Tensor, rel: float = 0.01) -> int:
    """Number of singular values of ``w`` (as ``(rows, rest)``) above ``rel`` × the largest."""
    s = torch.linalg.svdvals(as_matrix(w))
    return int((s > rel * s[0]).sum()) if s.numel() and s[0] > 0 else 0


def sync(device: torch.device | str) -> None:
    """Wait for queued kernels, so wall-clock times on CUDA mean something."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device | str = "cpu") -> tuple[float, Any]:
    """``(seconds, fn())`` with device synchronisation before and after."""
    sync(device)
    t = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - t, out


def median_time(fn: Callable[[], Any], repeat: int = 3, device: torch.device | str = "cpu") -> float:
    """Median wall-clock seconds of ``repeat`` calls (the machine is shared: the median resists spikes)."""
    return statistics.median(timed(fn, device)[0] for _ in range(repeat))


def env_info(device: torch.device | str = "cpu") -> dict[str, Any]:
    """What the numbers were measured on (timings on a shared 2-core machine are noisy: see the load average)."""
    import timm
    import transformers
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    info = {"torch": torch.__version__, "timm": timm.__version__, "transformers": transformers.__version__,
            "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "load_avg_1m": round(os.getloadavg()[0], 2), "git_commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M")}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def fmt(x: Any, digits: int = 3) -> str:
    """Compact cell text: floats with ``digits`` significant digits, None as an em dash."""
    if x is None:
        return "—"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 10 ** digits else f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return str(x)


def md_table(rows: list[dict[str, Any]], columns: list[str] | None = None, digits: int = 3) -> str:
    """A markdown table of ``rows`` (dicts) with ``columns`` (default: the first row's keys)."""
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c), digits) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_results(out_dir: Path, name: str, data: dict[str, Any], markdown: str) -> tuple[Path, Path]:
    """Write ``<name>.json`` (``data``) and ``<name>.md`` (``markdown``) into ``out_dir``; returns both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{name}.json", out_dir / f"{name}.md"
    js.write_text(json.dumps(data, indent=1, default=str) + "\n")
    md.write_text(markdown.rstrip() + "\n")
    return js, md
