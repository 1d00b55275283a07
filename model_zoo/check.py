"""Sampling check: every family samples ``n`` seeded specs, builds them on meta, and builds their graphs.

    python -m model_zoo.check --n 1000                  # all families -> model_zoo/results/sampling.md (+ .json)
    python -m model_zoo.check --n 50 --families cnn,vit --no-graph

Per family it reports failures (with error types), timings (sample, meta build, graph), parameter counts,
graph sizes, coverage, how many specs are distinct, and the held-out fraction.
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
import traceback
from pathlib import Path

from .dataset import graph_of
from .registry import list_families, sample_arch
from .spec import count_params
from .split import split_of

__all__ = ["check_family", "main"]
log = logging.getLogger(__name__)
RESULTS = Path(__file__).parent / "results"


def check_family(family: str, n: int, graphs: bool = True, first_seed: int = 0) -> dict:
    """Sample seeds ``first_seed .. first_seed + n - 1`` of ``family`` (default constraints); return stats."""
    rows, errors = [], []
    for seed in range(first_seed, first_seed + n):
        row: dict = {"seed": seed}
        try:
            t = time.perf_counter()
            spec = sample_arch(family, seed)
            row["t_sample"] = time.perf_counter() - t
            t = time.perf_counter()
            model = spec.build(device="meta")
            row["t_build"] = time.perf_counter() - t
            row.update(params=count_params(model), split=split_of(spec), hash=spec.arch_hash())
            if graphs:
                t = time.perf_counter()
                g = graph_of(spec)
                row.update(t_graph=time.perf_counter() - t, nodes=len(g), coverage=g.coverage.fraction)
        except Exception as e:  # noqa: BLE001 - the report lists every failure with its type
            errors.append({"seed": seed, "error": type(e).__name__, "message": str(e)[:300],
                           "where": traceback.extract_tb(e.__traceback__)[-1].name})
            continue
        rows.append(row)
        if seed % 100 == 0:
            log.info("%s seed %d: %s", family, seed, row)
    return {"family": family, "n": n, "ok": len(rows), "errors": errors, "rows": rows}


def _stat(rows: list[dict], key: str, fmt: str = "{:.3f}") -> str:
    vals = [r[key] for r in rows if key in r]
    if not vals:
        return "-"
    return f"{fmt.format(statistics.median(vals))} / {fmt.format(max(vals))}"


def write_report(results: list[dict], out: Path) -> None:
    lines = ["# Sampling check", "", "`python -m model_zoo.check` — each family samples seeds `0..n-1` with default "
             "constraints, builds each spec on the meta device and builds its graph. Times in seconds "
             "(median / max).", "",
             "| family | n | ok | failed | distinct archs | held-out | params min / median / max | sample s | "
             "meta build s | graph s | nodes median / max | coverage 1.0 |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows = r["rows"]
        params = sorted(x["params"] for x in rows) or [0]
        cov = [x["coverage"] for x in rows if "coverage" in x]
        lines.append(
            f"| {r['family']} | {r['n']} | {r['ok']} | {len(r['errors'])} | {len({x['hash'] for x in rows})} | "
            f"{sum(x['split'] == 'heldout' for x in rows) / max(len(rows), 1):.1%} | "
            f"{params[0]:,} / {params[len(params) // 2]:,} / {params[-1]:,} | {_stat(rows, 't_sample')} | "
            f"{_stat(rows, 't_build')} | {_stat(rows, 't_graph')} | {_stat(rows, 'nodes', '{:.0f}')} | "
            + (f"{sum(c == 1.0 for c in cov)}/{len(cov)} |" if cov else "- |"))
    errs = [(r["family"], e) for r in results for e in r["errors"]]
    if errs:
        lines += ["", "## Failures", "", "| family | seed | error | where | message |", "|---|---|---|---|---|"]
        lines += [f"| {f} | {e['seed']} | {e['error']} | {e['where']} | {e['message'][:150].replace('|', '/')} |"
                  for f, e in errs[:100]]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    summary = [{k: v for k, v in r.items() if k != "rows"} for r in results]
    out.with_suffix(".json").write_text(json.dumps(summary, indent=1))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000, help="specs per family (default 1000)")
    ap.add_argument("--families", default=",".join(list_families()), help="comma-separated (default: all)")
    ap.add_argument("--no-graph", action="store_true", help="skip graph building")
    ap.add_argument("--out", type=Path, default=RESULTS / "sampling.md")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    results = []
    for fam in args.families.split(","):
        t = time.perf_counter()
        results.append(check_family(fam, args.n, graphs=not args.no_graph))
        log.info("%s: %d/%d ok in %.0fs", fam, results[-1]["ok"], args.n, time.perf_counter() - t)
        write_report(results, args.out)  # after each family, so a long run shows progress
    return 0 if all(not r["errors"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
