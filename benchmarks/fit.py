"""Fit: does a GHN learn what it is trained on? (the unit test of meta-training)

Two modes, each writing ``results/fit_<mode>[_tag].{md,json,png}``:

* ``split`` — zero-shot metric of one or more GHNs (a run's checkpoints, or released predictors) on archs the run
  **trained on** (the last ``--archs`` positions of its own arch stream before the checkpoint's step: rebuilt from
  the run's config, so they are exactly the archs it took its last steps on) against as many **held-out** archs of
  the same families and constraints, per family. Train ≈ held-out and both low is underfitting; train ≫ held-out
  is overfitting.
* ``ceiling`` — the **multi-arch ceiling**: one fresh GHN meta-trained (by ``python -m train``'s own loop and
  recipe) on a fixed set of the first K training archs of the config's stream (an arch pool of K, never
  refreshed), for K in ``--k``, against each of those archs trained directly (Adam, ``--direct-lr``) on the same
  data stream. Both see the same number of data batches per arch (``--exposures``): the GHN runs
  ``exposures · K / meta_batch`` steps. Ratio = GHN / direct per arch (accuracy; loss for LMs), and the mean. K = 1
  is the single-arch ceiling of ``benchmarks.ceiling`` under the meta-training recipe.

Usage::

    python -m benchmarks.fit split --config train/configs/fmnist_real.yaml --ghn checkpoints/ghn-fmnist --archs 16
    python -m benchmarks.fit split --config train/configs/fmnist.yaml --ghn runs/fmnist   # every checkpoint kept
    python -m benchmarks.fit ceiling --config train/configs/fmnist.yaml --k 1,4,16 --exposures 300
    python -m benchmarks.fit ceiling --config train/configs/fmnist.yaml --k 16 --set lr=0.004 --tag lr4e-3
    python -m benchmarks.fit --quick          # both modes on tiny archs (the test suite runs this)
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from ghn import GHN

from train.checkpoint import PREFIX, find_checkpoint
from train.config import TrainConfig, load_yaml
from train.tasks import Task, logits_of, make_task, zoo_constraints

from .common import RESULTS_DIR, env_info, md_table, write_results

__all__ = ["stream_archs", "seen_archs", "score", "split_rows", "train_direct", "multi_arch_ceiling", "main"]

logger = logging.getLogger(__name__)

QUICK_CONFIG = "train/configs/tiny_cpu.yaml"


# ---- which archs ----------------------------------------------------------------------------------------------
def stream_archs(cfg: TrainConfig, task: Task, positions: range) -> dict[str, Any]:
    """The specs at ``positions`` of the (single-process) training arch stream of ``cfg``, named
    ``train_{family}_{position}`` — the very archs ``python -m train`` draws there."""
    from train.distributed import DistInfo
    from train.loop import arch_dataset
    ds = arch_dataset(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")), None, task)
    out = {}
    for n in positions:
        spec = ds.spec_at(n)
        out[f"train_{spec.family}_{n}"] = spec
    return out


def seen_archs(cfg: TrainConfig, task: Task, step: int, n: int) -> dict[str, Any]:
    """The last ``n`` stream archs a run with ``cfg`` trained on before ``step`` (with an arch pool: the pool's
    newest members, each drawn several times; without: one meta-batch each)."""
    # a pool refreshes before each step, so the last step run (step - 1) drew from [end - arch_pool, end)
    end = cfg.arch_pool + max(0, step - 1) * cfg.pool_refresh if cfg.arch_pool else step * cfg.meta_batch
    return stream_archs(cfg, task, range(max(0, end - n), end))


def heldout(cfg: TrainConfig, task: Task, n: int) -> dict[str, Any]:
    """``n`` held-out archs of the run's families and constraints (the ones ``python -m train.evaluate`` uses)."""
    from train.evaluate import eval_specs
    return eval_specs(n, tuple(cfg.families), zoo_constraints(cfg, task.source))


# ---- metric ----------------------------------------------------------------------------------------------------
def score(model: nn.Module, task: Task, eval_data: dict[str, Any], spec: Any) -> float:
    """The evaluation protocol's metric: test accuracy % (BatchNorm recalibrated) or validation loss (nats)."""
    from train.evaluate import lm_loss, zero_shot_accuracy
    if task.name == "image":
        return zero_shot_accuracy(model, eval_data["image_data"])
    return lm_loss(model, eval_data["lm_val"], spec.hparams["seq_len"])


def _eval_size(eval_data: dict[str, Any]) -> int:
    """Test images (or validation tokens) a score is measured on: part of what makes two scores comparable."""
    return len(eval_data["image_data"].test_y) if "image_data" in eval_data else len(eval_data["lm_val"])


def predicted_score(ghn: GHN, spec: Any, task: Task, eval_data: dict[str, Any]) -> float:
    with torch.random.fork_rng(devices=[]):
        model = spec.build(device="cpu")
        ghn.predict(model, spec.example_inputs(batch_size=2))
        return score(model, task, eval_data, spec)


# ---- split mode ------------------------------------------------------------------------------------------------
def ghn_dirs(names: list[str]) -> list[Path]:
    """GHN directories: a run directory stands for every checkpoint it kept, oldest first."""
    out = []
    for name in names:
        p = Path(name)
        ckpts = sorted(d for d in p.glob(f"{PREFIX}*") if (d / "config.json").is_file()) if p.is_dir() else []
        out += ckpts or [p if (p / "config.json").is_file() else find_checkpoint(p)]
    return out


def split_rows(ghn: GHN, cfg: TrainConfig, task: Task, n: int, eval_data: dict[str, Any],
               step: int | None = None) -> list[dict[str, Any]]:
    """One row per arch: ``split`` (seen / heldout), ``family``, ``name``, ``params``, ``value`` (the metric)."""
    step = int(ghn.config.notes.get("steps", 0)) if step is None else step
    rows = []
    for split, specs in (("seen", seen_archs(cfg, task, step, n)), ("heldout", heldout(cfg, task, n))):
        for name, spec in specs.items():
            rows.append({"split": split, "family": spec.family, "name": name, "params": spec.num_params(),
                         "value": round(predicted_score(ghn, spec, task, eval_data), 3)})
    return rows


def split_summary(rows: list[dict[str, Any]], label: str, step: int) -> list[dict[str, Any]]:
    """Means per family (and ``all``): seen, held-out, and the gap."""
    out = []
    for fam in ["all"] + sorted({r["family"] for r in rows}):
        mine = [r for r in rows if fam in ("all", r["family"])]
        m = {s: statistics.fmean(r["value"] for r in mine if r["split"] == s)
             if any(r["split"] == s for r in mine) else None for s in ("seen", "heldout")}
        gap = m["seen"] - m["heldout"] if None not in m.values() else None
        out.append({"ghn": label, "step": step, "family": fam, "seen": m["seen"], "heldout": m["heldout"],
                    "gap": gap, "archs": len(mine)})
    return out


# ---- ceiling mode ----------------------------------------------------------------------------------------------
def train_direct(spec: Any, task: Task, steps: int, lr: float, seed: int = 0) -> tuple[nn.Module, list[float]]:
    """``spec`` from its default init, Adam on the task's data stream (the batches the GHN saw), ``steps`` steps."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build(device="cpu").train()
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        losses = []
        for step in range(steps):
            x, y = task.batch(step)
            logits = logits_of(model(x)).float()
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
    return model, losses


def multi_arch_ceiling(cfg: TrainConfig, k: int, exposures: int, direct_lr: float, work_dir: Path,
                       eval_data: dict[str, Any], task: Task, direct_cache: dict | None = None
                       ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Meta-train a fresh GHN on the first ``k`` stream archs of ``cfg`` (a fixed pool) and train each directly.

    ``direct_cache`` (``{key: (direct score, default score)}``, filled here) spares retraining an arch that an
    earlier run of the same recipe trained directly: recipes of the GHN are compared on identical baselines.

    Returns one row per arch and the run's summary (steps, wall and CPU seconds, final training loss).
    """
    from train.loop import train
    direct_cache = {} if direct_cache is None else direct_cache
    meta_batch = min(cfg.meta_batch, k)
    steps = max(1, math.ceil(exposures * k / meta_batch))
    run_cfg = TrainConfig.from_dict({**cfg.to_dict(), "arch_pool": k, "pool_refresh": 0, "meta_batch": meta_batch,
                                     "steps": steps, "ckpt_every": steps, "keep_checkpoints": 1, "eval_archs": 0,
                                     "eval_every": 0, "resume": None, "init_from": None,
                                     "out": str(work_dir / f"k{k}")}, source="benchmarks.fit")
    t0, c0 = time.perf_counter(), time.process_time()
    summary = train(run_cfg, command=f"benchmarks.fit ceiling k={k}")
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    ghn = GHN.from_pretrained(find_checkpoint(run_cfg.out)).eval()
    rows = []
    for name, spec in stream_archs(cfg, task, range(k)).items():
        key = json.dumps([spec.family, spec.seed, spec.hparams, exposures, direct_lr, cfg.batch_size, cfg.seed,
                          cfg.dataset, _eval_size(eval_data)],
                         sort_keys=True, default=str)
        if key not in direct_cache:  # the same arch, data and recipe always train to the same weights
            direct, _ = train_direct(spec, task, exposures, direct_lr, seed=cfg.seed)
            with torch.random.fork_rng(devices=[]):
                direct_cache[key] = (score(direct, task, eval_data, spec),
                                     score(spec.build(device="cpu"), task, eval_data, spec))
        s_direct, s_default = direct_cache[key]
        s_ghn = predicted_score(ghn, spec, task, eval_data)
        rows.append({"k": k, "name": name, "family": spec.family, "params": spec.num_params(),
                     "default": round(s_default, 3), "direct": round(s_direct, 3), "ghn": round(s_ghn, 3),
                     "ratio": round(s_ghn / s_direct, 4) if s_direct else None})
        logger.info("k=%d %s: default %.2f direct %.2f ghn %.2f", k, name, s_default, s_direct, s_ghn)
    run = {"k": k, "steps": steps, "meta_batch": meta_batch, "exposures": exposures, "wall_s": round(wall, 1),
           "cpu_s": round(cpu, 1), "final_loss": summary.get("task_loss"),
           "mean_ratio": round(statistics.fmean(r["ratio"] for r in rows if r["ratio"] is not None), 4),
           "mean_ghn": round(statistics.fmean(r["ghn"] for r in rows), 3),
           "mean_direct": round(statistics.fmean(r["direct"] for r in rows), 3)}
    return rows, run


# ---- report ----------------------------------------------------------------------------------------------------
def _split_markdown(summary: list[dict[str, Any]], rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    return "\n".join([
        f"# Fit: archs the run trained on vs held-out ({meta['tag']})", "",
        f"Command: `{meta['command']}`  ", f"Run config: `{meta['config']}`; metric: {meta['metric']}; "
        f"{meta['archs']} archs per split; machine: {meta['env']['cpu_count']} CPUs, torch {meta['env']['torch']}, "
        f"commit {meta['env']['git_commit']}, {meta['env']['date']}.", "",
        "`seen`: the last archs of the run's own stream before the checkpoint's step (trained on); `heldout`: the "
        "held-out split, same families and constraints. Train ≈ held-out and both low = underfitting.", "",
        md_table(summary, ["ghn", "step", "family", "seen", "heldout", "gap", "archs"], digits=4), "",
        "## Every arch", "", md_table(rows, ["ghn", "step", "split", "family", "name", "params", "value"]), ""])


def _ceiling_markdown(runs: list[dict[str, Any]], rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    goal = "≥ 0.90 (accuracy)" if meta["task"] == "image" else "≤ 1.05 (loss)"
    return "\n".join([
        f"# Multi-arch ceiling ({meta['tag']})", "",
        f"Command: `{meta['command']}`  ", f"Run config: `{meta['config']}` with overrides {meta['overrides']}; "
        f"metric: {meta['metric']}; direct training: Adam lr {meta['direct_lr']}, the run's data stream and batch "
        f"size; machine: {meta['env']['cpu_count']} CPUs, torch {meta['env']['torch']}, commit "
        f"{meta['env']['git_commit']}, {meta['env']['date']}.", "",
        f"One fresh GHN meta-trained (train.loop, the config's recipe) on the first K archs of the training stream, "
        f"each arch seeing `exposures` batches, vs each arch trained directly for as many batches. Goal (K = 16): "
        f"mean ratio {goal}.", "",
        md_table(runs, ["k", "steps", "meta_batch", "exposures", "wall_s", "cpu_s", "final_loss", "mean_default",
                        "mean_direct", "mean_ghn", "mean_ratio"], digits=4), "",
        "## Every arch", "", md_table(rows, ["k", "name", "family", "params", "default", "direct", "ghn", "ratio"],
                                      digits=4), ""])


def _plot_split(summary: list[dict[str, Any]], path: Path, metric: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for fam in sorted({s["family"] for s in summary}):
        pts = sorted((s["step"], s["seen"], s["heldout"]) for s in summary if s["family"] == fam)
        line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{fam} seen")
        ax.plot([p[0] for p in pts], [p[2] for p in pts], marker="x", ls="--", c=line.get_color(),
                label=f"{fam} held-out")
    ax.set_xlabel("meta-training step of the checkpoint")
    ax.set_ylabel(metric)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _plot_ceiling(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for fam in sorted({r["family"] for r in rows}):
        mine = [r for r in rows if r["family"] == fam and r["ratio"] is not None]
        ax.scatter([r["k"] for r in mine], [r["ratio"] for r in mine], label=fam, alpha=0.7)
    ks = sorted({r["k"] for r in rows})
    ax.plot(ks, [statistics.fmean(r["ratio"] for r in rows if r["k"] == k and r["ratio"] is not None) for k in ks],
            c="k", label="mean")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("K (archs the GHN is meta-trained on)")
    ax.set_ylabel("GHN / direct training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---- command line ----------------------------------------------------------------------------------------------
def _overrides(items: list[str]) -> dict[str, Any]:
    """``key=value`` pairs (values parsed as YAML) into a dict of TrainConfig fields."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set takes key=value, got {item!r}")
        out[key.replace("-", "_")] = yaml.safe_load(value)
    return out


def _config(path: str, overrides: dict[str, Any]) -> TrainConfig:
    return TrainConfig.from_dict({**load_yaml(path), **overrides}, source=path)


def run_split(args: argparse.Namespace, command: str) -> dict[str, Any]:
    cfg = _config(args.config, _overrides(args.set))
    task = make_task(cfg)
    eval_data = task.eval_data(args.test_images)
    summary, rows = [], []
    for d in ghn_dirs(args.ghn):
        ghn = GHN.from_pretrained(d).eval()
        step = int(ghn.config.notes.get("steps", 0))
        mine = split_rows(ghn, cfg, task, args.archs, eval_data, step)
        for r in mine:
            r.update(ghn=str(d), step=step)
        rows += mine
        mine_summary = split_summary(mine, str(d), step)
        summary += mine_summary
        logger.info("%s (step %d): %s", d, step, "; ".join(f"{s['family']} seen {s['seen']:.2f} held-out "
                                                            f"{s['heldout']:.2f}" for s in mine_summary))
    metric = "test accuracy %" if cfg.task == "image" else "validation loss (nats/token)"
    meta = {"tag": args.tag or ("quick" if args.quick else "split"), "command": command, "config": args.config,
            "archs": args.archs, "metric": metric, "env": env_info()}
    name = f"fit_{meta['tag']}" if args.tag or args.quick else "fit_split"
    write_results(args.out, name, {"meta": meta, "summary": summary, "rows": rows},
                  _split_markdown(summary, rows, meta))
    _plot_split(summary, Path(args.out) / f"{name}.png", metric)
    return {"summary": summary, "rows": rows}


def run_ceiling(args: argparse.Namespace, command: str) -> dict[str, Any]:
    overrides = _overrides(args.set)
    cfg = _config(args.config, overrides)
    task = make_task(cfg)
    eval_data = task.eval_data(args.test_images)
    runs, rows = [], []
    cache_path = Path(args.direct_cache) if args.direct_cache else None
    cache = {k: tuple(v) for k, v in json.loads(cache_path.read_text()).items()} \
        if cache_path and cache_path.is_file() else {}
    with tempfile.TemporaryDirectory(prefix="ghn-fit-") as tmp:
        for k in args.k:
            mine, run = multi_arch_ceiling(cfg, k, args.exposures, args.direct_lr, Path(args.work_dir or tmp),
                                           eval_data, task, cache)
            if cache_path:
                cache_path.write_text(json.dumps(cache, indent=0))
            run["mean_default"] = round(statistics.fmean(r["default"] for r in mine), 3)
            rows += mine
            runs.append(run)
            logger.info("k=%d: mean ratio %.3f (ghn %.2f, direct %.2f), %d steps in %.0f s", k, run["mean_ratio"],
                        run["mean_ghn"], run["mean_direct"], run["steps"], run["wall_s"])
    meta = {"tag": args.tag or ("quick" if args.quick else "ceiling"), "command": command, "config": args.config,
            "overrides": overrides, "task": cfg.task, "direct_lr": args.direct_lr,
            "metric": "test accuracy %" if cfg.task == "image" else "validation loss (nats/token)", "env": env_info()}
    name = "fit_ceiling" + (f"_{meta['tag']}" if args.tag or args.quick else "")
    write_results(args.out, name, {"meta": meta, "runs": runs, "rows": rows}, _ceiling_markdown(runs, rows, meta))
    _plot_ceiling(rows, Path(args.out) / f"{name}.png")
    return {"runs": runs, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fit", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("Usage::")[1])
    p.add_argument("mode", nargs="?", choices=("split", "ceiling"), help="what to measure (--quick: both)")
    p.add_argument("--config", default="train/configs/fmnist.yaml", help="the run's training config (YAML)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides, e.g. lr=0.004")
    p.add_argument("--ghn", nargs="+", default=["checkpoints/ghn-fmnist"],
                   help="split: GHN directories, or run directories (every checkpoint they kept)")
    p.add_argument("--archs", type=int, default=16, help="split: archs per split (seen / held-out)")
    p.add_argument("--k", type=lambda s: [int(v) for v in s.split(",")], default=[1, 4, 16],
                   help="ceiling: comma-separated numbers of archs")
    p.add_argument("--exposures", type=int, default=300, help="ceiling: data batches per arch (GHN and direct)")
    p.add_argument("--direct-lr", type=float, default=1e-3, help="ceiling: Adam learning rate of direct training")
    p.add_argument("--test-images", type=int, default=2000, help="test images per evaluation (a prefix)")
    p.add_argument("--direct-cache", default=None, metavar="FILE.json",
                   help="ceiling: reuse (and extend) directly trained baselines of earlier runs stored here")
    p.add_argument("--work-dir", default=None, help="ceiling: keep the GHN runs here (default: a temporary dir)")
    p.add_argument("--quick", action="store_true", help=f"both modes on {QUICK_CONFIG}'s tiny archs, in seconds")
    p.add_argument("--tag", default=None, help="results file name suffix")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    args = p.parse_args(argv)
    if not args.quick and args.mode is None:
        p.error("name a mode (split or ceiling), or pass --quick")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    command = "python -m benchmarks.fit " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.quick:
        args.config, args.k, args.exposures, args.test_images = QUICK_CONFIG, [1, 2], 20, 300
        args.archs = 2
        work = Path(tempfile.mkdtemp(prefix="ghn-fit-quick-"))
        ceiling = run_ceiling(args, command)
        args.ghn = [_quick_run(args, work)]
        run_split(args, command)
        return 0 if ceiling["runs"] else 1
    (run_split if args.mode == "split" else run_ceiling)(args, command)
    return 0


def _quick_run(args: argparse.Namespace, work: Path) -> str:
    """A run of the quick config (its checkpoints at steps 3 and 6), for the quick split mode."""
    from train.loop import train
    cfg = _config(args.config, {"out": str(work / "run"), **_overrides(args.set)})
    train(cfg, command="benchmarks.fit --quick")
    return str(work / "run")


if __name__ == "__main__":
    raise SystemExit(main())
