"""ghn-predict: a smoke run and its errors."""
import json
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from ghn.cli import main


def test_predict_timm_to_safetensors(ghn_dir, tmp_path, capsys):
    out = tmp_path / "r18.safetensors"
    rc = main(["--model", "timm:resnet18", "--model-kwargs", '{"num_classes": 10, "in_chans": 1}',
               "--input-shape", "1,28,28", "--ghn", str(ghn_dir), "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "coverage 100.00%" in text and "UNTRAINED" in text
    state = load_file(out)
    assert state["fc.weight"].shape == (10, 512) and len(state) == 62


def test_sharded_output_of_a_meta_model(ghn_dir, tmp_path):
    out = tmp_path / "gpt2.safetensors"
    rc = main(["--model", "hf:gpt2", "--model-kwargs", '{"n_layer": 2, "n_embd": 64, "n_head": 2, "vocab_size": 500}',
               "--meta", "--max-shard-size", "100KB", "--ghn", str(ghn_dir), "--out", str(out)])
    assert rc == 0
    index = json.loads((tmp_path / "gpt2.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    names = set()
    for s in shards:
        names |= set(load_file(tmp_path / s))
    assert "transformer.wte.weight" in names and len(names) == len(index["weight_map"])


def test_unknown_model_suggests_names(ghn_dir, tmp_path, capsys):
    assert main(["--model", "timm:resnet1", "--ghn", str(ghn_dir), "--out", str(tmp_path / "x.safetensors")]) == 1
    assert "did you mean resnet18" in capsys.readouterr().err


def test_unknown_flag_exits_2():
    r = subprocess.run([sys.executable, "-m", "ghn.cli", "--model", "timm:resnet18", "--out", "x", "--bogus"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "unrecognized arguments" in r.stderr
