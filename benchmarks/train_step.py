"""Where a meta-training step's time goes, with a fresh arch stream vs a cached arch pool (``--arch-pool``).

For each training config, the step's phases are timed one after another in one thread (the trainer overlaps the
first with the rest in its prefetch thread; here they are serialised so each can be measured):

* ``archs``: sampling the step's archs and building their graphs (stream), or drawing them from the pool (filled
  before timing; graphs of the replaced archs are built on first use);
* ``modules``: constructing the archs' modules (the pool reuses them);
* ``ghn``: ``ghn(graphs)``, the GHN's forward pass;
* ``task``: each arch's forward pass with its predicted parameters and the loss;
* ``backward`` and ``optim`` (gradient clipping + AdamW).

``archs/s`` = meta-batch / the sum of the phases; ``archs/s overlapped`` = meta-batch / (the sum without ``archs``),
what the trainer reaches when its prefetch thread keeps up. Same GHN, data and seeds for stream and pool.

Run: ``python -m benchmarks.train_step [--steps 20] [--device cuda]``. Writes ``results/train_step.{md,json}``.
"""
from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from .common import add_common_args, env_info, md_table, setup, sync, write_results

__all__ = ["time_steps", "main"]

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("train/configs/fmnist.yaml", "train/configs/fortunes_lm.yaml")  # relative to the repository root
PHASES = ("archs", "modules", "ghn", "task", "backward", "optim")


def time_steps(config: str, device: torch.device, steps: int, warmup: int, pool: int) -> dict:
    """Median seconds per phase over ``steps`` steps (after ``warmup``) of ``config``, with ``arch_pool=pool``."""
    from ghn import GHN
    from train.config import TrainConfig, load_yaml
    from train.distributed import DistInfo
    from train.loop import Predictor, arch_dataset, ghn_config
    from train.pool import ArchPool
    from train.tasks import make_task

    path = Path(config) if Path(config).is_file() else ROOT / config
    cfg = TrainConfig.from_dict({**load_yaml(path), "arch_pool": pool, "threads": 0})
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=device)
    torch.manual_seed(cfg.seed)
    ghn = GHN(ghn_config(cfg)).to(device).train()
    task = make_task(cfg)
    stream = arch_dataset(cfg, info, None, task)
    arch_pool = ArchPool(stream, pool, cfg.pool_refresh, cfg.meta_batch) if pool else None
    archs = iter(stream)
    if arch_pool:
        arch_pool.fill(0, device)  # timed in its steady state: every slot's graph and module exist
    predictor = Predictor(ghn, amp=False)
    opt = torch.optim.AdamW(ghn.parameters(), lr=cfg.lr)
    times: dict[str, list[float]] = {p: [] for p in PHASES}
    for step in range(warmup + steps):
        t = [time.perf_counter()]

        def mark() -> None:
            sync(device)
            t.append(time.perf_counter())

        samples = arch_pool.draw(step) if arch_pool else [next(archs) for _ in range(cfg.meta_batch)]
        mark()
        models = [arch_pool.model(s, device, step) if arch_pool else s.spec.build(device=device).train()
                  for s in samples]
        mark()
        preds = predictor([s.graph for s in samples])
        mark()
        x, y = (v.to(device) for v in task.batch(step))
        loss = torch.stack([task.loss(m, p, x, y)[0] for m, p in zip(models, preds)]).mean()
        mark()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        mark()
        torch.nn.utils.clip_grad_norm_(ghn.parameters(), cfg.grad_clip or float("inf"))
        opt.step()
        mark()
        if step >= warmup:
            for name, a, b in zip(PHASES, t, t[1:]):
                times[name].append(b - a)
    med = {p: statistics.median(v) for p, v in times.items()}
    total = sum(med.values())
    return {"config": config, "arch_pool": pool, "meta_batch": cfg.meta_batch, "seconds": med, "total": total,
            "archs_per_s": cfg.meta_batch / total, "archs_per_s_overlapped": cfg.meta_batch / (total - med["archs"])}


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument("--steps", type=int, default=20, help="timed steps per setting (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--pool", type=int, default=256, help="arch_pool size of the pooled setting")
    p.add_argument("--configs", nargs="*", default=list(CONFIGS))
    args = p.parse_args(argv)
    device = setup(args)
    rows, results = [], []
    for config in args.configs:
        for pool in (0, args.pool):
            r = time_steps(config, device, args.steps, args.warmup, pool)
            results.append(r)
            total = r["total"]
            rows.append({"config": Path(config).name, "archs": "stream" if not pool else f"pool {pool}",
                         **{f"{k} ms ({100 * v / total:.0f} %)": 1e3 * v for k, v in r["seconds"].items()},
                         "step ms": 1e3 * total, "archs/s": r["archs_per_s"],
                         "archs/s overlapped": r["archs_per_s_overlapped"]})
    env = env_info(device)
    cols = ["config", "archs", *[f"{k} ms" for k in PHASES], "step ms", "archs/s", "archs/s overlapped"]
    table = [{**{c: row[c] for c in ("config", "archs", "step ms", "archs/s", "archs/s overlapped")},
              **{f"{k} ms": f"{1e3 * r['seconds'][k]:.0f} ({100 * r['seconds'][k] / r['total']:.0f} %)"
                 for k in PHASES}} for row, r in zip(rows, results)]
    md = (f"# Where a meta-training step's time goes\n\n`python -m benchmarks.train_step` on {env['device']} "
          f"({env['cpu_count']} cores, {env['torch_threads']} threads, load {env['load_avg_1m']}), commit "
          f"{env['git_commit']}, {env['date']}. Median over {args.steps} steps after {args.warmup} warm-up steps, "
          "phases serialised (see the module docstring); a fresh GHN of each config's preset; the pool draws from "
          f"{args.pool} archs and replaces `pool_refresh` (1) per step.\n\n" + md_table(table, cols))
    write_results(args.out, "train_step", {"env": env, "results": results}, md)
    print(md)


if __name__ == "__main__":
    main()
