"""Fuzz build_graph + predict_params over seeded random architectures.

Cases come from every model_zoo family and from random "user-style" modules (Sequential / residual MLPs and CNNs
with odd widths, 1-D/2-D/3-D convs, ConvTranspose, GroupNorm, Embedding + MultiheadAttention, raw nn.Parameter,
tied weights, unused and integer parameters, skipped modules, half/bf16/double models, layers with weight norm,
spectral norm (both torch APIs), orthogonal and other parametrizations), plus models ghn refuses on purpose
(quantized, TorchScript, nn.DataParallel, complex parameters). Each case must either succeed, with every predicted
tensor finite and of its parameter's shape and coverage 1.0 or every gap listed with a reason, or raise the typed
error the case expects (``EXPECTED_ERRORS``). Anything else (an untyped exception, NaN/Inf, a wrong shape, an
unexplained gap) is a failure. A parametrized layer must, after predict(), compute the prediction for the same
architecture without parametrizations (weight norm exactly, spectral norm divided by its largest singular value,
others as ``module.weight = prediction`` would): a silently wrong weight is a failure too. Zoo models of every
family are also built on the ``meta`` device (plain ``torch.device("meta")`` or ``ghn.init_empty_weights()``) and
predicted in place: the materialised model must equal a CPU build of the same spec holding the same parameters
(every buffer, and the outputs, bit for bit). Cases are a pure function of ``(index, seed)``: a failure is
reproduced with ``python scripts/fuzz.py --only <index> --seed <seed>``.

    python scripts/fuzz.py --n 1000                 # writes benchmarks/results/fuzz.md
    python scripts/fuzz.py --n 50 --out /dev/null   # a quick run

The modules, the case builder and the checks live in ``scripts/fuzzing/`` (``models``, ``cases``, ``checks``); this
file runs them and writes the report. tests/test_reliability_fuzz.py runs a few hundred cases of the same generator.
"""
from __future__ import annotations

import argparse
import collections
import logging
import os
import sys
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
for path in (ROOT, ROOT / "scripts"):  # ghn and model_zoo; the fuzzing/ package next to this script
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from ghn import GHN, GHNConfig  # noqa: E402
from fuzzing.cases import EXPECTED_ERRORS, FAILURES, KINDS, USER_KINDS, ZOO_FAMILIES, Case, make_case  # noqa: E402
from fuzzing.checks import run_case  # noqa: E402

__all__ = ["Case", "KINDS", "EXPECTED_ERRORS", "FAILURES", "USER_KINDS", "ZOO_FAMILIES", "make_case", "run_case", "run",
           "write_report", "main"]


def run(n: int, seed: int = 0, start: int = 0, kinds: tuple[str, ...] = KINDS, ghn: GHN | None = None,
        write: bool = True, progress: Callable[[dict], None] | None = None) -> list[dict]:
    """Run cases ``start .. start + n - 1`` of stream ``seed``; returns one row per case."""
    if ghn is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            ghn = GHN(GHNConfig.preset("tiny")).eval()
    logging.getLogger("ghn").setLevel(logging.ERROR)  # "this GHN is untrained", once per case
    rows = []
    for i in range(start, start + n):
        try:
            case = make_case(i, seed, kinds)
        except Exception as e:  # noqa: BLE001 - a broken generator must be visible, not crash the run
            row = dict(index=i, kind="?", note="", dtype="", meta=False, status="generator_error",
                       detail=f"{type(e).__name__}: {e}"[:500], coverage=None, params=0, seconds=0.0)
        else:
            row = run_case(ghn, case, write=write)
        rows.append(row)
        if progress:
            progress(row)
    return rows


def write_report(rows: list[dict], out: Path, seed: int, elapsed: float, command: str) -> str:
    by_kind: dict[str, list[dict]] = collections.defaultdict(list)
    for row in rows:
        by_kind[row["kind"]].append(row)
    failures = [r for r in rows if r["status"] not in ("ok", "expected_error")]
    lines = [
        "# Fuzz: build_graph + predict_params on random architectures", "",
        f"`{command}` (seed {seed}, tiny GHN, CPU, {torch.get_num_threads()} threads): {len(rows)} cases in "
        f"{elapsed:.0f} s; **{len(failures)} failures**.", "",
        "A case passes when build_graph + predict_params raise no exception, every predicted tensor is finite and "
        "has its parameter's shape, coverage is 1.0 or every gap is listed with a reason, tied aliases are "
        "reported, and predict() writes the prediction in place keeping each parameter's dtype (and a float32 "
        "model's output stays finite). A zoo model built on the meta device must, once predicted in place, equal a CPU "
        "build of its spec holding the same parameters (every buffer and the outputs, bit for bit). "
        "A layer with weight norm, spectral norm or another parametrization must, after predict(), compute the "
        "prediction for the same architecture without parametrizations (weight norm exactly, spectral norm divided "
        "by its largest singular value, others as `module.weight = prediction` would); when a parametrization cannot "
        "be written through (no right_inverse) the gap must be listed instead. "
        + ", ".join(f"`{k}`" for k in EXPECTED_ERRORS) + " cases must raise "
        + "/".join(sorted({e.__name__ for e in EXPECTED_ERRORS.values()})) + ". Cases are pure "
        "functions of (index, seed): `python scripts/fuzz.py --only INDEX --seed SEED` replays one.", "",
        "| kind | cases | ok | expected error | failures | coverage < 1 | params (median) | s/case |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for kind in sorted(by_kind):
        rs = by_kind[kind]
        ok = sum(r["status"] == "ok" for r in rs)
        exp = sum(r["status"] == "expected_error" for r in rs)
        partial = sum(1 for r in rs if r["coverage"] is not None and r["coverage"] < 1.0)
        params = sorted(r["params"] for r in rs)
        lines.append(f"| {kind} | {len(rs)} | {ok} | {exp} | {len(rs) - ok - exp} | {partial} | "
                     f"{params[len(params) // 2]:,} | {sum(r['seconds'] for r in rs) / len(rs):.3f} |")
    dtypes = collections.Counter(r["dtype"] for r in rows if r["dtype"])
    lines += ["", f"Model dtypes: {', '.join(f'{k} {v}' for k, v in sorted(dtypes.items()))}; "
              f"meta-device models: {sum(r['meta'] for r in rows)} (built with torch.device('meta'): "
              f"{sum(r.get('build') == 'meta' for r in rows)}, with ghn.init_empty_weights(): "
              f"{sum(r.get('build') == 'init_empty_weights' for r in rows)}), each predicted in place and compared "
              "with a CPU build holding the same parameters.", ""]
    compared = [r.get("effective", 0) for r in rows]
    lines += [f"Parametrized tensors compared with the plain architecture's prediction after predict(): "
              f"{sum(compared)} (in {sum(map(bool, compared))} models).", ""]
    statuses = collections.Counter(r["status"] for r in rows)
    lines += [f"Statuses: {', '.join(f'{k} {v}' for k, v in sorted(statuses.items()))}.", ""]
    if failures:
        lines += ["## Failures", ""]
        for r in failures[:50]:
            detail = r["detail"].splitlines()[0] if r["detail"] else ""
            lines.append(f"- #{r['index']} {r['kind']} {r['note']} ({r['dtype']}): {r['status']}: {detail}")
        lines.append("")
    text = "\n".join(lines)
    if str(out) != os.devnull:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, out)
    return text


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1000, help="number of cases")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--start", type=int, default=0, help="first case index")
    p.add_argument("--only", type=int, default=None, help="run only this case index (prints the full error)")
    p.add_argument("--kinds", default="", help="comma-separated subset of: " + ", ".join(KINDS))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fuzz.md")
    p.add_argument("--threads", type=int, default=1, help="torch threads (tiny models: 1 is fastest)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    kinds = tuple(k for k in args.kinds.split(",") if k) or KINDS
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        p.error(f"unknown kinds {unknown}; choose from {', '.join(KINDS)}")
    if args.only is not None:
        row = run(1, args.seed, args.only, kinds)[0]
        print(row["status"], row["kind"], row["note"], "\n" + row["detail"])
        return 0 if row["status"] in ("ok", "expected_error") else 1
    t0 = time.perf_counter()
    rows: list[dict] = []

    def progress(row: dict) -> None:
        rows.append(row)
        if row["status"] not in ("ok", "expected_error"):
            print(f"FAIL #{row['index']} {row['kind']}: {row['status']}: {row['detail'].splitlines()[0]}",
                  flush=True)
        if len(rows) % 100 == 0:
            print(f"{len(rows)}/{args.n} cases, {time.perf_counter() - t0:.0f} s", flush=True)
            write_report(rows, args.out, args.seed, time.perf_counter() - t0, _command(args))

    run(args.n, args.seed, args.start, kinds, progress=progress)
    text = write_report(rows, args.out, args.seed, time.perf_counter() - t0, _command(args))
    print(text)
    return 0 if all(r["status"] in ("ok", "expected_error") for r in rows) else 1


def _command(args: argparse.Namespace) -> str:
    return f"python scripts/fuzz.py --n {args.n} --seed {args.seed}" + (f" --start {args.start}" if args.start else "")


if __name__ == "__main__":
    sys.exit(main())
