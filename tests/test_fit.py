"""benchmarks.fit: the fit benchmark (archs trained on vs held-out) and the multi-arch ceiling."""
import json

import pytest

from benchmarks import fit
from train.config import TrainConfig, load_yaml
from train.pool import ArchPool
from train.tasks import make_task


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("fit")
    assert fit.main(["--quick", "--out", str(out)]) == 0
    return out


def test_quick_ceiling_compares_every_arch_with_its_direct_training(quick):
    data = json.loads((quick / "fit_ceiling_quick.json").read_text())
    assert [r["k"] for r in data["runs"]] == [1, 2]
    assert [r["k"] for r in data["rows"]] == [1, 2, 2]  # K archs per run, the first K of the stream
    assert data["rows"][0]["name"] == data["rows"][1]["name"]
    for r in data["rows"]:
        assert 0 <= r["ghn"] <= 100 and 0 <= r["direct"] <= 100
        assert r["ratio"] == pytest.approx(r["ghn"] / r["direct"], abs=1e-3)
    for run in data["runs"]:
        mine = [r for r in data["rows"] if r["k"] == run["k"]]
        assert run["mean_ratio"] == pytest.approx(sum(r["ratio"] for r in mine) / len(mine), abs=1e-3)
        assert run["steps"] == 20 * run["k"] // run["meta_batch"]  # equal exposures per arch
        assert run["cpu_s"] > 0
    assert (quick / "fit_ceiling_quick.png").stat().st_size > 0
    assert "Multi-arch ceiling" in (quick / "fit_ceiling_quick.md").read_text()


def test_quick_split_reports_seen_and_heldout_per_checkpoint(quick):
    data = json.loads((quick / "fit_quick.json").read_text())
    steps = sorted({s["step"] for s in data["summary"]})
    assert steps == [3, 6]  # the quick run keeps its checkpoints at steps 3 and 6
    for s in data["summary"]:
        if s["family"] == "all":
            assert s["seen"] is not None and s["heldout"] is not None
            assert s["gap"] == pytest.approx(s["seen"] - s["heldout"])
    names = {r["split"]: set() for r in data["rows"]}
    for r in data["rows"]:
        names[r["split"]].add(r["name"])
    assert all(n.startswith("train_") for n in names["seen"])
    assert all(n.startswith("heldout_") for n in names["heldout"])


def test_seen_archs_are_the_ones_the_pool_holds():
    cfg = TrainConfig.from_dict({**load_yaml("train/configs/tiny_cpu.yaml"), "arch_pool": 4, "pool_refresh": 1})
    task = make_task(cfg)
    from model_zoo import ArchDataset
    ds = ArchDataset(families=tuple(cfg.families), split="train", seed=cfg.seed)
    pool = ArchPool(ds, cfg.arch_pool, cfg.pool_refresh, cfg.meta_batch)
    step = 5
    held = {pool.position(slot, step - 1) for slot in range(cfg.arch_pool)}  # the pool of the last step run
    seen = fit.seen_archs(cfg, task, step, cfg.arch_pool)
    assert {int(name.rsplit("_", 1)[1]) for name in seen} == held
