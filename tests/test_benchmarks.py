"""Smoke tests of the benchmarks' core functions on tiny models and synthetic data (seconds, CPU only)."""
import json
import math

import pytest
import torch
from torch import nn
import torch.nn as nn

from benchmarks import memory, quality, quality_lm, size, speed
from benchmarks.common import md_table, seeded, write_results
from ghn import GHN, GHNConfig
from train.data import fmnist_dir

TINY_GPT = dict(n_embd=8, n_layer=1, n_head=2, vocab_size=32, n_positions=16)


@pytest.fixture(scope="module")
def ghn():
    torch.manual_seed(0)
    return GHN(GHNConfig.preset("tiny")).eval()


def tiny_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 10))


# ---- common ----------------------------------------------------------------------------------------------------
def test_results_files(tmp_path):
    js, md = write_results(tmp_path, "x", {"a": 1.5}, md_table([{"a": 1.23456, "b": None, "c": 1234567}]))
    assert json.loads(js.read_text()) == {"a": 1.5}
    assert md.read_text().splitlines() == ["| a | b | c |", "|---|---|---|", "| 1.23 | — | 1,234,567 |"]


# ---- speed -----------------------------------------------------------------------------------------------------
def test_time_model_and_ratios(ghn):
    r = speed.time_model(tiny_cnn, ghn, repeat=1, example_inputs=torch.randn(2, 1, 28, 28))
    assert r["nodes"] > 3 and r["params"] == sum(p.numel() for p in tiny_cnn().parameters())
    assert r["predict_s"] > 0 and r["predict_over_init"] > 0


def test_distinct_values_sees_tiling_and_duplicates():
    block = torch.randn(4, 4)
    tiled = {"w": block.repeat(4, 4)}  # GHN-3-style tiling of a 4x4 block into 16x16
    assert speed.distinct_values(tiled)["overall"] == pytest.approx(1 / 16)
    dup = speed.distinct_values({"a": block, "b": block.clone(), "bias": torch.zeros(4)})
    assert dup["duplicate_tensors"] == pytest.approx(0.5) and dup["per_tensor"] == 1.0


def test_large_model_path_on_meta(ghn):
    r = speed.large_model(ghn, n_embd=8, n_layer=2, n_head=2)
    assert r["params"] > 0 and r["predict_s"] > 0 and r["nodes"] > 5


# ---- size ------------------------------------------------------------------------------------------------------
def test_size_formulas_and_run(ghn):
    # GHN-3's decoder grows with the square of the max width, LoGAH's linearly, ours not at all
    h = 64
    assert size.ghn3_decoder_params(2048, h) - size.ghn3_decoder_params(1024, h) == (8 * h + 1) * (2048**2 - 1024**2) \
        + 1024 * 10
    assert size.logah_decoder_params(2048, h, 32) - size.logah_decoder_params(1024, h, 32) == 33 * 1024
    res = size.run(ghn, {"tiny gpt": lambda: speed.gpt2(**TINY_GPT)})
    (row,) = res["targets"]
    assert row["coverage"] == 1.0 and row["max_dim"] == 32 and row["max_dim_no_embed"] == 32  # 4·8 MLP = vocab 32
    assert "tiny gpt" in size.to_markdown(res, "tiny")


# ---- memory ----------------------------------------------------------------------------------------------------
def test_memory_worker_in_process():
    r = memory.worker(dict(n_embd=8, n_layer=1, n_head=2), "predict", "untrained", "cpu")
    assert r["peak_rss"] >= r["baseline_rss"] > 0 and r["fp32_bytes"] == 4 * r["params"]
    md = memory.to_markdown({"tiny": {"predict": r}}, {"device": "cpu"}, "untrained")
    assert "peak RSS" in md and "goal ≤ 1.05×" in md


@pytest.mark.slow  # a fresh Python process (imports torch + transformers): ~5 s
def test_memory_cli_path_in_subprocess():
    r = memory.measure(dict(n_embd=8, n_layer=1, n_head=2), "cli", "untrained", "cpu", timeout=120)
    assert "error" not in r, r
    assert r["files"] == ["model.safetensors"] and r["peak_rss"] > 0


# ---- quality ---------------------------------------------------------------------------------------------------
def test_lsuv_gives_unit_variance():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 50), nn.ReLU(), nn.Linear(50, 10))
    x = torch.randn(256, 20)
    quality.lsuv_(model, x)
    with torch.no_grad():
        assert model[0](x).var().item() == pytest.approx(1, abs=0.1)
        assert model(x).var().item() == pytest.approx(1, abs=0.1)


def synthetic_data(n_train=300, n_test=50):
    torch.manual_seed(0)
    data = quality.ImageEvalData(torch.randn(n_train, 1, 28, 28), torch.randn(n_test, 1, 28, 28),
                                 torch.randint(0, 10, (n_test,)))
    return data, torch.randint(0, 10, (n_train,))


@pytest.mark.parametrize("init", quality.INIT_NAMES)
def test_image_protocol_on_synthetic_data(ghn, init):
    arch = quality.Arch("tiny", "user", tiny_cnn, "test")
    data, train_y = synthetic_data()
    model, info = quality.init_model(init, arch, ghn, torch.device("cpu"), torch.randn(2, 1, 28, 28),
                                     data.train_x[:64])
    if init in quality.GHN_INITS:
        assert info["coverage"] == 1.0
        assert info["branch_scale"] == (1.0 if init == "ghn_raw" else ghn.config.branch_scale)
    out = quality.evaluate_image_arch(model, data, train_y, eval_steps=(0, 2, 3))
    assert set(out["acc"]) == {0, 2, 3} and all(0 <= a <= 100 for a in out["acc"].values())


def test_same_data_order_for_every_init():
    """Two runs from the same init give identical curves: data order and seeds do not depend on anything else."""
    data, train_y = synthetic_data()
    runs = []
    for _ in range(2):
        torch.manual_seed(1)
        runs.append(quality.evaluate_image_arch(tiny_cnn(), data, train_y, eval_steps=(0, 3))["loss"])
    assert runs[0] == runs[1]


def test_image_report(tmp_path):
    acc = {"acc": {0: 10.0, 2: 20.0}, "loss": {}, "diverged": False}
    res = {"protocol": {"eval_steps": [0, 2], "test_images": 50, "lr": 0.05, "momentum": 0.9, "batch": 64,
                        "bn_batches": 20, "bn_batch": 128},
           "image": {"a": {"family": "user", "set": "real", "params": 10,
                           "inits": {"ghn": {**acc, "coverage": 1.0}, "default": acc}},
                     "z": {"family": "mlp", "set": "zoo", "params": 10,
                           "inits": {"ghn": {"acc": {0: 30.0, 2: 40.0}}, "default": acc}}}}
    res["summary"] = quality.summarize(res)
    assert res["summary"]["zero_shot_ghn_mean"] == 20.0
    sets = res["summary"]["sets"]
    assert sets["real"]["zero_shot_ghn_mean"] == 10.0 and sets["real"]["frac_beats_by_5_at_early_step"] == 0
    assert sets["zoo"]["frac_beats_by_5_at_early_step"] == 1 and sets["zoo"]["worst_gap_at_last_step"] == 20.0
    assert "MISSED" in quality.to_markdown(res, "tiny", {"device": "cpu"})
    quality.plot(res, tmp_path / "q.png")
    assert (tmp_path / "q.png").stat().st_size > 1000


def test_real_world_image_set_is_named_and_fully_predicted(ghn):
    archs = quality.real_image_archs()
    assert len(archs) >= 10 and {a.family for a in archs} == {"timm", "torchvision", "user"}
    for a in archs:
        if a.name in ("lenet5", "timm_mixer_p4_d4", "torchvision_mobilenet_v3_small"):
            model = a.build()
            assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
            assert ghn.predict_params(model, torch.randn(2, 1, 28, 28)).coverage.fraction == 1.0


# ---- quality, language models -----------------------------------------------------------------------------------
def test_lm_protocol_runs_every_real_world_lm(tmp_path):
    """Every LM of the real-world set builds, is predicted with full coverage and fine-tunes; the report and the
    goal checks follow the numbers."""
    torch.manual_seed(0)
    ghn = GHN(GHNConfig.preset("tiny", task="lm", input_shape=[64], vocab_size=256, trained=True)).eval()
    archs = quality_lm.real_lms()
    assert {a.family for a in archs} >= {"gpt2", "llama", "qwen2", "mistral", "user"}
    assert all(sum(p.numel() for p in a.build().parameters()) <= 10_000_000 for a in archs)
    res = quality_lm.run(ghn, torch.device("cpu"), archs=archs, steps=(0, 1))
    assert all(r["coverage"] == 1.0 for r in res["archs"].values())
    for r in res["archs"].values():
        d = r["inits"]["default"]["val_loss"]
        assert set(d) == {0, 1} and 5.0 < d[0] < 6.5  # default init: about ln(256) = 5.55 nats/byte
    real = res["summary"]["sets"]["real"]
    assert real["n"] == len(archs) and res["summary"]["early_step"] == 1
    assert real["goal_met"] == (real["n_ppl_gain_met"] == len(archs) and real["mean_loss"]["ghn"][0] <= 2.45)
    md = quality_lm.to_markdown(res, "tiny", {"device": "cpu"})
    assert "hf_mistral" in md and ("MISSED" in md or "met" in md)
    quality_lm.plot(res, tmp_path / "q.png")
    assert (tmp_path / "q.png").stat().st_size > 1000


def test_lm_goal_checks():
    def row(set_name, ghn, default, curve=None):
        return {"set": set_name, "family": "x", "params": 1, "spec": None,
                "inits": {"ghn": {"val_loss": dict(zip((0, 100, 500), ghn)), "curve": curve or {}},
                          "default": {"val_loss": dict(zip((0, 100, 500), default))}}}
    res = {"protocol": {"steps": [0, 100, 500], "data": "d", "val_windows": 1, "seq_len": 1, "optimizer": "o",
                        "batch": 1}, "archs": {
        "a": row("zoo", (2.4, 2.0, 1.80), (5.5, 2.3, 1.80), {400: 1.80, 475: 1.7}),  # 26 % lower at 100; meets at 400
        "b": row("zoo", (2.4, 2.2, 1.85), (5.5, 2.3, 1.80)),   # 10 % lower: not enough; 0.05 nats behind at 500
        "c": row("real", (2.4, 2.0, 1.805), (5.5, 2.5, 1.80)),  # within 0.01 nats at 500, never reaches it
        "d": row("real", (2.6, 1.0, 1.0), (5.5, 2.5, 1.1))}}  # zero-shot mean (2.5) above the 2.45 goal
    s = quality_lm.summarize(res)["sets"]
    assert s["zoo"]["n_ppl_gain_met"] == 1 and s["zoo"]["goals"] == {"zero_shot": True, "early_gain": False,
                                                                       "late": False}
    assert s["zoo"]["meet_step"] == [400, None] and s["zoo"]["steps_saved"] == [100, None]
    assert s["real"]["goals"] == {"zero_shot": False, "early_gain": True, "late": True}
    assert s["real"]["meet_step"] == [None, 100]  # "d" beats default's 500-step loss already at step 100
    assert not s["zoo"]["goal_met"] and not s["real"]["goal_met"]
    assert abs(s["zoo"]["ppl_gain_at_early_step"][0] - (1 - math.exp(-0.3))) < 1e-9
    md = quality_lm.to_markdown({**res, "summary": quality_lm.summarize(res)}, "x", {"device": "cpu"})
    assert "step 400" in md and "never" in md and "saving 100–100 steps" in md


def test_lm_finetuning_records_a_curve_every_25_steps():
    """The curve the meet step is read from: validation every CURVE_EVERY steps, same values as the eval steps."""
    torch.manual_seed(0)
    text = torch.randint(0, 256, (5000,))
    model = quality_lm.TorchTransformerLM(seq_len=16, width=8, heads=2, layers=1, ffn=16)
    out = quality_lm.finetune_lm(model, text[:4000], text[4000:], 16, (0, 25, 50), seed=0, order=0, batch=4)
    assert sorted(out["curve"]) == [25, 50] and out["curve"][50] == out["val_loss"][50]


@pytest.mark.skipif(not fmnist_dir().is_dir(), reason="Fashion-MNIST idx files not installed")
def test_image_data_loader():
    data, train_y = quality.load_image_data(torch.device("cpu"), test_images=100)
    assert data.test_x.shape == (100, 1, 28, 28) and len(train_y) == len(data.train_x) == 60_000
    assert abs(float(data.test_x.mean())) < 0.5  # normalised


def test_train_step_phases():
    from benchmarks.train_step import PHASES, time_steps
    r = time_steps("train/configs/tiny_cpu.yaml", torch.device("cpu"), steps=2, warmup=1, pool=4)
    assert set(r["seconds"]) == set(PHASES) and all(v >= 0 for v in r["seconds"].values())
    assert r["archs_per_s"] > 0 and r["archs_per_s_overlapped"] >= r["archs_per_s"]


def test_trainability_diagnostics_see_depth_and_rank():
    from benchmarks.trainability import diagnose, effective_rank
    assert effective_rank(torch.eye(6)) == 1.0 and effective_rank(torch.ones(6, 4)) == 0.25
    torch.manual_seed(0)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = diagnose(model, x, y)
    assert d["layers"] == 2 and len(d["act"]) == 3 and d["loss"] > 0 and d["loss_after_step"] > 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # left as it was
    with torch.no_grad():
        model[-1].weight.mul_(100)  # a head 100x too large: its output std and the loss grow
    assert diagnose(model, x, y)["act"][-1] > 50 * d["act"][-1]


def test_reuse_takes_results_of_the_same_protocol_and_ghn(ghn):
    arch = quality.Arch("tiny", "user", tiny_cnn, "test")
    data, train_y = synthetic_data()
    kw = dict(archs=[arch], eval_steps=(0, 2), test_limit=50)
    from unittest import mock
    with mock.patch.object(quality, "load_image_data", return_value=(data, train_y)):
        first = quality.run(ghn, torch.device("cpu"), inits=("ghn", "default"), **kw)
        for init in ("ghn", "default"):
            first["image"]["tiny"]["inits"][init]["acc"][2] = -1.0  # a marker: reused, not re-measured
        again = quality.run(ghn, torch.device("cpu"), inits=("ghn", "default"), reuse=[first], **kw)
        inits = again["image"]["tiny"]["inits"]
        assert inits["default"]["acc"][2] == inits["ghn"]["acc"][2] == -1.0 and inits["ghn"]["reused"]
        ghn.config.branch_scale = 0.5  # another predictor: its GHN rows are measured again, default still reused
        try:
            other = quality.run(ghn, torch.device("cpu"), inits=("ghn", "default"), reuse=[first], **kw)
        finally:
            ghn.config.branch_scale = 1.0
        inits = other["image"]["tiny"]["inits"]
        assert inits["default"]["reused"] and "reused" not in inits["ghn"] and inits["ghn"]["acc"][2] >= 0
        both = quality.run(ghn, torch.device("cpu"), inits=("ghn", "ghn_raw"), **kw)["image"]["tiny"]["inits"]
        assert both["ghn_raw"]["same_as_ghn"] and both["ghn_raw"]["acc"] == both["ghn"]["acc"]  # no residual branch
        with pytest.raises(ValueError, match="protocol"):
            quality.run(ghn, torch.device("cpu"), inits=("default",), reuse=[{**first, "protocol": {}}], **kw)


# ---- quality, several data orders (--seeds) ----------------------------------------------------------------------
def _image_run(ghn, **kw):
    from unittest import mock
    arch = quality.Arch("tiny", "user", seeded(tiny_cnn, 0), "test")
    with mock.patch.object(quality, "load_image_data", return_value=synthetic_data()):
        return quality.run(ghn, torch.device("cpu"), inits=("ghn", "default", "lsuv"), archs=[arch],
                           eval_steps=(0, 2, 3), test_limit=50, **kw)


def _untimed(res):
    """The results without wall-clock times (the only thing two identical runs may differ in)."""
    return {arch: {k: v for k, v in r.items() if k != "inits"} | {"inits": {
        name: {k: v for k, v in i.items() if k not in ("seconds", "init_s")} for name, i in r["inits"].items()}}
        for arch, r in res["image"].items()}


def test_seeds_one_is_the_single_order_protocol(ghn):
    """orders=1 is the run without the option, number for number, and its JSON has no trace of orders."""
    default, one = _image_run(ghn), _image_run(ghn, orders=1)
    assert _untimed(one) == _untimed(default) and one["protocol"] == default["protocol"]
    assert "data_orders" not in one["protocol"]
    assert all("orders" not in i for i in one["image"]["tiny"]["inits"].values())
    assert "one data order (seed 0" in quality.to_markdown(one, "tiny", {"device": "cpu"})


def test_seeds_three_averages_three_data_orders(ghn):
    one, three = _image_run(ghn)["image"]["tiny"]["inits"], _image_run(ghn, orders=3)
    for name, v in three["image"]["tiny"]["inits"].items():
        o = v["orders"]
        assert o["seeds"] == [0, 1, 2] and set(o["acc"]) == {2, 3}
        assert v["acc"][0] == one[name]["acc"][0]  # zero-shot: same init, same BN batches, measured once
        for step, values in o["acc"].items():
            assert len(values) == 3 and values[0] == one[name]["acc"][step]  # the first order is --seed's
            assert v["acc"][step] == pytest.approx(sum(values) / 3)
            assert o["acc_std"][step] == pytest.approx(torch.tensor(values).std().item())
        assert len(set(o["loss"][3])) > 1  # the orders really differ
    assert three["protocol"]["data_orders"] == 3
    assert "mean of 3 data orders** (seeds 0–2" in quality.to_markdown(three, "tiny", {"device": "cpu"})


def test_reuse_only_takes_rows_of_the_same_number_of_orders(ghn):
    one, three = _image_run(ghn, orders=1), _image_run(ghn, orders=3)
    for other, n in ((one, 3), (three, 1)):
        with pytest.raises(ValueError, match="protocol"):
            _image_run(ghn, orders=n, reuse=[other])
    three["image"]["tiny"]["inits"]["default"]["acc"][2] = -1.0  # a marker: reused, not re-measured
    again = _image_run(ghn, orders=3, reuse=[three])["image"]["tiny"]["inits"]["default"]
    assert again["reused"] and again["acc"][2] == -1.0 and again["orders"]["seeds"] == [0, 1, 2]


def test_lm_seeds_average_window_orders():
    torch.manual_seed(0)
    text = torch.randint(0, 256, (3000,))
    train, val = text[:2500], text[2500:]

    def evaluate(**kw):
        model = quality_lm.TorchTransformerLM(seq_len=16, width=8, heads=2, layers=1, ffn=16)
        model.load_state_dict(start)
        return quality_lm.evaluate_lm_arch(model, train, val, 16, (0, 2), batch=4, **kw)

    start = quality_lm.TorchTransformerLM(seq_len=16, width=8, heads=2, layers=1, ffn=16).state_dict()
    one, two = evaluate(), evaluate(orders=2)
    assert evaluate(orders=1) == one and "orders" not in one
    losses = two["orders"]["val_loss"][2]
    assert two["val_loss"][0] == one["val_loss"][0] and losses[0] == one["val_loss"][2] and losses[0] != losses[1]
    assert two["val_loss"][2] == pytest.approx(sum(losses) / 2)


def test_ceiling_block_similarity_tells_copied_blocks_from_independent_ones():
    from benchmarks.ceiling import block_similarity
    torch.manual_seed(0)
    blocks = nn.Sequential(*(nn.Sequential(nn.Linear(16, 16), nn.ReLU()) for _ in range(3)))
    assert abs(block_similarity(blocks)) < 0.3  # independent random blocks
    for b in blocks[1:]:
        b[0].weight.data.copy_(blocks[0][0].weight)
    assert block_similarity(blocks) > 0.999
    assert block_similarity(nn.Linear(4, 4)) is None
