"""Bounded-memory prediction: peak RSS of ``ghn.predict`` on big GPT-2 models built on the ``meta`` device.

Each measurement runs in a fresh subprocess (``python -m benchmarks.memory --worker ...``), so peaks do not mix:

* ``predict``: ``with torch.device("meta"): model = ...``, then ``ghn.predict(model)`` materialises the model on
  ``--device`` and fills it tensor by tensor (the decoder forms one full-size tensor at a time);
* ``cli``: the ``ghn-predict --meta --out ... --max-shard-size`` path: predict, then write sharded safetensors;
* ``init``: for reference, transformers' own default init of the same model (no GHN).

Peak RSS is ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (the process's high-water mark); ``baseline`` is the
RSS after imports and loading the GHN, before the model exists. Goal (DESIGN.md): peak RSS ≤ 1.5× the model's
fp32 size. On CUDA the model lives in GPU memory, so the peak GPU allocation is reported too.

Run: ``python -m benchmarks.memory [--quick] [--device cuda]``. Writes ``results/memory.{md,json}``.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from .common import add_common_args, env_info, md_table, setup, write_results

__all__ = ["CONFIGS", "measure", "worker", "main"]

#: name -> GPT-2 config (built by hand: no download).
CONFIGS = {
    "GPT-2-large (774M)": dict(n_embd=1280, n_layer=36, n_head=20),
    "GPT-2-XL (1.5B)": dict(n_embd=1600, n_layer=48, n_head=25),
}
QUICK_CONFIGS = {"GPT-2 small (124M)": dict(n_embd=768, n_layer=12, n_head=12)}


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


def worker(config: dict, mode: str, ghn_name: str, device: str, out_dir: str | None = None) -> dict:
    """One measurement in this process (call it in a fresh one: the peak RSS is per process)."""
    from transformers import GPT2Config

    from .common import load_ghn
    from .speed import gpt2

    logging.getLogger("ghn").setLevel(logging.ERROR)
    with torch.device("meta"):  # the model's true size (tied parameters once), before anything can untie them
        n = sum(p.numel() for p in gpt2(**config).parameters())
    ghn = load_ghn(ghn_name, device) if mode != "init" else None
    baseline = _rss_bytes()
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    files: list[str] = []
    if mode == "init":
        with torch.device(device):
            model = gpt2(**config)
    elif mode == "predict":
        with torch.device("meta"):
            model = gpt2(**config)
        ghn.predict(model, device=device)
    elif mode == "cli":
        from ghn.cli import main as cli_main
        cfg = Path(out_dir) / "config.json"
        cfg.write_text(GPT2Config(**config).to_json_string())
        if not Path(ghn_name).is_dir():  # the CLI reads a checkpoint directory: save the untrained GHN as one
            ghn_name = str(Path(out_dir) / "ghn")
            ghn.save_pretrained(ghn_name)
        rc = cli_main(["--model", f"hf:{cfg}", "--meta", "--ghn", ghn_name, "--device", device,
                       "--out", str(Path(out_dir) / "model.safetensors"), "--max-shard-size", "1GB"])
        if rc:
            raise SystemExit(f"ghn-predict exited with {rc}")
        files = sorted(p.name for p in Path(out_dir).glob("model*"))
        model = None
        from safetensors import safe_open
        saved = 0  # what the files hold: more than the model's parameters means tied weights were written twice
        for f in Path(out_dir).glob("model*.safetensors"):
            with safe_open(str(f), "pt") as st:
                saved += sum(math.prod(st.get_slice(k).get_shape()) for k in st.keys())
    else:
        raise ValueError(f"unknown mode {mode!r}")
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    # NOTE: a meta model materialised by ghn.predict loses its weight tying (to_empty), so count what it holds now
    held = sum(p.numel() for p in model.parameters()) if model is not None else saved
    out = {"mode": mode, "params": n, "fp32_bytes": 4 * n, "params_after": held, "seconds": seconds,
           "baseline_rss": baseline, "peak_rss": _peak_rss_bytes(), "files": files}
    if torch.device(device).type == "cuda":
        out["peak_gpu"] = torch.cuda.max_memory_allocated()
    return out


def measure(config: dict, mode: str, ghn_name: str, device: str, timeout: float = 1800) -> dict:
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


def run(ghn_name: str, device: str, quick: bool = False, modes: tuple[str, ...] = ("init", "predict", "cli")) -> dict:
    configs = QUICK_CONFIGS if quick else CONFIGS
    out = {}
    for name, config in configs.items():
        out[name] = {}
        for mode in modes:
            logging.info("%s: %s", name, mode)
            out[name][mode] = measure(config, mode, ghn_name, device)
    return out


def to_markdown(res: dict, env: dict, ghn_name: str) -> str:
    gib = 2 ** 30
    rows, goals = [], []
    what = {"init": "transformers default init (reference)", "predict": "ghn.predict, meta → materialise + stream",
            "cli": "ghn-predict --meta --out (1 GB shards)"}
    for name, by_mode in res.items():
        for mode, r in by_mode.items():
            if "error" in r:
                rows.append({"model": name, "path": what[mode], "error": r["error"]})
                continue
            row = {"model": name, "path": what[mode], "fp32 size (GiB)": r["fp32_bytes"] / gib,
                   "peak RSS (GiB)": r["peak_rss"] / gib, "peak / fp32": r["peak_rss"] / r["fp32_bytes"],
                   "baseline RSS (GiB)": r["baseline_rss"] / gib,
                   "(peak − baseline) / fp32": (r["peak_rss"] - r["baseline_rss"]) / r["fp32_bytes"],
                   "time (s)": r["seconds"], "weight tying kept": "yes" if r["params_after"] == r["params"] else
                   f"NO (+{(r['params_after'] - r['params']) / 1e6:.0f}M params)"}
            if "peak_gpu" in r:
                row["peak GPU (GiB)"] = r["peak_gpu"] / gib
            rows.append(row)
            if mode != "init":
                ratio = r["peak_rss"] / r["fp32_bytes"]
                goals.append(f"- {name}, {what[mode]}: peak RSS {ratio:.2f}× fp32 (goal ≤ 1.5×): "
                             f"{'met' if ratio <= 1.5 else 'MISSED'}")
    cols = list(dict.fromkeys(k for r in rows for k in r))
    untied = any(str(r.get("weight tying kept", "")).startswith("NO") for r in rows)
    note = ("\n`weight tying kept: NO`: materialising the meta model (`to_empty`) unties `lm_head.weight` from "
            "`transformer.wte.weight`; the untied copy is never written (it stays uninitialised) and costs its own "
            "memory. A ghn bug: re-tying after materialising fixes both.\n" if untied else "")
    return "\n".join([
        f"# Bounded-memory prediction\n\nGHN: {ghn_name}. Device: {env['device']}. Each row is a fresh subprocess; "
        "peak RSS is the process high-water mark (ru_maxrss) and includes the baseline (Python, torch, "
        "transformers and the GHN, measured before the model exists).\n", md_table(rows, cols), note,
        "\n## Goals\n", "\n".join(goals)])


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument("--quick", action="store_true", help="GPT-2 small only")
    p.add_argument("--modes", nargs="*", default=["init", "predict", "cli"], choices=["init", "predict", "cli"])
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # JSON config: run one measurement, print JSON
    p.add_argument("--mode", default="predict", help=argparse.SUPPRESS)
    p.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    p.set_defaults(threads=1)
    args = p.parse_args(argv)
    if args.worker:
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(worker(json.loads(args.worker), args.mode, args.ghn, args.device, args.tmp)))
        return
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    device = setup(args)
    from .common import ghn_label, load_ghn
    label = ghn_label(load_ghn(args.ghn, "cpu"), args.ghn)
    res = run(args.ghn, str(device), args.quick, tuple(args.modes))
    env = env_info(device)
    md = to_markdown(res, env, label)
    name = "memory" + ("_quick" if args.quick else "") + ("" if device.type == "cpu" else f"_{device.type}")
    write_results(args.out, name, {"results": res, "env": env, "ghn": label}, md)
    print(md)


if __name__ == "__main__":
    main()
