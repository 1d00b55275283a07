"""Speed: graph build and prediction time, relative to the model's own default initialisation.

For each model we time, in the same process and interleaved (so machine load hits all three alike):

* ``init``: constructing the model (its default random initialisation), on ``--device``;
* ``graph``: ``build_graph(model)`` (tracing with fake tensors);
* ``predict``: ``ghn.predict(model)``, graph build included (what a user waits for).

and report ``predict / init`` and ``graph / init`` (DESIGN.md goal: predict ≤ 1× init for ResNet-50 on CPU;
graph ≤ 0.1 s for ResNet-50 and ≤ 0.2 s for GPT-2 small). Also:

* the fraction of distinct values among the predicted ResNet-50 weights (tiling repeats blocks: GHN-3 gives ~3 %);
* GPT-2-large (774M) built on the ``meta`` device: ``ghn.predict`` (materialise + stream) vs transformers' own
  default init of the same model;
* graph build time vs number of nodes over families of growing depth (``speed_scaling.png``).

Run: ``python -m benchmarks.speed [--quick] [--device cuda]``. Writes ``results/speed.{md,json}`` and
``results/speed_scaling.png``.
"""
from __future__ import annotations

import argparse
import gc
import logging
import math
import statistics
from typing import Callable

import torch
import torch.nn as nn

from ghn import GHN, build_graph

from .common import add_common_args, env_info, ghn_label, load_ghn, md_table, setup, timed, write_results

__all__ = ["MODELS", "time_model", "distinct_values", "scaling", "large_model", "gpt2", "main"]

logger = logging.getLogger(__name__)


def gpt2(n_embd: int = 768, n_layer: int = 12, n_head: int = 12, **kw) -> nn.Module:
    """A GPT-2 LM built from a hand-written config (no download): default sizes are GPT-2 small (124M)."""
    from transformers import AutoModelForCausalLM, GPT2Config
    return AutoModelForCausalLM.from_config(GPT2Config(n_embd=n_embd, n_layer=n_layer, n_head=n_head, **kw))


def _timm(name: str, **kw) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        import timm
        return timm.create_model(name, pretrained=False, **kw)
    return make


#: name -> constructor (runs on the current default device, so ``with torch.device(...)`` places it).
MODELS: dict[str, Callable[[], nn.Module]] = {
    "ResNet-50": _timm("resnet50"),
    "ViT-B/16": _timm("vit_base_patch16_224"),
    "ConvNeXt-T": _timm("convnext_tiny"),
    "GPT-2 small": gpt2,
    "GPT-2 medium": lambda: gpt2(n_embd=1024, n_layer=24, n_head=16),
}


def time_model(make: Callable[[], nn.Module], ghn: GHN, device: torch.device | str = "cpu",
               repeat: int = 3, example_inputs=None) -> dict:
    """Fastest of ``repeat`` interleaved rounds of init / graph build / predict (after one warm-up round).

    ``example_inputs`` is for models that do not declare their input (timm and transformers models do).

    Returns:
        ``{"params", "nodes", "init_s", "graph_s", "predict_s", "predict_over_init", "graph_over_init",
        "predict_over_init_median", "rounds"}``: minimum times over rounds, their ratios, the median of the
        per-round ratios and every round's ``(init, graph, predict)`` seconds.
    """
    device = torch.device(device)
    rounds = []
    for r in range(repeat + 1):  # round 0 warms up caches (imports, fake-tensor dispatch tables, allocator)
        with torch.device(device):
            t_init, model = timed(make, device)
        t_graph, graph = timed(lambda: build_graph(model, example_inputs), device)
        t_pred, _ = timed(lambda: ghn.predict(model, example_inputs), device)
        if r:
            rounds.append((t_init, t_graph, t_pred))
        n_params, n_nodes = sum(p.numel() for p in model.parameters()), len(graph)
        del model, graph
        gc.collect()
    # Minimum over rounds: load from other processes only ever adds time, so the fastest round is the best
    # estimate of each step's own cost (as timeit recommends); the median per-round ratio is kept for reference.
    best = [min(x) for x in zip(*rounds)]
    return {"params": n_params, "nodes": n_nodes, "init_s": best[0], "graph_s": best[1], "predict_s": best[2],
            "predict_over_init": best[2] / best[0], "graph_over_init": best[1] / best[0],
            "predict_over_init_median": statistics.median(p / i for i, _, p in rounds), "rounds": rounds}


def distinct_values(tensors: dict[str, torch.Tensor]) -> dict:
    """How repetitive the weight matrices / kernels (ndim ≥ 2) in ``tensors`` are.

    Returns:
        ``overall``: distinct values / all values (tiling a decoded block drops this to block size / tensor size;
        GHN-3's reference code gives ~0.03 on ResNet-50); ``per_tensor``: the same within each tensor, averaged
        (weighted by size); ``duplicate_tensors``: the fraction of values that sit in a tensor identical to an
        earlier one (e.g. repeated blocks that got identical node embeddings).
    """
    mats = [t.detach().float().cpu() for t in tensors.values() if t.dim() >= 2]
    flat = torch.cat([t.reshape(-1) for t in mats])
    total = flat.numel()
    per_tensor = sum(torch.unique(t).numel() for t in mats) / total
    seen: dict[tuple, list[torch.Tensor]] = {}
    dup = 0
    for t in mats:
        same = seen.setdefault((tuple(t.shape), float(t.reshape(-1)[0])), [])
        if any(torch.equal(t, u) for u in same):
            dup += t.numel()
        else:
            same.append(t)
    return {"overall": torch.unique(flat).numel() / total, "per_tensor": per_tensor, "duplicate_tensors": dup / total}


def _scaling_models(quick: bool) -> dict[str, list[tuple[str, Callable[[], nn.Module]]]]:
    """Families of growing depth, built on meta (tracing cost does not depend on width)."""
    depths = (1, 4, 12, 48) if quick else (1, 2, 4, 8, 12, 24, 48, 96)
    fams = {"GPT-2 (n_layer)": [(f"gpt2-L{d}", lambda d=d: gpt2(n_embd=64, n_layer=d, n_head=2)) for d in depths]}
    fams["ResNet (timm)"] = [(n, _timm(n)) for n in (("resnet18", "resnet50") if quick else
                                                       ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"))]
    vit_depths = (1, 12) if quick else (1, 3, 6, 12, 24, 48)
    fams["ViT (depth)"] = [(f"vit-D{d}", _timm("vit_tiny_patch16_224", depth=d)) for d in vit_depths]
    return fams


def scaling(quick: bool = False, repeat: int = 3) -> list[dict]:
    """Graph build time (and the capped-BFS distances the GHN needs) vs number of nodes, models on meta.

    Each time is the fastest of ``repeat`` runs (after a warm-up)."""
    rows = []
    for family, models in _scaling_models(quick).items():
        for name, make in models:
            with torch.device("meta"):
                model = make()
            build_graph(model)  # warm-up
            times = []
            for _ in range(repeat):
                t, graph = timed(lambda: build_graph(model))
                t_dist, _ = timed(graph.distances)
                times.append((t, t_dist))
            rows.append({"family": family, "model": name, "nodes": len(graph), "edges": len(graph.edges),
                         "graph_s": min(t for t, _ in times),
                         "distances_s": min(d for _, d in times)})
    return rows


def _loglog_slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(max(y, 1e-9)) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / max(sum((a - mx) ** 2 for a in lx), 1e-12)


def plot_scaling(rows: list[dict], path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, family in enumerate(dict.fromkeys(r["family"] for r in rows)):
        fam = sorted((r for r in rows if r["family"] == family), key=lambda r: r["nodes"])
        ax.plot([r["nodes"] for r in fam], [r["graph_s"] for r in fam], "o-", color=f"C{i}",
                label=f"{family}: build_graph")
        ax.plot([r["nodes"] for r in fam], [r["distances_s"] for r in fam], "x:", color=f"C{i}", alpha=0.6,
                label=f"{family}: distances (BFS)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("graph nodes")
    ax.set_ylabel("seconds")
    ax.set_title("Graph build time vs graph size (models on meta)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def large_model(ghn: GHN, device: torch.device | str = "cpu", n_embd: int = 1280, n_layer: int = 36,
                n_head: int = 20) -> dict:
    """GPT-2-large (by default): transformers' default init on ``device`` vs ``ghn.predict`` of a meta build.

    Both allocate the full fp32 model once; they run one after the other (the first model is freed).
    """
    def make() -> nn.Module:
        return gpt2(n_embd=n_embd, n_layer=n_layer, n_head=n_head)

    with torch.device(device):
        t_init, model = timed(make, device)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    gc.collect()
    with torch.device("meta"):
        t_meta, model = timed(make)
    t_graph, graph = timed(lambda: build_graph(model))
    t_pred, _ = timed(lambda: ghn.predict(model, graph=graph, device=device), device)
    del model
    gc.collect()
    return {"params": n_params, "nodes": len(graph), "init_s": t_init, "meta_build_s": t_meta, "graph_s": t_graph,
            "predict_s": t_graph + t_pred, "predict_over_init": (t_graph + t_pred) / t_init}


def run(ghn: GHN, device: torch.device | str, quick: bool = False, models: list[str] | None = None,
        large: bool = True) -> dict:
    """All speed measurements; returns the JSON-able results dict."""
    repeat = 1 if quick else 5
    names = models or (["ResNet-50", "GPT-2 small"] if quick else list(MODELS))
    out: dict = {"models": {}}
    for name in names:
        logger.info("timing %s", name)
        out["models"][name] = time_model(MODELS[name], ghn, device, repeat)
    if "ResNet-50" in names:
        with torch.device(device):
            model = MODELS["ResNet-50"]()
        default = distinct_values(dict(model.named_parameters()))
        pred = distinct_values(dict(ghn.predict_params(model)))
        out["distinct_values_resnet50"] = {"predicted": pred, "default_init": default, "ghn3_reference_overall": 0.03}
    out["scaling"] = scaling(quick, 1 if quick else 3)
    if large and not quick:
        logger.info("timing GPT-2-large on meta")
        out["gpt2_large"] = large_model(ghn, device)
    return out


def to_markdown(res: dict, label: str, env: dict) -> str:
    rows = [{"model": k, "params": v["params"], "nodes": v["nodes"], "init (s)": v["init_s"],
             "build_graph (s)": v["graph_s"], "predict (s)": v["predict_s"], "graph / init": v["graph_over_init"],
             "predict / init": v["predict_over_init"], "predict / init (median)": v["predict_over_init_median"]}
            for k, v in res["models"].items()]
    parts = [f"# Speed\n\nGHN: {label}. Device: {env['device']}, torch threads: {env['torch_threads']}, "
             f"load average at start: {env['load_avg_1m']} on {env['cpu_count']} cores (shared machine: compare the "
             "ratios, which are measured in the same rounds). Fastest of interleaved rounds after a warm-up "
             "(`predict / init (median)`: median of the per-round ratios). "
             "`predict` includes the graph build. Goals: predict/init ≤ 1 for ResNet-50 (CPU); build_graph ≤ 0.1 s "
             "ResNet-50, ≤ 0.2 s GPT-2 small.\n", md_table(rows)]
    goals = []
    m = res["models"]
    if "ResNet-50" in m:
        r = m["ResNet-50"]
        goals.append(f"- ResNet-50 predict/init = {r['predict_over_init']:.2f} (goal ≤ 1): "
                     f"{'met' if r['predict_over_init'] <= 1 else 'MISSED'}")
        goals.append(f"- ResNet-50 build_graph = {r['graph_s']:.3f} s (goal ≤ 0.1 s): "
                     f"{'met' if r['graph_s'] <= 0.1 else 'MISSED'}")
    if "GPT-2 small" in m:
        g = m["GPT-2 small"]["graph_s"]
        goals.append(f"- GPT-2 small build_graph = {g:.3f} s (goal ≤ 0.2 s): {'met' if g <= 0.2 else 'MISSED'}")
    if "distinct_values_resnet50" in res:
        d = res["distinct_values_resnet50"]
        p, i = d["predicted"], d["default_init"]
        goals.append(f"- Distinct values among predicted ResNet-50 weights: {100 * p['overall']:.1f} % overall, "
                     f"{100 * p['per_tensor']:.1f} % within tensors (default init: {100 * i['overall']:.1f} % / "
                     f"{100 * i['per_tensor']:.1f} %; GHN-3 reference tiling: ~3 % overall). "
                     f"{100 * p['duplicate_tensors']:.1f} % of the predicted values are in tensors identical to "
                     "another layer's (same node embedding).")
    if "gpt2_large" in res:
        g = res["gpt2_large"]
        goals.append(f"- GPT-2-large ({g['params'] / 1e6:.0f}M) on meta: predict {g['predict_s']:.1f} s (graph "
                     f"{g['graph_s']:.2f} s) vs transformers default init {g['init_s']:.1f} s → "
                     f"{g['predict_over_init']:.2f}×")
    parts += ["\n## Goals\n", "\n".join(goals)]
    sc = res["scaling"]
    parts += ["\n## Graph build time vs nodes (models on meta; `speed_scaling.png`)\n",
              md_table([{k: r[k] for k in ("family", "model", "nodes", "edges", "graph_s", "distances_s")}
                        for r in sc])]
    slopes = []
    for fam in dict.fromkeys(r["family"] for r in sc):
        rr = [r for r in sc if r["family"] == fam]
        if len(rr) > 1:
            slopes.append(f"{fam}: {_loglog_slope([r['nodes'] for r in rr], [r['graph_s'] for r in rr]):.2f}")
    parts.append(f"\nLog-log slope of build_graph time vs nodes (1 = linear): {', '.join(slopes)}.")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    p.add_argument("--quick", action="store_true", help="ResNet-50 and GPT-2 small, one round, small scaling sweep")
    p.add_argument("--models", nargs="*", choices=list(MODELS), default=None, help="subset of models to time")
    p.add_argument("--no-large", action="store_true", help="skip GPT-2-large (allocates ~3 GB twice)")
    p.add_argument("--tag", default="", help="suffix of the results' file names (e.g. the machine)")
    p.set_defaults(threads=1)  # shared machine: one thread gives stable ratios; pass --threads N to change
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ghn").setLevel(logging.ERROR)  # the untrained-GHN warning would fire every round
    device = setup(args)
    ghn = load_ghn(args.ghn, device)
    label = ghn_label(ghn, args.ghn)
    env = env_info(device)
    res = run(ghn, device, args.quick, args.models, large=not args.no_large)
    res.update(env=env, ghn=label, quick=args.quick)
    # timings are device-specific: a CUDA run gets its own files
    name = "speed" + ("_quick" if args.quick else "") + ("" if device.type == "cpu" else f"_{device.type}")
    name += f"_{args.tag}" if args.tag else ""
    plot_scaling(res["scaling"], args.out / f"{name}_scaling.png")
    md = to_markdown(res, label, env)
    write_results(args.out, name, res, md)
    print(md)


if __name__ == "__main__":
    main()
