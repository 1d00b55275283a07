"""train: the tiny CLI run, bit-exact resume (also after a real SIGKILL), the non-finite-loss guard, DDP."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ghn import GHN
from ghn.errors import ConfigError
from train.checkpoint import load_checkpoint
from train.cli import main as cli_main
from train.config import TrainConfig, load_yaml
from train.loop import train
from train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "train" / "configs" / "tiny_cpu.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def _run(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "train", *map(str, args)], cwd=ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def _tiny(**overrides) -> TrainConfig:
    return TrainConfig.from_dict({**load_yaml(TINY), **overrides})


def _weights(ckpt_dir) -> dict[str, torch.Tensor]:
    return load_file(str(Path(ckpt_dir) / "model.safetensors"))


def _assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"


def _assert_valid_checkpoint(d: Path):
    """Every file of a checkpoint parses: GHN (strict), training state, config."""
    GHN.from_pretrained(d)
    ckpt = load_checkpoint(d)
    assert ckpt.step == int(d.name.split("-")[1])
    TrainConfig.from_dict(yaml.safe_load((d / "config.yaml").read_text()))
    assert (d / "README.md").read_text().startswith("---")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The CI command, uninterrupted: ``python -m train --config train/configs/tiny_cpu.yaml``."""
    out = tmp_path_factory.mktemp("ref") / "run"
    t0 = time.time()
    r = _run("--config", TINY, "--out", out)
    assert r.returncode == 0, r.stderr[-3000:]
    return out, time.time() - t0, r


def test_tiny_cli_run_writes_everything(reference):
    out, seconds, r = reference
    cfg = _tiny()
    assert seconds < 60
    assert "# resolved config" in r.stdout and "meta_batch: 2" in r.stdout  # the resolved config is printed
    assert json.loads((out / "latest.json").read_text()) == {"step": cfg.steps, "dir": f"ckpt-{cfg.steps:07d}"}
    ckpts = sorted(p.name for p in out.glob("ckpt-*"))
    assert ckpts == [f"ckpt-{s:07d}" for s in range(cfg.ckpt_every, cfg.steps + 1, cfg.ckpt_every)]
    for name in ckpts:
        _assert_valid_checkpoint(out / name)
    ghn = GHN.from_pretrained(out / ckpts[-1])
    assert ghn.config.trained and ghn.config.num_classes == 10 and ghn.config.input_shape == [1, 28, 28]
    assert ghn.config.notes["steps"] == cfg.steps and "tiny_cpu.yaml" in ghn.config.notes["command"]
    state = load_checkpoint(out).state
    assert state["arch_stream"] == [{"seed": 0, "position": cfg.steps * cfg.meta_batch, "rank": 0, "world_size": 1}]
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, cfg.steps + 1))
    assert all(r["skipped"] == 0 and 0 < r["loss"] < 100 and r["archs_per_s"] > 0 for r in records)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the schedule: linear warm-up, then cosine down to min_lr_ratio * lr at the last step
    assert records[0]["lr"] == pytest.approx(cfg.lr / cfg.warmup_steps)
    t = (cfg.steps - 1 - cfg.warmup_steps) / (cfg.steps - cfg.warmup_steps)  # the last step's place in the decay
    lr_end = cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    assert records[-1]["lr"] == pytest.approx(cfg.lr * lr_end)


def test_resume_in_process_is_bit_exact(reference, tmp_path):
    out, _, _ = reference
    # Resumed with a DataLoader worker building the graphs (the reference used none): the arch stream, and so the
    # weights, do not depend on how many processes prepare it.
    cfg = _tiny(resume=str(out / "ckpt-0000003"), out=str(tmp_path / "resumed"), workers=1)
    summary = train(cfg)
    assert summary["step"] == cfg.steps
    _assert_same(_weights(tmp_path / "resumed" / "ckpt-0000006"), _weights(out / "ckpt-0000006"))
    # optimizer moments and RNG state match too, and the metrics continue the original run's
    _assert_same(load_file(str(tmp_path / "resumed/ckpt-0000006/train_state.safetensors")),
                 load_file(str(out / "ckpt-0000006/train_state.safetensors")))
    assert [r["step"] for r in read_metrics(tmp_path / "resumed" / "metrics.jsonl")] == list(range(1, 7))


def test_init_from_takes_the_weights_and_starts_afresh(reference, tmp_path):
    out, _, _ = reference
    cfg = _tiny(init_from=str(out), out=str(tmp_path / "warm"), steps=1, ckpt_every=1)
    before = _weights(out / "ckpt-0000006")
    train(cfg)
    state = load_checkpoint(tmp_path / "warm").state
    assert state["arch_stream"][0]["position"] == cfg.meta_batch  # a fresh stream and schedule, not a resume
    after = _weights(tmp_path / "warm" / "ckpt-0000001")
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved and max((after[k] - before[k]).abs().max().item() for k in moved) < 10 * cfg.lr  # one small step
    with pytest.raises(ConfigError, match="other sizes"):
        train(_tiny(init_from=str(out), out=str(tmp_path / "other"), ghn_overrides={"hidden_dim": 16}, steps=1))


def test_sigkill_mid_run_then_resume_matches_uninterrupted(reference, tmp_path):
    out, _, _ = reference
    run = tmp_path / "killed"
    # A checkpoint every step (does not change the weights), so the kill can land in the middle of a save.
    proc = subprocess.Popen([sys.executable, "-m", "train", "--config", str(TINY), "--out", str(run),
                             "--ckpt-every", "1", "--keep-checkpoints", "0"], cwd=ROOT, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            latest = run / "latest.json"
            if latest.exists() and json.loads(latest.read_text())["step"] >= 2:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_at = json.loads((run / "latest.json").read_text())["step"]
    assert 2 <= killed_at < 6, "the run finished before it could be killed"
    for d in run.glob("ckpt-*"):  # no checkpoint is corrupt: partial saves live only in hidden temp dirs
        _assert_valid_checkpoint(d)
    # The CLI resumes with nothing but the run directory (fewer checkpoints: they do not change the weights).
    assert cli_main(["--resume", str(run), "--ckpt-every", "6"]) == 0
    assert not list(run.glob(".ckpt-*")), "leftovers of the interrupted save were not cleaned up"
    _assert_same(_weights(run / "ckpt-0000006"), _weights(out / "ckpt-0000006"))


def test_non_finite_loss_skips_the_step_on_all_archs(tmp_path, monkeypatch):
    from train import tasks

    original = tasks.ImageTask.loss
    calls = {"n": 0}

    def loss_with_nan(self, model, params, x, y):
        calls["n"] += 1
        loss, m = original(self, model, params, x, y)
        if calls["n"] == 5:  # the first arch of step 3 (meta_batch 2): one bad arch poisons the step
            loss = loss * float("nan")
        return loss, m

    monkeypatch.setattr(tasks.ImageTask, "loss", loss_with_nan)
    out = tmp_path / "nan"
    summary = train(_tiny(out=str(out), steps=4, ckpt_every=1, keep_checkpoints=0))
    assert summary["skipped"] == 1
    records = read_metrics(out / "metrics.jsonl")
    assert [r["skipped"] for r in records] == [0, 0, 1, 1]
    assert records[2]["loss"] is None and records[3]["loss"] is not None  # logged as null, not NaN
    w = {s: _weights(out / f"ckpt-{s:07d}") for s in (2, 3, 4)}
    _assert_same(w[3], w[2])  # step 3 changed nothing
    assert any(not torch.equal(w[4][k], w[3][k]) for k in w[4])  # step 4 trained again
    assert all(torch.isfinite(t).all() for t in w[4].values())
    # the optimizer did not step either (its step counters stayed), but the schedule moved on
    s2, s3 = load_checkpoint(out / "ckpt-0000002"), load_checkpoint(out / "ckpt-0000003")
    assert torch.equal(s2.tensors["optim.0.step"], s3.tensors["optim.0.step"])
    assert s3.state["scheduler"]["last_epoch"] == 3


def test_existing_run_is_not_overwritten(reference):
    out, _, _ = reference
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_tiny(out=str(out)))


def test_two_process_ddp_run(tmp_path):
    out = tmp_path / "ddp"
    torchrun = Path(sys.executable).with_name("torchrun")
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "train", "--config", str(TINY),
                        "--out", str(out), "--steps", "4", "--ckpt-every", "2"], cwd=ROOT,
                       env={**ENV, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count("# resolved config") == 1  # only rank 0 prints (and writes)
    ckpt = load_checkpoint(out)
    assert ckpt.step == 4 and ckpt.state["world_size"] == 2
    # each rank took its own half of the arch stream and saved its own RNG state
    assert ckpt.state["arch_stream"] == [{"seed": 0, "position": 8, "rank": r, "world_size": 2} for r in (0, 1)]
    assert {"rng.cpu.0", "rng.cpu.1"} <= set(ckpt.tensors)
    records = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4] and all(r["skipped"] == 0 for r in records)
    _assert_valid_checkpoint(ckpt.path)
    # a DDP checkpoint is resumed by the same number of processes only
    with pytest.raises(ConfigError, match="written by 2 processes"):
        train(_tiny(resume=str(out), out=str(tmp_path / "single")))


def test_bf16_autocast_keeps_the_decoder_in_fp32():
    from ghn import GHNConfig
    from model_zoo import graph_of, sample_arch
    from train.loop import Predictor

    torch.manual_seed(0)
    ghn = GHN(GHNConfig.preset("tiny"))
    graphs = [graph_of(sample_arch("mlp", s, max_params=20_000, max_depth=2)) for s in range(2)]
    full, amp = Predictor(ghn, amp=False)(graphs), Predictor(ghn, amp=True)(graphs)
    for a, b in zip(full, amp):
        assert a.keys() == b.keys()
        for k in a:
            assert b[k].dtype == torch.float32 and b[k].requires_grad
            # the encoder ran in bf16 (8-bit mantissa): close to fp32, but not identical
            assert torch.allclose(a[k], b[k], rtol=0.1, atol=0.1 * a[k].abs().max().item() + 1e-6)
    assert any(not torch.equal(a[k], b[k]) for a, b in zip(full, amp) for k in a)


def test_lm_task_on_fortunes(tmp_path):
    cfg = TrainConfig.from_dict(dict(out=str(tmp_path / "lm"), steps=2, ckpt_every=2, log_every=1, threads=1,
                                     task="lm", batch_size=4, seq_len=16, families=["gpt", "llama", "nanolm"],
                                     max_params=30_000, zoo_constraints={"max_depth": 1}, ghn_preset="tiny",
                                     meta_batch=2, warmup_steps=1))
    summary = train(cfg)
    assert summary["skipped"] == 0 and 0 < summary["loss"] < 50 and summary["bits_per_byte"] > 0
    ghn = GHN.from_pretrained(tmp_path / "lm" / "ckpt-0000002")
    assert ghn.config.notes["task"] == "lm" and ghn.config.num_classes is None
    # released with the LM quality report: an LM model card that embeds it
    from train.release import main as release_main
    (tmp_path / "q.md").write_text("# Quality of the LM predictor\n\nbody\n\n## Goals (per set)\n\n- **zoo**: MISSED\n")
    assert release_main([str(tmp_path / "lm"), "--quality", str(tmp_path / "q.md"), "--to",
                         str(tmp_path / "ghn-lm")]) == 0
    card = (tmp_path / "ghn-lm" / "README.md").read_text()
    assert "causal language models over a vocabulary of 256 tokens" in card and "windows of 16 tokens" in card
    assert "### Goals (per set)" in card and "- **zoo**: MISSED" in card and "Quality of the LM" not in card


def test_release_writes_hub_layout_with_a_model_card(reference, tmp_path):
    from train.release import main as release_main

    out, _, _ = reference
    evaluation = {"command": "python -m train.evaluate --archs 2", "archs": 2, "families": ["mlp"], "seed": 0,
                  "constraints": {"max_params": 20000}, "test_images": 300,
                  "summary": {"all": {"ghn": 31.5, "default": 9.5, "archs": 2}},
                  "rows": [{"name": "heldout_mlp_4", "family": "mlp", "params": 11418, "ghn": 40.0, "default": 9.0},
                           {"name": "heldout_mlp_8", "family": "mlp", "params": 7850, "ghn": 23.0, "default": 10.0}]}
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    assert release_main([str(out), "--eval", str(tmp_path / "eval.json"), "--to", str(tmp_path / "ghn-x")]) == 0
    assert sorted(p.name for p in (tmp_path / "ghn-x").iterdir()) == ["README.md", "config.json", "model.safetensors"]
    _assert_same(_weights(tmp_path / "ghn-x"), _weights(out / "ckpt-0000006"))
    card = (tmp_path / "ghn-x" / "README.md").read_text()
    assert "tiny_cpu.yaml" in card and "| all | 2 | 31.5 | 9.5 |" in card and "beats the default init on 2 of 2" in card
    assert "python -m train.evaluate --archs 2" in card
    assert GHN.from_pretrained(tmp_path / "ghn-x").config.trained
    # a measured calibration travels in config.json and the card says so
    (tmp_path / "q.md").write_text("# Quality\n\nGHN: x.\n\n## Goals\n\n- real set: MISSED")
    assert release_main([str(out), "--to", str(tmp_path / "ghn-y"), "--branch-scale", "0.1",
                         "--quality", str(tmp_path / "q.md")]) == 0
    released = GHN.from_pretrained(tmp_path / "ghn-y")
    assert released.config.branch_scale == 0.1 and released.config.decoder_version == 3
    card = (tmp_path / "ghn-y" / "README.md").read_text()
    assert "by 0.1" in card and "ghn_raw" in card and "### Goals" in card and "- real set: MISSED" in card


def test_curves_draw_bits_per_token(tmp_path, monkeypatch):
    import matplotlib.axes
    from train.plot import plot_curves
    labels = []
    original = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda self, *a, **kw: labels.append(kw.get("label")) or original(self, *a, **kw))
    records = [{"step": s, "loss": 3.0 - s / 10, "task_loss": 3.0, "bits_per_token": 4.0 - s / 10, "lr": 1e-3,
                "grad_norm": 1.0} for s in range(1, 4)]
    out = plot_curves(records, tmp_path / "c.png")
    assert out.stat().st_size > 1000 and "train bits/token" in labels and "train bits/byte" not in labels


# ---- the arch pool (train/pool.py) --------------------------------------------------------------------------------
def test_pool_positions_follow_the_refresh_rule():
    from model_zoo import ArchDataset
    from train.pool import ArchPool
    pool = ArchPool(ArchDataset(families=("mlp",)), size=5, refresh=2, meta_batch=3)
    slots = list(range(5))  # simulate: refresh q puts stream item 5 + q into slot q % 5, 2 per completed step
    for step in range(12):
        assert [pool.position(s, step) for s in range(5)] == slots, step
        for q in range(step * 2, step * 2 + 2):
            slots[q % 5] = 5 + q
    fixed = ArchPool(ArchDataset(families=("mlp",)), size=4, refresh=0, meta_batch=2)
    assert {fixed.position(s, 1000) for s in range(4)} == {0, 1, 2, 3}
    built = []
    fixed.ds.sample_at = lambda n, f=fixed.ds.sample_at: built.append(n) or f(n)
    fixed.fill(0, "cpu")
    assert sorted(built) == [0, 1, 2, 3]
    drawn = fixed.draw(7)  # a fixed pool: every draw is served from the cache
    assert sorted(built) == [0, 1, 2, 3] and len({s.index for s in drawn}) == 2
    assert fixed.model(drawn[0], "cpu", 7) is fixed.model(drawn[0], "cpu", 8)
    with pytest.raises(ConfigError, match="arch_pool"):
        ArchPool(ArchDataset(families=("mlp",)), size=2, refresh=0, meta_batch=3)


def test_pool_run_reuses_archs_and_resumes_bit_exact(tmp_path):
    pooled = dict(arch_pool=4, pool_refresh=1, steps=6, ckpt_every=3)
    full = train(_tiny(out=str(tmp_path / "full"), **pooled))
    assert full["skipped"] == 0
    # 6 steps x 2 archs drawn from a pool of 4 that took in one new arch per step: at most 4 + 5 distinct archs
    assert load_checkpoint(tmp_path / "full").state["arch_stream"][0]["position"] == 4 + 6 * 1
    train(_tiny(out=str(tmp_path / "resumed"), resume=str(tmp_path / "full" / "ckpt-0000003"), **pooled))
    _assert_same(_weights(tmp_path / "resumed" / "ckpt-0000006"), _weights(tmp_path / "full" / "ckpt-0000006"))
    with pytest.raises(ConfigError, match="workers"):
        _tiny(arch_pool=4, workers=1)


def test_a_warm_started_stage_card_lists_every_earlier_stage(reference, tmp_path):
    """A release of a run warm-started from a released predictor carries that predictor's training section (its own
    stages), read before the release may overwrite it; a run from scratch has no earlier stages."""
    from train.release import earlier_stages, main as release_main

    out, _, _ = reference
    assert release_main([str(out), "--to", str(tmp_path / "stage1"), "--command", "python -m train STAGE-ONE"]) == 0
    assert earlier_stages({}) == []
    first = earlier_stages({"init_from": str(tmp_path / "stage1")})
    assert any("STAGE-ONE" in line for line in first) and all(not line.startswith("## ") for line in first)
    # a second stage released over the first one: the card keeps stage one's lines
    run2 = tmp_path / "run2"
    r = _run("--config", TINY, "--out", run2, "--init-from", tmp_path / "stage1", "--steps", 2)
    assert r.returncode == 0, r.stderr[-2000:]
    assert release_main([str(run2), "--to", str(tmp_path / "stage1")]) == 0
    card = (tmp_path / "stage1" / "README.md").read_text()
    assert "### This stage" in card and "### Earlier stages" in card and "STAGE-ONE" in card
    assert card.index("### This stage") < card.index("### Earlier stages") < card.index("STAGE-ONE")
    # the same stage released again over itself (say, with a new quality report): still one stage, one earlier stage
    assert release_main([str(run2), "--to", str(tmp_path / "stage1")]) == 0
    again = (tmp_path / "stage1" / "README.md").read_text()
    assert again.count("### This stage") == 1 and again.count("### Earlier stages") == 1
    assert again.count("STAGE-ONE") == 1
    assert earlier_stages({"init_from": str(tmp_path / "nowhere")})[0].startswith("- warm-started from")
