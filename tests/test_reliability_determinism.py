"""Issue 7, part 6: same GHN + same model + same inputs -> bitwise-identical predictions on CPU.

Across calls, across equal models built twice, across processes (with different hash seeds, so nothing may depend
on set/dict ordering of hashed objects), and regardless of the global random state.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

import model_zoo as mz
from ghn import GHN, GHNConfig, build_graph

ROOT = Path(__file__).resolve().parents[1]


import functools


@functools.lru_cache(maxsize=None)
def _specs(light: bool) -> dict:
    specs = {"cnn": mz.sample_arch("cnn", seed=3, max_params=40_000, max_depth=2),
             "mlp": mz.sample_arch("mlp", seed=4, max_params=40_000)}
    if not light:  # these import timm / transformers: too slow to start in a subprocess
        specs["vit"] = mz.sample_arch("vit", seed=5, max_params=40_000, max_depth=2)
        specs["gpt"] = mz.ArchSpec("gpt", dict(vocab_size=64, seq_len=8, n_layer=2, n_embd=32, n_head=2, n_inner=64,
                                               activation="gelu_new", tie_word_embeddings=True), seed=1, task="lm")
    return specs


def _models(light: bool = False):
    """Equal models on every call: zoo archs (seeded builds; gpt on the meta device) and a user model built under a
    fixed seed."""
    out = {k: (s.build(device="meta" if k == "gpt" else "cpu"), s.example_inputs()) for k, s in _specs(light).items()}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7)
        user = nn.Sequential(nn.Conv1d(3, 5, 3), nn.GroupNorm(5, 5), nn.SiLU(), nn.ConvTranspose1d(5, 7, 2, stride=2),
                             nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(7, 3))
        out["user"] = (user, torch.randn(2, 3, 9))
    return out


def _predict_all(ghn: GHN, light: bool = False) -> dict[str, torch.Tensor]:
    out = {}
    for key, (model, x) in _models(light).items():
        for name, t in ghn.predict_params(model, x).items():
            out[f"{key}/{name}"] = t
    return out


@pytest.fixture(scope="module")
def ghn_(ghn_dir):
    return GHN.from_pretrained(ghn_dir)


def _equal(a: dict, b: dict) -> list[str]:
    """Names whose tensors are not bitwise identical (or missing on one side)."""
    diff = sorted(set(a) ^ set(b))
    return diff + [k for k in sorted(set(a) & set(b)) if not torch.equal(a[k], b[k]) or a[k].dtype != b[k].dtype]


@pytest.fixture(scope="module")
def reference(ghn_):
    torch.manual_seed(1)
    return _predict_all(ghn_)


def test_same_call_twice_is_bitwise_identical(ghn_, reference):
    assert _equal(reference, _predict_all(ghn_)) == []


def test_equal_models_built_twice_give_equal_graphs_and_predictions(ghn_):
    a, b = _models(), _models()
    for key in a:
        ga, gb = build_graph(*a[key]), build_graph(*b[key])
        assert ga.to_dict() == gb.to_dict(), key
        assert torch.equal(ga.distances(), gb.distances()), key
        pa, pb = ghn_.predict_params(a[key][0], graph=ga), ghn_.predict_params(b[key][0], graph=gb)
        assert _equal(dict(pa), dict(pb)) == [], key


def test_predictions_depend_on_the_architecture_not_on_current_weights(ghn_):
    model, x = _models()["cnn"]
    before = dict(ghn_.predict_params(model, x))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()  # other values, same architecture
    assert _equal(before, dict(ghn_.predict_params(model, x))) == []


def test_global_random_state_does_not_matter_and_is_not_consumed(ghn_, reference):
    torch.manual_seed(2)  # the reference was made after manual_seed(1)
    torch.randn(100)
    assert _equal(reference, _predict_all(ghn_)) == []
    model, x = _models()["user"]
    state = torch.random.get_rng_state()
    build_graph(model, x)
    ghn_.predict(model, x)
    assert torch.equal(state, torch.random.get_rng_state()), "build_graph/predict consumed the global RNG"


def test_dropout_in_the_ghn_does_not_make_predictions_random(ghn_dir):
    ghn = GHN.from_pretrained(ghn_dir)
    ghn.config.dropout = 0.5
    ghn.train()  # even when left in train mode by a training loop, predict_params runs in eval mode
    model, x = _models()["user"]
    assert _equal(dict(ghn.predict_params(model, x)), dict(ghn.predict_params(model, x))) == []
    assert ghn.training  # and the mode is restored


_CHILD = textwrap.dedent("""
    import os, sys, warnings
    warnings.simplefilter("ignore")
    import torch
    torch.set_num_threads(int(sys.argv[3]))
    sys.path.insert(0, sys.argv[4])
    from safetensors.torch import save_file
    from ghn import GHN
    import tests.test_reliability_determinism as t
    torch.manual_seed(int(os.environ["PYTHONHASHSEED"]))  # a different global seed in each process, on purpose
    ghn = GHN.from_pretrained(sys.argv[1])
    save_file({k: v.contiguous() for k, v in t._predict_all(ghn, light=True).items()}, sys.argv[2])
""")


def test_two_processes_give_bitwise_identical_predictions(ghn_dir, reference, tmp_path):
    threads = torch.get_num_threads()
    procs = []
    for seed in (1, 2):
        env = {**os.environ, "PYTHONHASHSEED": str(seed), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        out = tmp_path / f"pred{seed}.safetensors"
        procs.append((out, subprocess.Popen(
            [sys.executable, "-c", _CHILD, str(ghn_dir), str(out), str(threads), str(ROOT)], cwd=ROOT, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
    for out, p in procs:
        _, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
    a, b = (load_file(out) for out, _ in procs)
    assert len(a) > 20
    assert _equal(a, b) == [], "two runs differ"
    assert (tmp_path / "pred1.safetensors").read_bytes() == (tmp_path / "pred2.safetensors").read_bytes()
    light = {k: v for k, v in reference.items() if k.split("/")[0] in (*_specs(True), "user")}
    assert _equal(a, light) == [], "a subprocess differs from this process"
