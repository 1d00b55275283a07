"""Size: GHN parameters vs the targets it predicts untiled, and what width-tied decoders would need.

Our decoder writes ``W = Φ_out·U·V·Φ_inᵀ`` with fixed index codes ``Φ``, so no GHN parameter depends on the
target's width: one GHN covers any width. For comparison we compute, from their published code, the size of
decoders whose output is tied to a maximum width ``C`` and which would therefore need ``C`` ≥ the target's
widest dimension to avoid tiling:

* GHN-3 ``ConvDecoder3`` (SamsungSAILMontreal/ghn3 ``ghn3/nn.py``, from ppuda ``ConvDecoder``), hidden ``h``,
  max kernel ``K`` (16 in GHN-3), ``n`` classes: ``Linear(h, 4h·K²)`` → ``Linear(4h, 8h)`` →
  ``Linear(8h, C²)`` (a full ``C×C`` block per node) + class head ``Linear(C, n)``::

      P_ghn3(C) = (h+1)·4h·K² + (4h+1)·8h + (8h+1)·C² + (C+1)·n

* LoGAH ``ConvDecoder3LoRA`` (low-rank, still tied to a max width): ``MLP(h → 4h → 2r²)`` then
  ``Linear(r, C·k)`` emitting the factors' rows::

      P_logah(C) = (h+1)·4h + (4h+1)·2r² + (r+1)·C·k

We use the same ``h`` and ``r`` as our GHN (so the graph encoder is identical and only the decoder differs), and
``C·k`` = the widest factor any predicted tensor needs (``max(c_out·k_h, c_in·k_w)``, vocabularies included).

Run: ``python -m benchmarks.size``. Writes ``results/size.{md,json}``.
"""
from __future__ import annotations

import argparse
import logging
from typing import Callable

import torch
import torch.nn as nn

from ghn import GHN, GHNConfig, build_graph
from ghn.graph import canonical_shape

from .common import add_common_args, ghn_label, load_ghn, md_table, setup, write_results
from .speed import _timm, gpt2

__all__ = ["TARGETS", "widest", "ghn3_decoder_params", "logah_decoder_params", "run", "main"]

TARGETS: dict[str, Callable[[], nn.Module]] = {
    "ResNet-50": _timm("resnet50"),
    "ViT-B/16": _timm("vit_base_patch16_224"),
    "GPT-2 small": gpt2,
    "GPT-2 medium": lambda: gpt2(n_embd=1024, n_layer=24, n_head=16),
    "GPT-2-large": lambda: gpt2(n_embd=1280, n_layer=36, n_head=20),
    "GPT-2-XL (1.5B)": lambda: gpt2(n_embd=1600, n_layer=48, n_head=25),
}


def widest(model: nn.Module) -> dict:
    """Parameter count, graph coverage and the widest dims of the tensors a GHN predicts for ``model``.

    Returns:
        ``params``; ``coverage`` (fraction of parameters bound to the graph, i.e. predicted);
        ``max_dim``: the largest c_out / c_in / vector length; ``max_dim_no_embed``: the same without
        embedding tables (vocabularies); ``max_factor``: the largest ``c_out·k_h`` or ``c_in·k_w``.
    """
    graph = build_graph(model)
    dims, dims_no_embed, factors = [1], [1], [1]
    for _, info in graph.params:
        shape = canonical_shape(info.role, info.shape)
        k = shape[2:]
        kh, kw = (k[0] if k else 1), (int(torch.tensor(k[1:]).prod()) if len(k) > 1 else 1)
        d = max(shape[:2]) if shape else 1
        dims.append(d)
        if info.role != "embedding":
            dims_no_embed.append(d)
        factors.append(max(shape[0] * kh, (shape[1] * kw) if len(shape) > 1 else 0) if shape else 1)
    return {"params": sum(p.numel() for p in model.parameters()), "coverage": graph.coverage.fraction,
            "max_dim": max(dims), "max_dim_no_embed": max(dims_no_embed), "max_factor": max(factors)}


def ghn3_decoder_params(c: int, h: int, k_max: int = 16, num_classes: int = 10) -> int:
    """Parameters of a GHN-3 ``ConvDecoder3`` emitting full ``c × c × k_max × k_max`` blocks (module docstring)."""
    return (h + 1) * 4 * h * k_max ** 2 + (4 * h + 1) * 8 * h + (8 * h + 1) * c * c + (c + 1) * num_classes


def logah_decoder_params(ck: int, h: int, r: int) -> int:
    """Parameters of a LoGAH ``ConvDecoder3LoRA`` whose factor rows reach ``ck`` (module docstring)."""
    return (h + 1) * 4 * h + (4 * h + 1) * 2 * r * r + (r + 1) * ck


def run(ghn: GHN, targets: dict[str, Callable[[], nn.Module]] | None = None) -> dict:
    """Sizes of ``ghn`` (and of the other presets) and of the width-tied decoders each target would need."""
    c = ghn.config
    n_ghn = sum(p.numel() for p in ghn.parameters())
    n_dec = sum(p.numel() for p in ghn.decoder.parameters())
    n_enc = n_ghn - n_dec
    presets = {}
    for name in ("tiny", "small", "base"):
        with torch.device("meta"):
            g = GHN(GHNConfig.preset(name))
        presets[name] = {"params": sum(p.numel() for p in g.parameters()),
                         "decoder": sum(p.numel() for p in g.decoder.parameters())}
    rows = []
    for name, make in (targets or TARGETS).items():
        with torch.device("meta"):
            model = make()
        w = widest(model)
        ghn3 = n_enc + ghn3_decoder_params(w["max_dim"], c.hidden_dim, num_classes=c.num_classes or 10)
        ghn3_ne = n_enc + ghn3_decoder_params(w["max_dim_no_embed"], c.hidden_dim, num_classes=c.num_classes or 10)
        logah = n_enc + logah_decoder_params(w["max_factor"], c.hidden_dim, c.rank)
        rows.append({"target": name, **w, "ghn_params": n_ghn, "ghn_over_target": n_ghn / w["params"],
                     "ghn3_style_params": ghn3, "ghn3_style_params_no_embed": ghn3_ne,
                     "ghn3_over_target": ghn3 / w["params"], "logah_style_params": logah})
    return {"ghn": {"params": n_ghn, "encoder": n_enc, "decoder": n_dec, "hidden_dim": c.hidden_dim,
                    "rank": c.rank, "basis": c.basis},
            "presets": presets, "targets": rows}


def to_markdown(res: dict, label: str) -> str:
    g = res["ghn"]
    rows = [{"target": r["target"], "target params": r["params"], "coverage": r["coverage"],
             "widest dim": r["max_dim"], "widest (no vocab)": r["max_dim_no_embed"],
             "ours (any width)": r["ghn_params"], "ours / target": f"1/{1 / r['ghn_over_target']:,.0f}",
             "GHN-3-style, full C×C": r["ghn3_style_params"], "GHN-3-style, no vocab": r["ghn3_style_params_no_embed"],
             "LoGAH-style, C·k rows": r["logah_style_params"]} for r in res["targets"]]
    large = next((r for r in res["targets"] if r["target"] == "GPT-2-large"), None)
    goal = ""
    if large:
        ratio = large["ghn_params"] / large["params"]
        goal = (f"\n**Goal** GHN ≤ 1/100 of GPT-2-large: ours is {large['ghn_params']:,} / {large['params']:,} = "
                f"1/{1 / ratio:,.0f}: {'met' if ratio <= 0.01 else 'MISSED'}. A GHN-3-style decoder emitting full "
                f"blocks would need {large['ghn3_style_params_no_embed']:,} parameters to cover GPT-2-large's "
                f"widest non-vocabulary dim ({large['ghn3_style_params_no_embed'] / large['params']:.0f}× the "
                f"target), {large['ghn3_style_params']:,} with the vocabulary. A LoGAH-style low-rank decoder grows "
                f"only linearly with width ({large['logah_style_params']:,} here), but still has to be re-sized "
                "(and re-trained) for a wider target; ours does not.\n")
    presets = ", ".join(f"{k}: {v['params']:,} (decoder {v['decoder']:,})" for k, v in res["presets"].items())
    return "\n".join([
        f"# Size\n\nGHN: {label}: encoder {g['encoder']:,} + decoder {g['decoder']:,} parameters "
        f"(hidden {g['hidden_dim']}, rank {g['rank']}, index-code size {g['basis']}). No GHN parameter depends on "
        "the target's width, so one GHN predicts every target below untiled (coverage = fraction of the target's "
        "parameters bound to graph nodes, i.e. predicted).\n",
        "Width-tied decoders, same encoder and hidden size, sized to avoid tiling (formulas in "
        "`benchmarks/size.py`): GHN-3-style `P = (h+1)·4h·16² + (4h+1)·8h + (8h+1)·C² + (C+1)·n` with C = widest "
        "dim; LoGAH-style `P = (h+1)·4h + (4h+1)·2r² + (r+1)·C·k` with C·k = widest factor.\n",
        md_table(rows), goal, f"Presets (parameters): {presets}."])


def main(argv: list[str] | None = None) -> None:
    p = add_common_args(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    device = setup(args)
    ghn = load_ghn(args.ghn, device)
    label = ghn_label(ghn, args.ghn)
    res = run(ghn)
    res["ghn_label"] = label
    md = to_markdown(res, label)
    write_results(args.out, "size", res, md)
    print(md)


if __name__ == "__main__":
    main()
