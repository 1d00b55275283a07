"""The meta-training loop (GHN-3 / LoGAH style).

One step, on every rank:

1. take the step's meta-batch of ``M`` archs (sampled from model_zoo's training split, graphs built ahead of time
   by the prefetch thread or DataLoader workers; or, with ``arch_pool``, drawn from a pool of archs whose graphs and
   modules are cached, :mod:`train.pool`) and the step's shared data batch ``(x, y)``;
2. predict all their parameters at once: ``preds = ghn(graphs)`` (differentiable, no copies into modules);
3. run each arch on ``x`` with its predicted parameters via ``torch.func.functional_call``;
4. ``loss = mean_a task_loss_a + gamma * mean_a sum_W ||W||_F`` (GHN-3's penalty keeps predictions small);
5. if the loss is finite on every rank: backward into the GHN (DDP averages gradients), clip, AdamW step;
   otherwise (or if the gradient norm is not finite) the step is skipped on all ranks and counted;
6. the warm-up + cosine learning-rate schedule advances either way (it is a function of the step index).

Everything a step consumes is a pure function of the config, the rank and the step index, or is restored from
the checkpoint (GHN, optimizer, schedule, RNG states, arch-stream positions), so on CPU a resumed run ends with
exactly the weights of an uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from ghn import GHN, GHNConfig, Graph
from ghn.errors import ConfigError

from .checkpoint import (CONFIG_YAML, Checkpoint, atomic_write_text, check_run_dir, clean_partial_saves,
                         ghn_location, git_hash, load_checkpoint, load_optimizer_state, optimizer_state,
                         save_checkpoint)
from .config import TrainConfig
from .datasets import ImageSource, TextSource
from .distributed import DistInfo, all_gather_objects, all_reduce_sum, init_distributed, shutdown
from .metrics import MetricsLog
from .pool import ArchPool
from .prefetch import Prefetcher
from .tasks import Task, make_task, zoo_constraints

__all__ = ["train", "Predictor", "lr_lambda", "ghn_config", "arch_dataset"]

logger = logging.getLogger(__name__)


# ---- pieces ----------------------------------------------------------------------------------------------------------
def ghn_config(cfg: TrainConfig) -> GHNConfig:
    """The GHN's architecture from the run config (preset + overrides)."""
    return GHNConfig.preset(cfg.ghn_preset, **cfg.ghn_overrides)


def lr_lambda(cfg: TrainConfig):
    """Multiplier of ``cfg.lr`` at step ``s``: linear warm-up to 1, then cosine decay to ``min_lr_ratio``."""
    def f(s: int) -> float:
        if s < cfg.warmup_steps:
            return (s + 1) / cfg.warmup_steps
        t = min(1.0, (s - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
        return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return f


class Predictor(nn.Module):
    """``ghn(graphs)``, optionally with the graph encoder under bf16 autocast and the decoder kept in fp32.

    A module of its own so that DDP wraps the whole differentiable prediction (DDP hooks need ``forward``).

    Args:
        every_parameter: make every GHN parameter part of each step's graph (for DDP, see :meth:`forward`).

    Shapes:
        graphs: list of B graphs → list of B dicts ``{name: fp32 tensor of the parameter's shape}``.
    """

    def __init__(self, ghn: GHN, amp: bool = False, every_parameter: bool = False):
        super().__init__()
        self.ghn, self.amp, self.every_parameter = ghn, amp, every_parameter

    def forward(self, graphs: list[Graph]) -> list[dict[str, torch.Tensor]]:
        # GHN.forward keeps its decoder in fp32 under autocast itself.
        with torch.autocast(self.ghn.device.type, dtype=torch.bfloat16, enabled=self.amp):
            preds = self.ghn(graphs)
        if self.every_parameter:
            # A step's archs need not use every GHN parameter (no conv reading the input: that code table is idle).
            # DDP must then either search each step's graph for unused parameters (find_unused_parameters=True, which
            # also makes every rank print a warning whenever a step happens to use them all) or be given a graph that
            # reaches all of them: a zero-weighted sum of them, added to one predicted tensor, does that. A parameter no
            # arch of any rank used gets a zero gradient instead of none, so AdamW still applies its momentum and weight
            # decay to it (one process skips it).
            params = next((p for p in preds if p), None)
            if params is not None:
                name = next(iter(params))
                params[name] = params[name] + 0.0 * sum(p.sum() for p in self.ghn.parameters())
        return preds


@dataclass
class StepInputs:
    """What one step consumes, prepared off the main thread: the archs' samples and the shared data batch."""

    samples: list  # model_zoo.ArchSample (spec + graph)
    x: torch.Tensor
    y: torch.Tensor
    arch_state: dict  # the arch stream's state once this step has run (for the checkpoint)
    step: int


@dataclass
class Counters:
    skipped: int = 0  # steps whose loss or gradient was not finite
    archs: int = 0  # archs trained on (all ranks)
    window: dict[str, list[float]] = field(default_factory=dict)

    def add(self, **values: float) -> None:
        for k, v in values.items():
            self.window.setdefault(k, []).append(v)

    def pop_means(self) -> dict[str, float]:
        """Means over the steps since the last call; skipped steps' NaNs are left out (NaN if all were)."""
        out = {}
        for k, values in self.window.items():
            finite = [v for v in values if math.isfinite(v)]
            out[k] = sum(finite) / len(finite) if finite else float("nan")
        self.window.clear()
        return out


# ---- the run ---------------------------------------------------------------------------------------------------------
def train(cfg: TrainConfig, command: str | None = None,
          data: ImageSource | TextSource | None = None) -> dict[str, Any]:
    """Meta-train a GHN as configured; returns a summary (final step, last losses, skipped steps, out dir).

    Runs in-process, or as one rank of a ``torchrun`` job (see :mod:`train.distributed`). ``data``: the training
    data, already opened (:func:`train.meta_train` passes a Python dataset this way); None opens ``cfg.dataset``.

    Raises:
        ConfigError: an invalid config or data directory; CheckpointError: an unusable ``cfg.resume``.
    """
    info = init_distributed(cfg.device)
    threads = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return _train(cfg, info, command, data)
    finally:
        torch.set_num_threads(threads)  # in-process callers (tests, notebooks) get their setting back
        shutdown(info)


def _train(cfg: TrainConfig, info: DistInfo, command: str | None, data: ImageSource | TextSource | None
           ) -> dict[str, Any]:
    out = Path(cfg.out)
    ckpt: Checkpoint | None = load_checkpoint(cfg.resume) if cfg.resume else None
    check_run_dir(out, ckpt, cfg.steps)  # ConfigError rather than overwrite a checkpoint, ours or another run's
    if ckpt is not None and int(ckpt.state.get("world_size", 1)) != info.world_size:
        raise ConfigError(f"{ckpt.path} was written by {ckpt.state.get('world_size')} processes; resume it with "
                          f"the same number (got {info.world_size}): each rank continues its own arch stream")
    if ckpt is not None and ckpt.step == cfg.steps and ckpt.path.parent.resolve() == out.resolve():
        logger.info("%s is at step %d already: nothing to do", ckpt.path, ckpt.step)
        return {"step": cfg.steps, "out": str(out), "skipped": int(ckpt.state.get("skipped", 0))}

    torch.manual_seed(cfg.seed)  # the same GHN init on every rank (DDP also broadcasts rank 0's weights)
    ghn = GHN(ghn_config(cfg)).to(info.device)
    task = make_task(cfg, info.rank, data)
    _set_metadata(ghn, cfg, command, task)
    decay = [p for p in ghn.parameters() if p.ndim >= 2]  # no weight decay on gains, biases and norms
    rest = [p for p in ghn.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(cfg))
    counters = Counters()
    start = 0
    arch_state = None
    if ckpt is not None:
        start, arch_state = _restore(ckpt, ghn, opt, sched, counters, cfg, info)
    elif cfg.init_from:  # warm start: the weights only; optimizer, schedule and arch stream start afresh
        _load_weights(ghn, ghn_location(cfg.init_from), info.device,
                      "set ghn_preset / ghn_overrides to the sizes of that GHN")
        logger.info("initialised the GHN from %s", cfg.init_from)
    ghn.train()

    stream = arch_dataset(cfg, info, arch_state, task)
    pool = ArchPool(stream, cfg.arch_pool, cfg.pool_refresh, cfg.meta_batch) if cfg.arch_pool else None
    archs = _arch_iterator(cfg, stream) if pool is None else None

    def prepare(step: int) -> StepInputs:
        x, y = task.batch(step)
        if pool is not None:
            return StepInputs(pool.draw(step), x, y, pool.stream_state(step), step)
        samples = [next(archs) for _ in range(cfg.meta_batch)]
        return StepInputs(samples, x, y, samples[-1].state, step)

    predictor: nn.Module = Predictor(ghn, cfg.amp, every_parameter=info.distributed)
    if info.distributed:
        predictor = DDP(predictor, device_ids=[info.device.index] if info.device.type == "cuda" else None,
                        forward_sync_buffers=False,  # the GHN's buffers are constants (index codes, role offsets)
                        find_unused_parameters=False)  # Predictor(every_parameter=True) reaches all of them

    last: dict[str, float] = {}
    busy, n_window = 0.0, 0  # seconds spent in steps (data wait included; checkpoints and evaluation not)
    arch_pos = arch_state[info.rank] if arch_state else None
    with Prefetcher(prepare, start, cfg.steps, cfg.prefetch) as prefetch:
        # The first step's archs and data are ready before the first file is written: constraints no arch
        # satisfies, or data that cannot be read, fail with --out untouched.
        t0 = time.perf_counter()
        first = prefetch.get(start) if start < cfg.steps else None
        t_first = time.perf_counter() - t0
        metrics = MetricsLog(out, start, enabled=info.is_main, resumed_from=ckpt.path.parent if ckpt else None)
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
            clean_partial_saves(out)
            atomic_write_text(out / CONFIG_YAML, cfg.to_yaml())
        bar = tqdm(total=cfg.steps, initial=start, disable=not info.is_main, desc="meta-train", unit="step",
                   dynamic_ncols=True, file=sys.stderr)
        for step in range(start, cfg.steps):
            t0 = time.perf_counter() - (t_first if step == start else 0.0)
            inp = first if step == start else prefetch.get(step)
            t_data = time.perf_counter() - t0
            lr = opt.param_groups[0]["lr"]  # the rate this step uses (logged before the schedule moves on)
            stats = _step(predictor, ghn, task, inp, opt, cfg, info, counters, pool)
            sched.step()
            arch_pos = inp.arch_state  # the stream position right after this step's archs
            counters.add(**stats, data_wait_s=t_data)
            busy += time.perf_counter() - t0
            n_window += 1
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                last = counters.pop_means()
                last.update(archs_per_s=n_window * cfg.meta_batch * info.world_size / busy,
                            lr=lr, skipped=counters.skipped)
                metrics.write(done, last)
                bar.set_postfix(loss=f"{last.get('loss', float('nan')):.3f}",
                                archs_s=f"{last['archs_per_s']:.1f}", skipped=counters.skipped)
                busy, n_window = 0.0, 0
            bar.update(1)
            if cfg.eval_archs and info.is_main and (done == cfg.steps or cfg.eval_every and done % cfg.eval_every == 0):
                metrics.write(done, _evaluate(ghn, cfg, task))
            if done % cfg.ckpt_every == 0 or done == cfg.steps:
                _save(out, done, ghn, opt, sched, counters, cfg, info, arch_pos, command)
                if info.is_main:
                    metrics.plot()
    bar.close()
    if start >= cfg.steps:  # resumed at the end into a new --out: still leave a checkpoint of the final state there
        _save(out, cfg.steps, ghn, opt, sched, counters, cfg, info, arch_pos, command)
    return {"step": cfg.steps, "out": str(out), "skipped": counters.skipped, **last}


def _step(predictor: nn.Module, ghn: GHN, task: Task, inp: StepInputs, opt: torch.optim.Optimizer,
          cfg: TrainConfig, info: DistInfo, counters: Counters, pool: ArchPool | None = None) -> dict[str, float]:
    """One meta-training step (see the module docstring); returns the rank-averaged losses and metrics."""
    dev = info.device
    x, y = inp.x.to(dev, non_blocking=True), inp.y.to(dev, non_blocking=True)
    # Modules are built here, not in the prefetch thread: their seeded init forks the global RNG, which must not
    # interleave with this thread's use of it (dropout), or runs would stop being reproducible.
    models = [pool.model(s, dev, inp.step) if pool is not None else s.spec.build(device=dev).train()
              for s in inp.samples]
    preds = predictor([s.graph for s in inp.samples])
    task_losses, regs, extra = [], [], {}
    for model, params in zip(models, preds):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cfg.amp):
            loss, m = task.loss(model, params, x, y)
        if cfg.loss_clip and loss.detach() > cfg.loss_clip:
            # An arch whose predicted weights blow up its activations (e.g. a deep norm-free CNN early in training)
            # can have a loss of 1e9 and would own the whole step. Scaled to the cap, it still pushes the GHN
            # towards smaller weights (same gradient direction) without drowning the other archs.
            loss = loss * (cfg.loss_clip / loss.detach())
            m["clipped"] = 1.0
        task_losses.append(loss)
        regs.append(sum(w.norm() for w in params.values()))  # sum of Frobenius norms of the predicted tensors
        for k, v in {"clipped": 0.0, **m}.items():
            extra[k] = extra.get(k, 0.0) + v / len(models)
    task_loss = torch.stack(task_losses).mean()
    reg = torch.stack(regs).mean()
    loss = task_loss + cfg.gamma * reg
    # One collective for the logged values and the skip decision, so all ranks skip (or not) together.
    finite = torch.isfinite(loss).float()
    vec = torch.stack([torch.nan_to_num(t.detach().float(), nan=0.0, posinf=0.0, neginf=0.0)
                       for t in (loss, task_loss, reg)] + [finite])
    vec = all_reduce_sum(vec.to(dev), info).cpu()
    counters.archs += len(models) * info.world_size
    n_finite = int(vec[3].item())
    opt.zero_grad(set_to_none=True)
    grad_norm = float("nan")
    if n_finite == info.world_size:
        loss.backward()
        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(ghn.parameters(), max_norm))
        if math.isfinite(grad_norm):
            opt.step()
        else:
            logger.warning("non-finite gradient norm: step skipped")
            counters.skipped += 1
    else:
        logger.warning("non-finite loss on %d of %d processes: step skipped", info.world_size - n_finite,
                       info.world_size)
        counters.skipped += 1
    opt.zero_grad(set_to_none=True)
    ok = n_finite == info.world_size
    mean = [v / info.world_size if ok else float("nan") for v in vec[:3].tolist()]  # NaN: left out of the means
    return {"loss": mean[0], "task_loss": mean[1], "reg": mean[2], "grad_norm": grad_norm, **extra}


def arch_dataset(cfg: TrainConfig, info: DistInfo, state: list[dict] | None, task: Task):
    """This rank's stream of training archs (a ``model_zoo.ArchDataset`` of ``cfg``'s families, split "train", fit to
    ``task``'s data), positioned where the checkpoint's arch-stream ``state`` left it (None: at the start).

    Also what ``benchmarks.train_step`` times: the very stream a run samples from.
    """
    from model_zoo import ArchDataset

    ds = ArchDataset(families=tuple(cfg.families), split="train", seed=cfg.seed,
                     constraints=zoo_constraints(cfg, task.source), cache_dir=cfg.graph_cache, rank=info.rank,
                     world_size=info.world_size)
    if state is not None:
        ds.load_state_dict(state[info.rank])
    return ds


def _arch_iterator(cfg: TrainConfig, ds) -> Iterator:
    """Iterate ``ds`` in this thread, or through ``cfg.workers`` DataLoader processes."""
    if cfg.workers == 0:
        return iter(ds)
    # Created here, in the main thread, so worker processes are forked before the prefetch thread starts.
    # Its own generator: otherwise starting the workers draws from the global RNG, and a resumed run (which starts
    # them again) would no longer replay the uninterrupted run's dropout masks.
    loader = torch.utils.data.DataLoader(ds, batch_size=None, num_workers=cfg.workers,
                                         prefetch_factor=max(2, cfg.meta_batch), persistent_workers=False,
                                         generator=torch.Generator().manual_seed(cfg.seed))
    return iter(loader)


def _save(out: Path, step: int, ghn: GHN, opt, sched, counters: Counters, cfg: TrainConfig, info: DistInfo,
          arch_pos: dict | None, command: str | None) -> None:
    """Gather every rank's RNG state and stream position; rank 0 writes the checkpoint."""
    rng = {"cpu": torch.get_rng_state()}
    if info.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(info.device)
    gathered = all_gather_objects({"rng": rng, "arch": arch_pos}, info)
    if not info.is_main:
        return
    tensors, opt_meta = optimizer_state(opt)
    for r, g in enumerate(gathered):
        for kind, t in g["rng"].items():
            tensors[f"rng.{kind}.{r}"] = t
    ghn.config.trained = step > 0
    ghn.config.notes = {**ghn.config.notes, **_notes(cfg, step, command)}  # keeps the data notes
    state = {"world_size": info.world_size, "optimizer": opt_meta, "scheduler": sched.state_dict(),
             "arch_stream": [g["arch"] for g in gathered], "skipped": counters.skipped, "archs": counters.archs,
             "git": git_hash(), "command": command, "machine": _machine(info)}
    path = save_checkpoint(out, step, ghn, state, tensors, cfg.to_yaml(), keep=cfg.keep_checkpoints)
    logger.info("checkpoint %s", path)


def _machine(info: DistInfo) -> str:
    """What the run computes on, for its model card's wall time: "a 2-core CPU", "2 processes on NVIDIA H200"."""
    if info.device.type == "cuda":
        where = torch.cuda.get_device_name(info.device)
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        where = f"a {cores}-core CPU"
    return where if info.world_size == 1 else f"{info.world_size} processes on {where}"


def _load_weights(ghn: GHN, path: str | Path, device: torch.device, fix: str) -> None:
    """Copy the weights of the GHN saved at ``path`` into ``ghn``; ConfigError when its sizes differ."""
    saved = GHN.from_pretrained(path, device=device)  # strict; raises CheckpointError
    # metadata and prediction rules, not weight shapes: a v2 predictor warm-starts a v3 run
    ignore = {"trained", "notes", "num_classes", "input_shape", "task", "vocab_size", "input_mean",
              "input_std", "branch_scale", "pooled_flatten", "centered_fan_in", "output_gain", "whitened_codes", "depth_code", "fused_blocks", "position_codes",
              "decoder_version"}
    mine = {k: v for k, v in ghn.config.to_dict().items() if k not in ignore}
    theirs = {k: v for k, v in saved.config.to_dict().items() if k not in ignore}
    if mine != theirs:
        diff = sorted(k for k in mine if mine[k] != theirs.get(k))
        raise ConfigError(f"{path} holds a GHN with other sizes ({diff}); {fix}")
    ghn.load_state_dict(saved.state_dict())


def _restore(ckpt: Checkpoint, ghn: GHN, opt, sched, counters: Counters, cfg: TrainConfig,
             info: DistInfo) -> tuple[int, list[dict] | None]:
    """Load GHN, optimizer, schedule, counters and this rank's RNG state; returns (step, arch stream states)."""
    _load_weights(ghn, ckpt.path, info.device, "resume with its own ghn_preset / ghn_overrides (omit them and "
                  "they are read from the checkpoint)")
    load_optimizer_state(opt, ckpt.tensors, ckpt.state["optimizer"])
    sched.load_state_dict(ckpt.state["scheduler"])
    counters.skipped, counters.archs = int(ckpt.state.get("skipped", 0)), int(ckpt.state.get("archs", 0))
    torch.set_rng_state(ckpt.tensors[f"rng.cpu.{info.rank}"])
    if info.device.type == "cuda" and f"rng.cuda.{info.rank}" in ckpt.tensors:
        torch.cuda.set_rng_state(ckpt.tensors[f"rng.cuda.{info.rank}"], info.device)
    logger.info("resumed from %s at step %d", ckpt.path, ckpt.step)
    return ckpt.step, ckpt.state.get("arch_stream")


def _evaluate(ghn: GHN, cfg: TrainConfig, task: Task) -> dict[str, float]:
    """Zero-shot metric on ``cfg.eval_archs`` held-out archs (rank 0 only; RNG untouched)."""
    from .evaluate import evaluate_archs, eval_specs, summarize

    specs = eval_specs(cfg.eval_archs, tuple(cfg.families), zoo_constraints(cfg, task.source))
    rows = evaluate_archs(ghn, specs, **task.eval_data(cfg.eval_images))
    key = "eval_acc" if cfg.task == "image" else "eval_loss"
    ghn.train()
    s = summarize(rows)["all"]
    return {f"{key}_ghn": s["ghn"], f"{key}_default": s["default"]}


def _notes(cfg: TrainConfig, step: int, command: str | None) -> dict[str, Any]:
    """Provenance written into the GHN's config.json and model card (the data's own notes: :func:`_set_metadata`)."""
    return {"task": cfg.task, "zoo": f"{'+'.join(cfg.families)} train split, max_params "
            f"{cfg.max_params}{', ' + json.dumps(cfg.zoo_constraints) if cfg.zoo_constraints else ''}",
            "steps": step, "meta_batch": cfg.meta_batch, "batch_size": cfg.batch_size,
            "command": command or "python -m train"}


def _set_metadata(ghn: GHN, cfg: TrainConfig, command: str | None, task: Task) -> None:
    """Fill the GHN's metadata (task, input shape, classes or vocabulary, normalisation) before anything is saved."""
    for key, value in task.metadata().items():
        setattr(ghn.config, key, value)
    src = task.source
    data = {"dataset": src.name, "data": src.describe()}
    data.update({"classes": src.classes} if src.task == "image" else {"tokenizer": src.tokenizer})
    ghn.config.notes = {**_notes(cfg, 0, command), **data}
