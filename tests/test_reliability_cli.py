"""Issue 7, part 2 (CLI): ghn-predict rejects bad flags with argparse's exit 2, and every other bad input with a
one-line ``ghn-predict: error: ...`` and exit 1, never a traceback."""
from __future__ import annotations

import json
import pickle
import subprocess
import sys

import pytest
import torch


from conftest import run_cli


def _exit_code(argv, capsys):
    rc, _, err = run_cli(argv, capsys)
    return rc, err


@pytest.mark.parametrize("argv,match", [
    (["--model", "timm:resnet18", "--out", "x.safetensors", "--bogus"], "unrecognized arguments: --bogus"),
    (["--model", "timm:resnet18", "--out", "x.safetensors", "--ghn-dir", "d"], "unrecognized arguments: --ghn-dir"),
    (["--mod", "timm:resnet18", "--out", "x.safetensors"], "the following arguments are required: --model"),
    (["--model", "timm:resnet18"], "the following arguments are required: --out"),
    (["--model", "timm:resnet18", "--out", "x", "--classifier", "keep"], "invalid choice: 'keep'"),
    (["--model", "timm:resnet18", "--out", "x", "-v", "extra"], "unrecognized arguments: extra"),
])
def test_bad_flags_exit_2_with_a_message(argv, match, capsys):
    rc, err = _exit_code(argv, capsys)
    assert rc == 2 and match in err and "usage: ghn-predict" in err


def test_bad_flag_in_a_real_process():
    r = subprocess.run([sys.executable, "-m", "ghn.cli", "--model", "timm:resnet18", "--out", "x", "--nope"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unrecognized arguments: --nope" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("model,match", [
    ("timm:resnet1", "did you mean resnet18"),
    ("timm:vit_tiny_patch16_22", "did you mean vit_tiny_patch16_224"),
    ("torchvision:resnt50", "did you mean resnet50"),
    ("hf:gtp2", "did you mean gpt2"),
    ("keras:resnet50", "unknown model source 'keras'"),
    ("resnet18", "no source prefix; use timm:<name>"),
])
def test_unknown_model_names_suggest_close_ones(model, match, ghn_dir, tmp_path, capsys):
    rc, err = _exit_code(["--model", model, "--ghn", str(ghn_dir), "--out", str(tmp_path / "o.safetensors")], capsys)
    assert rc == 1 and match in err and err.startswith("ghn-predict: error:") and "Traceback" not in err
    assert not (tmp_path / "o.safetensors").exists()


def test_bad_model_kwargs_json(ghn_dir, tmp_path, capsys):
    rc, err = _exit_code(["--model", "timm:resnet18", "--model-kwargs", "{num_classes: 10}", "--ghn", str(ghn_dir),
                          "--out", str(tmp_path / "o.safetensors")], capsys)
    assert rc == 1 and "not valid JSON" in err and "num_classes" in err


def test_pickle_checkpoint_is_refused(tmp_path, capsys, monkeypatch):
    d = tmp_path / "legacy"
    d.mkdir()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04junk")

    def trap(*a, **k):
        raise AssertionError("unpickled")

    monkeypatch.setattr(pickle, "load", trap)
    monkeypatch.setattr(torch, "load", trap)
    rc, err = _exit_code(["--model", "timm:resnet18", "--ghn", str(d), "--out", str(tmp_path / "o.safetensors")],
                         capsys)
    assert rc == 1 and "model.safetensors" in err and "Traceback" not in err


def test_wrong_input_shape_is_one_line(ghn_dir, tmp_path, capsys):
    rc, err = _exit_code(["--model", "timm:resnet10t", "--input-shape", "3,8", "--ghn", str(ghn_dir),
                          "--out", str(tmp_path / "o.safetensors")], capsys)
    assert rc == 1 and "could not run ResNet" in err and "input_size=(3, " in err
    assert not (tmp_path / "o.safetensors").exists()


@pytest.mark.parametrize("extra,match", [
    pytest.param(["--input-shape", "3,x"], "--input-shape"),
    pytest.param(["--max-shard-size", "lots"], "--max-shard-size"),
    pytest.param(["--model-kwargs", json.dumps({"num_clases": 10})], "num_clases",),
    pytest.param(["--device", "cuda:7"], "cuda:7"),
])
def test_bad_values_are_error_lines(extra, match, ghn_dir, tmp_path, capsys):
    rc, err = _exit_code(["--model", "timm:resnet10t", "--ghn", str(ghn_dir), "--out", str(tmp_path / "o.safetensors"),
                          *extra], capsys)
    assert rc in (1, 2) and match in err and "Traceback" not in err
