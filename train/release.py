"""Turn a training checkpoint into a released predictor: Hub layout plus a model card with measured numbers.

    python -m train.release runs/fmnist --eval eval.json --to checkpoints/ghn-fmnist
    python -m train.release runs/fortunes --quality benchmarks/results/quality_lm.md --to checkpoints/ghn-fortunes

Writes ``config.json`` + ``model.safetensors`` (``GHN.save_pretrained``; the optimizer and RNG state stay behind)
and a ``README.md`` model card: how it was trained (command, data, zoo, steps, wall time, final loss), the zero-shot
evaluation on held-out archs from ``python -m train.evaluate --out eval.json``, and how to re-measure it. What the
card says about the data (its name, normalisation, classes or vocabulary, Hub tags) comes from the GHN's config.json;
its snippet loads the predictor from ``--to``, or from ``--repo-id ORG/NAME`` when it is to be pushed to the Hub.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ghn import GHN
from ghn.errors import GHNError
from ghn.shipped import resolve_predictor

from .checkpoint import CONFIG_YAML, atomic_write_text, ghn_location, load_checkpoint
from .config import load_yaml
from .datasets import parse_dataset
from .evaluate import BN_BATCH_SIZE, BN_BATCHES
from .metrics import METRICS, read_metrics

__all__ = ["release", "model_card", "earlier_stages", "main"]

# Public datasets a card can name for the Hub: the name a run records (a spec's kind, or a torchvision dataset's name,
# lower-cased) -> (how the card writes it, its tag, its Hub dataset id). Other data (an image folder, a text file,
# Python data) is named by its spec, with no dataset tag.
PUBLIC_DATASETS = {"fashion-mnist": ("Fashion-MNIST", "fashion-mnist", "fashion_mnist"),
                   "fashionmnist": ("Fashion-MNIST", "fashion-mnist", "fashion_mnist"),
                   "mnist": ("MNIST", "mnist", "mnist"), "cifar10": ("CIFAR-10", "cifar10", "cifar10"),
                   "cifar100": ("CIFAR-100", "cifar100", "cifar100")}


def _training_summary(records: list[dict[str, Any]]) -> dict[str, Any]:
    train = [r for r in records if r.get("loss") is not None]
    key = "eval_acc" if any("eval_acc_ghn" in r for r in records) else "eval_loss"
    evals = [r for r in records if f"{key}_ghn" in r]
    if not train:
        return {}
    last = train[-1]
    # time between consecutive records, leaving out pauses (a run stopped and resumed later: > 10x the median)
    gaps = sorted(b["time"] - a["time"] for a, b in zip(train, train[1:]))
    median = gaps[len(gaps) // 2] if gaps else 0.0
    busy = sum(g for g in gaps if g <= 10 * median)
    # the first record's time is stamped after its log_every steps; extrapolate back to step 0
    per_step = busy / max(1, last["step"] - train[0]["step"])
    return {"wall_min": (busy + per_step * train[0]["step"]) / 60,
            "final_loss": last["loss"], "final_train_acc": last.get("acc"), "skipped": last.get("skipped", 0),
            "eval_metric": key, "evals": [(r["step"], r[f"{key}_ghn"], r[f"{key}_default"]) for r in evals]}


def _dataset(spec: str | None) -> tuple[str, str | None, str | None]:
    """``(how the card names it, Hub tag, Hub dataset id)`` of the data a run recorded (its ``--dataset`` spec)."""
    if not spec:
        return "its training data", None, None
    kind, arg = parse_dataset(spec)
    public = PUBLIC_DATASETS.get(arg.split(":")[0].lower() if kind == "torchvision" else kind)
    return public if public is not None else (spec, None, None)


def _normalisation(mean: list[float], std: list[float]) -> str:
    """``(pixel/255 - 0.2860) / 0.3530`` for one channel; per-channel lists otherwise."""
    if len(mean) == 1 and len(std) == 1:
        return f"(pixel/255 - {mean[0]:.4f}) / {std[0]:.4f}"
    return f"(pixel/255 - [{', '.join(f'{m:.4f}' for m in mean)}]) / [{', '.join(f'{v:.4f}' for v in std)}]"


def _intro(ghn: GHN, name: str, preset: str, where: str) -> list[str]:
    """Front matter, title, what the predictor is for, and how to use it (per task); ``where``: what
    ``GHN.from_pretrained`` loads it from (the release directory or the Hub repo id)."""
    c = ghn.config
    n = sum(p.numel() for p in ghn.parameters())
    data, tag, hub_id = _dataset(c.notes.get("dataset"))
    if c.task == "lm":
        tags = ["language-model"]
        what = f"causal language models over a vocabulary of {c.vocab_size} tokens (bytes when 256)"
        takes = "any causal LM taking (B, T) token ids"
        note = (f"Trained on windows of {c.input_shape[0] if c.input_shape else '?'} tokens; models are traced with "
                "token ids of that length unless they declare their own inputs.")
    else:
        shape = "x".join(map(str, c.input_shape)) if c.input_shape else "?"
        tags = []
        what = f"{shape} image classifiers with {c.num_classes} classes"
        takes = f"any nn.Module taking (B, {', '.join(map(str, c.input_shape or []))}) inputs"
        norm = (f"Inputs follow the {data} convention `x = {_normalisation(c.input_mean, c.input_std)}`. "
                if c.input_mean and c.input_std else "")
        note = (f"{norm}If the model has BatchNorm, recompute its statistics on a few training batches "
                "(`bn=\"recalibrate\"`, `bn_data=...`).")
    tags += [tag] if tag else []
    return ["---", "library_name: ghn", "license: mit",
            f"tags: [graph-hypernetwork, parameter-prediction, ghn{''.join(', ' + t for t in tags)}]",
            *([f"datasets: [{hub_id}]"] if hub_id else []), "---", f"# {name}", "",
            f"A graph hypernetwork (package `ghn`, {n:,} parameters, preset `{preset}`) meta-trained to predict the "
            f"parameters of {what}, in one forward pass.", "",
            "```python", "from ghn import GHN", f'ghn = GHN.from_pretrained("{where}")',
            f"model = ghn.predict(model)   # {takes}: parameters written in place", "```", "", note] + (
            ["", f"`predict` multiplies the gain that ends each residual branch by {c.branch_scale:g} (`config.json` "
             "`branch_scale`, a calibration measured in the evaluation below: rows `ghn` use it, rows `ghn_raw` do "
             "not); `branch_scale=1.0` gives the raw prediction."] if c.branch_scale != 1.0 else [])


def _count(n: Any) -> str:
    """``1,000`` for a number, ``?`` when the run did not record it."""
    return f"{n:,}" if isinstance(n, int) else "?"


def _zero_shot_section(evaluation: dict[str, Any], dataset: str | None) -> list[str]:
    """The image card's table of ``python -m train.evaluate`` results (``dataset``: the run's, when the evaluation
    predates recording its own)."""
    s = evaluation["summary"]
    data = _dataset(evaluation.get("dataset") or dataset)[0]
    lines = ["", "## Evaluation: zero-shot on held-out architectures", "",
             f"{evaluation['archs']} architectures of the training distribution ({', '.join(evaluation['families'])}"
             f"; constraints `{json.dumps(evaluation['constraints'])}`) from model_zoo's **held-out split**, "
             "never seen in meta-training. Test accuracy (%) on the "
             f"{evaluation['test_images']:,} {data} test images with no training: parameters from "
             "`ghn.predict` vs the model's own default (random) initialisation; models with BatchNorm get "
             f"their statistics recomputed from {BN_BATCHES} training batches of {BN_BATCH_SIZE} images first (both "
             "inits).", "",
             "| archs | n | GHN (zero-shot) | default init |", "|---|---|---|---|"]
    for key in ["all"] + [k for k in s if k != "all"]:
        lines.append(f"| {key} | {s[key]['archs']} | {s[key]['ghn']:.1f} | {s[key]['default']:.1f} |")
    beats = sum(r["ghn"] > r["default"] for r in evaluation["rows"])
    lines += ["", f"The GHN init beats the default init on {beats} of {len(evaluation['rows'])} architectures "
              f"(best {max(r['ghn'] for r in evaluation['rows']):.1f} %, worst "
              f"{min(r['ghn'] for r in evaluation['rows']):.1f} %).", "", "Re-measure:", "", "```bash",
              evaluation["command"], "```", "", "Per-architecture results:", "", "| arch | family | params | GHN | "
              "default |", "|---|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['family']} | {r['params']:,} | {r['ghn']:.1f} | {r['default']:.1f} |"
              for r in evaluation["rows"]]
    return lines


def _quality_section(report: str, task: str | None) -> list[str]:
    """A benchmark report (the Markdown of ``python -m benchmarks.quality``), one heading level down."""
    body = report.split("\n", 1)[1] if report.startswith("# ") else report  # drop the report's own title
    how = ("`python -m benchmarks.quality --task lm` (writes `benchmarks/results/quality_lm.md`)" if task == "lm" else
           "`python -m benchmarks.quality` (writes `benchmarks/results/quality.md`; the command in the report's "
           "first lines says which steps and test images)")
    return ["", "## Evaluation: held-out models, zero-shot and fine-tuned", "", body.strip().replace("\n## ", "\n### "),
            "", f"Re-measure: {how}."]


def earlier_stages(train_cfg: dict[str, Any], command: str | None = None) -> list[str]:
    """The training section of the card of the predictor a warm-started run began from (``init_from``): its own
    stage and every stage before it, so a card lists them all. [] for a run that started from scratch. When that
    card already describes this very stage (its "This stage" ran ``command``: the release is being redone over the
    predictor it started from), only the stages before it."""
    source = train_cfg.get("init_from")
    if not source:
        return []
    try:
        card = (Path(resolve_predictor(ghn_location(source))) / "README.md").read_text()
    except (GHNError, OSError):
        return [f"- warm-started from `{source}`, which has no model card to say how it was trained"]
    lines, inside = [], False
    for line in card.splitlines():
        if line.startswith("## "):
            inside = line.strip() == "## Training"
        elif inside and line.strip():
            lines.append(line)
    if command and f"- command: `{command}`" in lines and "### This stage" in lines:
        earlier = [i for i, line in enumerate(lines) if line.startswith("### Earlier stages")]
        return lines[earlier[0] + 1:] if earlier else []
    return [line.replace("### This stage", "### Stage") for line in lines]


def model_card(ghn: GHN, state: dict[str, Any], train_cfg: dict[str, Any], summary: dict[str, Any],
               evaluation: dict[str, Any] | None, name: str, quality: str | None = None,
               where: str | None = None, earlier: list[str] | None = None) -> str:
    """The README.md of a released predictor (YAML front matter for the Hub, then Markdown).

    Every statement comes from the GHN's config (its data, normalisation, classes or vocabulary), the run's state,
    config and metrics, and the evaluation passed in.

    Args:
        evaluation: JSON of ``python -m train.evaluate --out`` (image predictors).
        quality: the Markdown report of ``python -m benchmarks.quality`` (``--task lm`` for LM predictors).
        where: what the card's snippet loads (the release directory or a Hub repo id; default ``name``).
        earlier: the training section of the predictor this run warm-started from (:func:`earlier_stages`).
    """
    notes = ghn.config.notes
    unit = "images" if ghn.config.task != "lm" else f"windows of {ghn.config.input_shape[0]} tokens"
    lines = _intro(ghn, name, train_cfg.get("ghn_preset", "?"), where or name) + [
        "", "## Training", "", *(["### This stage", ""] if earlier else []),
        f"- command: `{state.get('command') or notes.get('command')}`",
        f"- data: {notes.get('data')}", f"- architectures: {notes.get('zoo')}",
        f"- steps: {state['step']} x {notes.get('meta_batch')} archs, {notes.get('batch_size')} {unit} per step",
        f"- code: {state.get('git')}"]
    if summary:
        acc = summary.get("final_train_acc")
        machine = f" on {state['machine']}" if state.get("machine") else ""
        lines += [f"- wall time: {summary['wall_min']:.0f} min{machine}; final loss {summary['final_loss']:.3f}"
                  + (f" (training-batch accuracy {acc:.1f} %)" if acc is not None else "")
                  + f"; {summary['skipped']} non-finite steps skipped"]
        if summary["evals"] and summary["eval_metric"] == "eval_acc":
            lines += [f"- held-out zero-shot accuracy during training ({train_cfg.get('eval_archs', '?')} archs, "
                      f"{_count(train_cfg.get('eval_images'))} test images), GHN / default init: "
                      + ", ".join(f"step {s}: {g:.1f} / {d:.1f} %" for s, g, d in summary["evals"])]
        elif summary["evals"]:
            lines += [f"- held-out zero-shot validation loss during training ({train_cfg.get('eval_archs', '?')} "
                      "archs, nats/token), GHN / default init: "
                      + ", ".join(f"step {s}: {g:.3f} / {d:.3f}" for s, g, d in summary["evals"])]
    if earlier:
        lines += ["", f"### Earlier stages (from the card of `{train_cfg.get('init_from')}`, which this stage was "
                      "warm-started from)", "", *earlier]
    if evaluation:
        lines += _zero_shot_section(evaluation, notes.get("dataset"))
    if quality:
        lines += _quality_section(quality, ghn.config.task)
    lines += ["", "## Configuration", "", "```json", json.dumps(ghn.config.to_dict(), indent=1), "```", ""]
    return "\n".join(lines)


def release(checkpoint: str | Path, to: str | Path, evaluation: dict[str, Any] | None = None,
            command: str | None = None, code: str | None = None, quality: str | None = None,
            branch_scale: float | None = None, pooled_flatten: bool = False, repo_id: str | None = None) -> Path:
    """Copy the GHN of ``checkpoint`` (a run or checkpoint directory) to ``to`` with a model card.

    Args:
        evaluation: the JSON of ``python -m train.evaluate --out``.
        quality: the Markdown report of ``python -m benchmarks.quality`` (``--task lm`` for LM predictors).
        command: the training command to record instead of the one the run saw (e.g. with repo-relative paths).
        code: where the training code came from, when the checkpoint's git hash is missing or not the whole story.
        branch_scale: the predictor's calibration for ``predict(branch_scale=None)`` (measured, not trained).
        pooled_flatten: release a decoder-v1/v2 checkpoint as decoder v3 (same weights; only linears reading a
            flattened conv map are predicted differently: pooled).
        repo_id: the Hub repo the release will be pushed to; the card's snippet loads it from there (default: from
            ``to``, as given).
    """
    ckpt = load_checkpoint(checkpoint)
    train_cfg = load_yaml(ckpt.path / CONFIG_YAML)
    # read before writing: the release may replace the predictor it started from
    earlier = earlier_stages(train_cfg, command or ckpt.state.get("command"))
    ghn = GHN.from_pretrained(ckpt.path)
    ghn.config.trained = True
    if branch_scale is not None:
        ghn.config.branch_scale = float(branch_scale)
    if pooled_flatten and not ghn.config.pooled_flatten:
        ghn.config.pooled_flatten, ghn.config.decoder_version = True, 3
    state = dict(ckpt.state)
    if command:
        state["command"] = ghn.config.notes["command"] = command
    if code:
        state["git"] = code
    out = Path(to)
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").unlink(missing_ok=True)  # save_pretrained keeps an existing card; ours replaces it
    ghn.save_pretrained(out)
    summary = _training_summary(read_metrics(ckpt.path.parent / METRICS))
    atomic_write_text(out / "README.md", model_card(ghn, state, train_cfg, summary, evaluation, out.name, quality,
                                                    where=repo_id or str(to), earlier=earlier))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m train.release", description=__doc__.split("\n")[0])
    p.add_argument("checkpoint", help="a run directory (its latest checkpoint) or a checkpoint directory")
    p.add_argument("--to", required=True, help="output directory (Hub layout)")
    p.add_argument("--eval", default=None, help="JSON written by `python -m train.evaluate --out`")
    p.add_argument("--quality", default=None,
                   help="Markdown report of `python -m benchmarks.quality` to embed, e.g. "
                        "benchmarks/results/quality.md or quality_lm.md")
    p.add_argument("--command", default=None, help="training command to record (default: the one the run saw)")
    p.add_argument("--code", default=None, help="where the training code came from (default: the run's git hash)")
    p.add_argument("--branch-scale", type=float, default=None,
                   help="the predictor's default predict(branch_scale=...), a calibration measured by "
                        "`python -m benchmarks.quality --inits ghn ghn_raw ...` (default: keep the checkpoint's)")
    p.add_argument("--repo-id", default=None,
                   help="the Hub repo id the release will be pushed to (ORG/NAME): the card's snippet loads it from "
                        "there (default: from --to)")
    p.add_argument("--pooled-flatten", action="store_true",
                   help="release a decoder-v2 checkpoint as decoder v3 (flattened conv maps read as pooled channels)")
    args = p.parse_args(argv)
    try:
        evaluation = json.loads(Path(args.eval).read_text()) if args.eval else None
        quality = Path(args.quality).read_text() if args.quality else None
        print(release(args.checkpoint, args.to, evaluation, args.command, args.code, quality, args.branch_scale,
                      args.pooled_flatten, args.repo_id))
    except (GHNError, OSError, json.JSONDecodeError) as e:
        print(f"train.release: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
