"""Bounded-memory prediction: memory that ``ghn.predict`` adds on GPT-2-large built on the ``meta`` device.

Goal (DESIGN.md): predicting a 774M model adds at most **1.05×** its fp32 size on top of the process (the process's
own baseline — Python, torch, transformers and the GHN — comes on top). Each measurement runs in a fresh subprocess
(``python -m benchmarks.memory --worker ...``) so that peaks do not mix, and every (model, path) is measured
``--repeats`` times: the allocator's behaviour varies from run to run, and the goal must hold for the worst run.

* ``predict``: ``with torch.device("meta"): model = ...``, then ``ghn.predict(model)`` materialises the model on
  ``--device`` and fills it tensor by tensor (no full-size temporary per tensor: see ``LowRankDecoder.decode(out=)``);
* ``cli``: ``ghn-predict --model hf:gpt2-large --meta --out ... --max-shard-size 1GB``: predict, then write shards;
* ``init``: for reference, transformers' own default init of the same model (no GHN).

The GPT-2 configs are transformers' own (``hf:gpt2-large`` of ``ghn-predict``: the local Hugging Face cache, or the
same fields offline). Peak RSS is ``ru_maxrss`` (the process's high-water mark); ``baseline`` is the RSS after imports
and loading the GHN, before the model exists. On CUDA the model lives in GPU memory; the peak allocation is reported.

Run: ``python -m benchmarks.memory [--quick] [--xl] [--repeats 3]``. Writes ``results/memory.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .common import add_common_args, env_info, md_table, setup, write_results

__all__ = ["CONFIGS", "GOAL", "measure", "worker", "run", "to_markdown", "main"]

#: name -> ``hf:`` model name (transformers config, built on meta)
CONFIGS = {"GPT-2-large (774M)": "gpt2-large"}
XL_CONFIGS = {"GPT-2-XL (1.5B)": "gpt2-xl"}
QUICK_CONFIGS = {"GPT-2 small (124M)": "gpt2"}
GOAL = 1.05  # memory added by prediction / the model's fp32 size
WHAT = {"init": "transformers default init (reference)", "predict": "ghn.predict, meta → materialise + stream",
        "cli": "ghn-predict --meta --out (1 GB shards)"}


def _rss_bytes() -> int:
    """Current resident set size (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except OSError:
        return 0


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def _model_args(config: str | dict) -> tuple[str, dict]:
    """``(hf: name, --model-kwargs)`` for a config given as a name (``"gpt2-large"``) or GPT-2 fields (tests)."""
    return (config, {}) if isinstance(config, str) else ("gpt2", dict(config))


def worker(config: str | dict, mode: str, ghn_name: str, device: str, out_dir: str | None = None) -> dict:
    """One measurement in this process (call it in a fresh one: the peak RSS is per process)."""
    from ghn.sources import hf_config, load_model

    from .common import load_ghn

    logging.getLogger("ghn").setLevel(logging.ERROR)
    name, kwargs = _model_args(config)
    model = load_model(f"hf:{name}", kwargs, meta=True)  # the model's true size (tied parameters once)
    n = sum(p.numel() for p in model.parameters())
    del model
    ghn = load_ghn(ghn_name, device) if mode != "init" else None
    baseline = _rss_bytes()
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    files: list[str] = []
    saved = 0
    if mode == "init":
        from transformers import AutoModelForCausalLM
        with torch.device(device):
            model = AutoModelForCausalLM.from_config(hf_config(name, kwargs))
    elif mode == "predict":
        model = load_model(f"hf:{name}", kwargs, meta=True)
        ghn.predict(model, device=device)
    elif mode == "cli":
        from ghn.cli import main as cli_main
        if not Path(ghn_name).is_dir():  # the CLI reads a checkpoint directory: save the untrained GHN as one
            ghn_name = str(Path(out_dir) / "ghn")
            ghn.save_pretrained(ghn_name)
        rc = cli_main(["--model", f"hf:{name}", "--model-kwargs", json.dumps(kwargs), "--meta", "-q",
                       "--ghn", ghn_name, "--device", device, "--out", str(Path(out_dir) / "model.safetensors"),
                       "--max-shard-size", "1GB"])
        if rc:
            raise SystemExit(f"ghn-predict exited with {rc}")
        files = sorted(p.name for p in Path(out_dir).glob("model*"))
        model = None
        from safetensors import safe_open
        for f in Path(out_dir).glob("model*.safetensors"):  # more than the model holds: tied weights written twice
            with safe_open(str(f), "pt") as st:
                saved += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    else:
        raise ValueError(f"unknown mode {mode!r}")
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    held = sum(p.numel() for p in model.parameters()) if model is not None else saved
    out = {"mode": mode, "params": n, "fp32_bytes": 4 * n, "params_after": held, "seconds": seconds,
           "baseline_rss": baseline, "peak_rss": _peak_rss_bytes(), "files": files}
    if torch.device(device).type == "cuda":
        out["peak_gpu"] = torch.cuda.max_memory_allocated()
    return out


def measure(config: str | dict, mode: str, ghn_name: str, device: str, timeout: float = 1800) -> dict:
    """Run :func:`worker` in a fresh subprocess and return its result (or ``{"error": ...}``)."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "benchmarks.memory", "--worker", json.dumps(config), "--mode", mode,
               "--ghn", ghn_name, "--device", device, "--tmp", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                              cwd=Path(__file__).resolve().parent.parent)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        return {"mode": mode, "error": " | ".join(proc.stderr.strip().splitlines()[-3:]) or "no output"}
    return json.loads(lines[-1])


def added(r: dict) -> float:
    """Memory added by the run, as a multiple of the model's fp32 size: (peak RSS − baseline) / fp32 bytes."""
    return (r["peak_rss"] - r["baseline_rss"]) / r["fp32_bytes"]


def run(ghn_name: str, device: str, configs: dict[str, str], modes: tuple[str, ...] = ("init", "predict", "cli"),
        repeats: int = 3) -> dict:
    """``{model: {mode: [result of each repeat]}}``; ``init`` (a reference, not a goal) is measured once."""
    out: dict = {}
    for name, config in configs.items():
        out[name] = {}
        for mode in modes:
            out[name][mode] = []
            n = 1 if mode == "init" else repeats
            for i in range(n):
                logging.info("%s: %s (%d/%d)", name, mode, i + 1, n)
                out[name][mode].append(measure(config, mode, ghn_name, device))
    return out


def to_markdown(res: dict, env: dict, ghn_name: str) -> str:
    """The results table (median, worst and best run of each path) and the goal lines."""
    gib = 2 ** 30
    rows, goals = [], []
    for name, by_mode in res.items():
        for mode, runs in by_mode.items():
            runs = runs if isinstance(runs, list) else [runs]
            ok = [r for r in runs if "error" not in r]
            if not ok:
                rows.append({"model": name, "path": WHAT[mode], "error": runs[0]["error"]})
                continue
            ratios = sorted(added(r) for r in ok)
            r = ok[0]
            row = {"model": name, "path": WHAT[mode], "runs": len(ok), "fp32 size (GiB)": r["fp32_bytes"] / gib,
                   "baseline RSS (GiB)": statistics.median(x["baseline_rss"] for x in ok) / gib,
                   "peak RSS (GiB)": statistics.median(x["peak_rss"] for x in ok) / gib,
                   "added / fp32 (median)": statistics.median(ratios),
                   "added / fp32 (worst, best)": f"{ratios[-1]:.3f}, {ratios[0]:.3f}",
                   "time (s)": statistics.median(x["seconds"] for x in ok),
                   "weight tying kept": "yes" if all(x["params_after"] == x["params"] for x in ok) else
                   f"NO (+{(r['params_after'] - r['params']) / 1e6:.0f}M params)"}
            if "peak_gpu" in r:
                row["peak GPU (GiB)"] = r["peak_gpu"] / gib
            rows.append(row)
            if mode != "init":
                goals.append(f"- {name}, {WHAT[mode]}: adds {ratios[-1]:.3f}× its fp32 size in the worst of "
                             f"{len(ok)} runs (median {statistics.median(ratios):.3f}×; goal ≤ {GOAL}×): "
                             f"{'met' if ratios[-1] <= GOAL and len(ok) == len(runs) else 'MISSED'}")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return "\n".join([
        f"# Bounded-memory prediction\n\nGHN: {ghn_name}. Device: {env['device']}, {env.get('torch_threads', '?')} "
        f"torch thread(s), load average {env.get('load_avg_1m', '?')}, git {env.get('git_commit', '?')}, "
        f"{env.get('date', '')}. Command: `python -m benchmarks.memory`.\n\n"
        "Each run is a fresh subprocess. *added / fp32* is (peak RSS − baseline RSS) / the model's fp32 size: what "
        "prediction adds on top of the process (baseline: Python, torch, transformers and the GHN, measured before "
        "the model exists; peak: ru_maxrss).\n", md_table(rows, cols),
        "\n## Goals\n", "\n".join(goals)])


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument("--quick", action="store_true", help="GPT-2 small only (written to memory_quick.*)")
    p.add_argument("--xl", action="store_true", help="also GPT-2-XL (1.5B; ~7 GB RAM)")
    p.add_argument("--repeats", type=int, default=3, help="runs per (model, path); the goal must hold for the worst")
    p.add_argument("--modes", nargs="*", default=["init", "predict", "cli"], choices=["init", "predict", "cli"])
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # JSON config: run one measurement, print JSON
    p.add_argument("--mode", default="predict", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    p.set_defaults(threads=1)
    args = p.parse_args(argv)
    if args.worker:
        warnings.simplefilter("ignore")  # e.g. the DomainWarning of an image GHN on GPT-2: not what is measured
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(worker(json.loads(args.worker), args.mode, args.ghn, args.device, args.tmp)))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    device = setup(args)
    from .common import ghn_label, load_ghn
    label = ghn_label(load_ghn(args.ghn, "cpu"), args.ghn)
    configs = QUICK_CONFIGS if args.quick else {**CONFIGS, **(XL_CONFIGS if args.xl else {})}
    res = run(args.ghn, str(device), configs, tuple(args.modes), args.repeats)
    env = env_info(device)
    env["torch_threads"] = args.threads  # what the workers ran with
    md = to_markdown(res, env, label)
    name = "memory" + ("_quick" if args.quick else "") + ("" if device.type == "cpu" else f"_{device.type}")
    write_results(args.out, name, {"results": res, "env": env, "ghn": label, "goal": GOAL}, md)
    print(md)


if __name__ == "__main__":
    main()
