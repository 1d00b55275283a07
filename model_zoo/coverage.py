"""Coverage report: which timm and transformers models the GHN handles, and why not the others.

    python -m model_zoo.coverage                 # all timm archs + transformers configs (10-20 min on 2 cores)
    python -m model_zoo.coverage --quick         # every 25th timm arch + transformers configs (about a minute)
    python -m model_zoo.coverage --limit 50      # the first 50 timm archs

For each model: build it on the meta device (``pretrained=False``, timm's default classes and input size),
``ghn.build_graph(model)`` with the model's own default inputs, and, if it has at most ``--predict-max-params``
parameters, ``GHN(GHNConfig.preset("tiny")).predict_params(model, graph=graph)`` with a shape check of every
predicted tensor. Coverage is ``graph.coverage`` (a ``ghn.CoverageReport``). Writes a table (model, graph nodes,
parameters, coverage fraction, error type) and a summary to ``model_zoo/results/coverage.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import re
import signal
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .spec import count_params

__all__ = ["HF_CONFIGS", "check_model", "timm_entries", "hf_entries", "main"]
log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"

_CAUSAL, _MLM, _S2S, _IMG = ("AutoModelForCausalLM", "AutoModelForMaskedLM", "AutoModelForSeq2SeqLM",
                             "AutoModelForImageClassification")
_SMALL_LM = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4)
# name -> (config class, auto class, config kwargs); small configs of each architecture plus a few full-size ones.
HF_CONFIGS: dict[str, tuple[str, str, dict]] = {
    "gpt2-small-cfg": ("GPT2Config", _CAUSAL, dict(n_layer=2, n_embd=64, n_head=4)),
    "gpt2": ("GPT2Config", _CAUSAL, {}),
    "gpt2-large": ("GPT2Config", _CAUSAL, dict(n_layer=36, n_embd=1280, n_head=20)),
    "llama-small-cfg": ("LlamaConfig", _CAUSAL, dict(_SMALL_LM, num_key_value_heads=2)),
    "llama-1b-like": ("LlamaConfig", _CAUSAL, dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                                                   num_attention_heads=32, num_key_value_heads=8,
                                                   tie_word_embeddings=True)),
    "mistral-small-cfg": ("MistralConfig", _CAUSAL, dict(_SMALL_LM, num_key_value_heads=2)),
    "qwen2-small-cfg": ("Qwen2Config", _CAUSAL, dict(_SMALL_LM, num_key_value_heads=2)),
    "qwen3-small-cfg": ("Qwen3Config", _CAUSAL, dict(_SMALL_LM, num_key_value_heads=2, head_dim=16)),
    "gemma-small-cfg": ("GemmaConfig", _CAUSAL, dict(_SMALL_LM, num_key_value_heads=1, head_dim=16)),
    "phi-small-cfg": ("PhiConfig", _CAUSAL, dict(_SMALL_LM)),
    "gpt_neox-small-cfg": ("GPTNeoXConfig", _CAUSAL, dict(_SMALL_LM)),
    "opt-small-cfg": ("OPTConfig", _CAUSAL, dict(hidden_size=64, ffn_dim=128, num_hidden_layers=2,
                                                 num_attention_heads=4, word_embed_proj_dim=64)),
    "bloom-small-cfg": ("BloomConfig", _CAUSAL, dict(hidden_size=64, n_layer=2, n_head=4)),
    "falcon-small-cfg": ("FalconConfig", _CAUSAL, dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4)),
    "bert-small-cfg": ("BertConfig", _MLM, dict(_SMALL_LM)),
    "bert-base": ("BertConfig", _MLM, {}),
    "roberta-small-cfg": ("RobertaConfig", _MLM, dict(_SMALL_LM)),
    "distilbert-small-cfg": ("DistilBertConfig", _MLM, dict(dim=64, hidden_dim=128, n_layers=2, n_heads=4)),
    "t5-small-cfg": ("T5Config", _S2S, dict(d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4)),
    "vit-hf-small-cfg": ("ViTConfig", _IMG, dict(_SMALL_LM, image_size=32, patch_size=8)),
}


class ZooTimeout(TimeoutError):
    """One model took longer than --timeout seconds."""


@contextlib.contextmanager
def _deadline(seconds: int):
    # SIGALRM interrupts Python code (not a single long C call); enough to stop a model that loops or crawls.
    def handler(signum, frame):
        raise ZooTimeout(f"more than {seconds}s")

    old = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def check_model(name: str, source: str, make: Callable[[], nn.Module], ghn_model=None,
                predict_max_params: int = 10_000_000, timeout: int = 300) -> dict:
    """Build ``make()`` on meta, build its graph, maybe predict; return one report row (never raises)."""
    from ghn import build_graph
    from ghn.errors import GHNError

    row: dict = {"source": source, "model": name, "params": None, "nodes": None, "coverage": None, "missing": None,
                 "predicted": False, "stage": None, "error": None, "typed": None, "message": None}
    t0 = time.perf_counter()
    stage = "build"
    try:
        with _deadline(timeout):
            with torch.device("meta"):
                model = make()
            row["params"] = count_params(model)
            stage = "graph"
            graph = build_graph(model)
            cov = graph.coverage
            row.update(nodes=len(graph), coverage=cov.fraction, missing=len(cov.missing),
                       missing_reasons=dict(list(cov.missing.items())[:20]))
            if ghn_model is not None and row["params"] <= predict_max_params:
                stage = "predict"
                pred = ghn_model.predict_params(model, graph=graph)
                shapes = dict(model.named_parameters())
                bad = [k for k, v in pred.items() if k not in shapes or tuple(v.shape) != tuple(shapes[k].shape)]
                if bad:
                    raise AssertionError(f"predicted shapes differ from the model's for {bad[:3]}")
                row["predicted"] = True
    except Exception as e:  # noqa: BLE001 - every failure becomes a row with its type
        msg = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
        row.update(stage=stage, error=type(e).__name__, typed=isinstance(e, GHNError), message=msg)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def timm_entries(limit: int | None = None, every: int = 1) -> list[tuple[str, Callable[[], nn.Module]]]:
    import timm

    names = timm.list_models()[::every][:limit]
    return [(n, lambda n=n: timm.create_model(n, pretrained=False)) for n in names]


def hf_entries() -> list[tuple[str, Callable[[], nn.Module]]]:
    import transformers

    def make(cfg_cls: str, auto: str, kw: dict) -> nn.Module:
        cfg = getattr(transformers, cfg_cls)(**kw)
        return getattr(transformers, auto).from_config(cfg)

    return [(n, lambda c=c, a=a, k=k: make(c, a, k)) for n, (c, a, k) in HF_CONFIGS.items()]


def _pattern(msg: str) -> str:
    """A failure message with names and numbers blanked, to group failures of one cause."""
    msg = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", msg or "")
    return re.sub(r"\d+", "N", msg)[:140]


def summarise(rows: list[dict]) -> dict:
    out = {}
    for source in ("timm", "transformers"):
        rs = [r for r in rows if r["source"] == source]
        if not rs:
            continue
        full = [r for r in rs if r["coverage"] == 1.0 and not r["error"]]
        out[source] = {"total": len(rs), "coverage_1.0": len(full), "fraction_full": len(full) / len(rs),
                       "partial": sum(r["coverage"] is not None and r["coverage"] < 1.0 for r in rs),
                       "failed": sum(bool(r["error"]) for r in rs),
                       "failed_untyped_in_ghn": sum(bool(r["error"]) and r["stage"] != "build" and not r["typed"]
                                                    for r in rs),
                       "predicted": sum(r["predicted"] for r in rs)}
    causes: dict = collections.defaultdict(list)
    for r in rows:
        if r["error"]:
            causes[(r["stage"], r["error"], _pattern(r["message"]))].append(r["model"])
    out["failure_causes"] = [{"stage": s, "error": e, "pattern": p, "count": len(m), "examples": m[:5]}
                             for (s, e, p), m in sorted(causes.items(), key=lambda kv: -len(kv[1]))]
    missing: dict = collections.defaultdict(set)
    for r in rows:
        for why in (r.get("missing_reasons") or {}).values():
            missing[_pattern(why)].add(r["model"])
    out["missing_causes"] = [{"pattern": p, "count": len(m), "examples": sorted(m)[:5]}
                             for p, m in sorted(missing.items(), key=lambda kv: -len(kv[1]))]
    return out


def write_report(rows: list[dict], out: Path, elapsed: float, args: str) -> dict:
    import ghn
    import timm
    import transformers

    summ = summarise(rows)
    lines = ["# Coverage report", "",
             f"`python -m model_zoo.coverage {args}`: ghn {ghn.__version__}, timm {timm.__version__}, transformers "
             f"{transformers.__version__}, torch {torch.__version__}; {elapsed / 60:.1f} min.", "",
             "Each model is built on the meta device (`pretrained=False`, default classes and input size), its graph "
             "is built with its default inputs, and models of at most the predict threshold are also predicted by "
             "an untrained `GHN(GHNConfig.preset('tiny'))`. Coverage = fraction of parameter elements bound to "
             "graph nodes (predicted).", "", "## Summary", "",
             "| source | models | coverage 1.0 | share | partial | failed | failed in ghn, untyped | predicted |",
             "|---|---|---|---|---|---|---|---|"]
    for source in ("timm", "transformers"):
        if source in summ:
            s = summ[source]
            lines.append(f"| {source} | {s['total']} | {s['coverage_1.0']} | {s['fraction_full']:.1%} | "
                         f"{s['partial']} | {s['failed']} | {s['failed_untyped_in_ghn']} | {s['predicted']} |")
    lines += ["", "## Failure causes (most common first)", "", "| count | stage | error | message pattern | examples |",
              "|---|---|---|---|---|"]
    lines += [f"| {c['count']} | {c['stage']} | {c['error']} | {c['pattern'].replace('|', '/')} | "
              f"{', '.join(c['examples'])} |" for c in summ["failure_causes"]]
    lines += ["", "## Parameters not covered (most common reasons)", "", "| models | reason pattern | examples |",
              "|---|---|---|"]
    lines += [f"| {c['count']} | {c['pattern'].replace('|', '/')} | {', '.join(c['examples'])} |"
              for c in summ["missing_causes"][:30]]
    lines += ["", "## All models", "", "| source | model | nodes | params | coverage | predicted | error | seconds |",
              "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        cov = "" if r["coverage"] is None else f"{r['coverage']:.4f}"
        err = f"{r['stage']}: {r['error']}" if r["error"] else ""
        lines.append(f"| {r['source']} | {r['model']} | {r['nodes'] or ''} | {r['params'] or ''} | {cov} | "
                     f"{'yes' if r['predicted'] else ''} | {err} | {r['seconds']} |")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"summary": summ, "rows": rows}, indent=1))
    return summ


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="every 25th timm arch (plus all transformers configs)")
    ap.add_argument("--limit", type=int, default=None, help="at most N timm archs")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers configs")
    ap.add_argument("--no-predict", action="store_true", help="graphs only, no GHN prediction")
    ap.add_argument("--predict-max-params", type=int, default=10_000_000,
                    help="predict models with at most this many parameters (default 10M)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per model")
    ap.add_argument("--out", type=Path, default=RESULTS / "coverage.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    for noisy in ("ghn", "transformers", "timm"):  # the report has what matters; keep the log readable
        logging.getLogger(noisy).setLevel(logging.ERROR)
    import warnings

    warnings.filterwarnings("ignore")
    from ghn import GHN, GHNConfig

    ghn_model = None if args.no_predict else GHN(GHNConfig.preset("tiny"))
    entries = [("timm", n, f) for n, f in timm_entries(args.limit, 25 if args.quick else 1)]
    if not args.no_hf:
        entries += [("transformers", n, f) for n, f in hf_entries()]
    rows, t0 = [], time.perf_counter()
    argstr = " ".join(argv if argv is not None else __import__("sys").argv[1:])
    for i, (source, name, make) in enumerate(entries):
        rows.append(check_model(name, source, make, ghn_model, args.predict_max_params, args.timeout))
        r = rows[-1]
        log.info("%d/%d %s %s nodes=%s cov=%s %s %.1fs", i + 1, len(entries), source, name, r["nodes"],
                 r["coverage"], r["error"] or "", r["seconds"])
        if (i + 1) % 100 == 0:
            write_report(rows, args.out, time.perf_counter() - t0, argstr)
    summ = write_report(rows, args.out, time.perf_counter() - t0, argstr)
    for source in ("timm", "transformers"):
        if source in summ:
            log.info("%s: %s", source, {k: v for k, v in summ[source].items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
