"""Issue 15, items 2-4 and issue 14, item 5 (``--model-kwargs``): ghn-predict builds any transformers model, finds
the shipped predictor from any directory, and speaks in flags."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
from torch import nn
from safetensors.torch import load_file

from ghn.cli import build_parser, cli_terms
from ghn.errors import CheckpointError, ConfigError
from ghn.sources import load_model

from conftest import run_cli, tiny_gpt2

ROOT = Path(__file__).resolve().parents[1]
TINY_GPT2 = {"n_layer": 1, "n_embd": 16, "n_head": 2, "vocab_size": 64, "n_positions": 32, "bos_token_id": 0, "eos_token_id": 0}


def _run(argv, capsys):
    return run_cli(argv, capsys)


# ---- item 2: any transformers model -------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs,cls", [
    ("t5", dict(num_layers=1, d_model=16, d_ff=32, num_heads=2, d_kv=8, vocab_size=64), "T5ForConditionalGeneration"),
    ("vit", dict(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32, image_size=32,
                 patch_size=8), "ViTForImageClassification"),
    ("llama", dict(num_hidden_layers=1, hidden_size=16, intermediate_size=32, num_attention_heads=2, vocab_size=64),
     "LlamaForCausalLM"),
    ("bert", dict(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32), "BertModel"),
    ("bert", dict(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, intermediate_size=32, num_labels=3),
     "BertForSequenceClassification"),
])
def test_every_model_type_builds_with_its_natural_head(name, kwargs, cls, caplog):
    with caplog.at_level(logging.WARNING):
        model = load_model(f"hf:{name}", kwargs, meta=True)
    assert type(model).__name__ == cls
    assert not [r for r in caplog.records if "is_decoder" in r.getMessage()]  # BertLMHeadModel's complaint


def test_t5_end_to_end(ghn_dir, tmp_path, capsys):
    out = tmp_path / "t5.safetensors"
    kwargs = dict(num_layers=1, d_model=16, d_ff=32, num_heads=2, d_kv=8, vocab_size=64)
    rc, text, err = _run(["--model", "hf:t5", "--model-kwargs", json.dumps(kwargs), "--ghn", str(ghn_dir),
                          "--out", str(out)], capsys)
    assert rc == 0, err
    assert "T5ForConditionalGeneration" in text and "coverage 100.00%" in text
    assert "shared.weight" in load_file(out)


def test_a_local_config_json_names_its_head(tmp_path):
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"model_type": "bert", "architectures": ["BertForMaskedLM"], "num_hidden_layers": 1,
                               "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}))
    assert type(load_model(f"hf:{cfg}", {}, meta=True)).__name__ == "BertForMaskedLM"
    assert type(load_model(f"hf:{tmp_path}", {}, meta=True)).__name__ == "BertForMaskedLM"  # the directory
    with pytest.raises(ConfigError, match="no such file"):
        load_model(f"hf:{tmp_path / 'nope.json'}", {}, meta=True)


@pytest.mark.parametrize("name,kwargs,match", [
    ("gpt2", {"n_layers": 2}, "did you mean n_layer"),  # issue 14.5: it used to build the full 124M GPT-2
    ("bert", {"hidden_sizee": 8}, "did you mean hidden_size"),
    ("gtp2", {}, "did you mean gpt2"),
    ("org/not-in-cache", {}, "local Hugging Face cache"),
])
def test_unknown_hf_names_and_keys_are_errors_with_close_names(name, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        load_model(f"hf:{name}", kwargs, meta=True)


def test_misspelled_hf_kwarg_on_the_command_line(ghn_dir, tmp_path, capsys):
    rc, _, err = _run(["--model", "hf:gpt2", "--model-kwargs", '{"n_layers": 2}', "--meta", "--ghn", str(ghn_dir),
                       "--out", str(tmp_path / "g.safetensors")], capsys)
    assert rc == 1 and "'n_layers'" in err and "n_layer" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []


# ---- item 3: the shipped predictor from anywhere ------------------------------------------------------------------
def test_shipped_predictor_and_a_cached_hub_config_from_another_directory(tmp_path):
    """A fresh process in an unrelated cwd: the default --ghn is found in this checkout, and a Hub-style name is
    read from the local Hugging Face cache (offline)."""
    cache = tmp_path / "hf-cache"
    repo = cache / "models--someorg--tiny-gpt2"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"],
                                                      **TINY_GPT2}))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "ghn.cli", "--model", "hf:someorg/tiny-gpt2", "--out", "g.safetensors",
                        "-q"], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    # no --ghn: the shipped predictor of the model's task, and the first line says which and why
    assert "GHN: ghn-fortunes (picked for a language model" in r.stdout and "GPT2LMHeadModel" in r.stdout
    assert load_file(cwd / "g.safetensors")["transformer.wte.weight"].shape == (64, 16)


@pytest.mark.parametrize("ghn", ["checkpoints/ghn-fmnst", "./no-such-ghn", "runs/x/y"])
def test_a_missing_local_predictor_says_no_such_directory(ghn, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc, _, err = _run(["--model", "timm:test_resnet", "--ghn", ghn, "--out", "o.safetensors"], capsys)
    assert rc == 1 and "no such directory" in err and "Hub" not in err.split(";")[0]
    assert list(tmp_path.iterdir()) == []


def test_shipped_predictor_by_name_from_any_directory(tmp_path, monkeypatch):
    from ghn import GHN
    monkeypatch.chdir(tmp_path)
    assert GHN.from_pretrained("ghn-fmnist").config.trained
    assert GHN.from_pretrained("checkpoints/ghn-fmnist").config.trained
    with pytest.raises(CheckpointError, match="did you mean ghn-fmnist"):
        GHN.from_pretrained("checkpoints/ghn-fmnst")


def test_a_training_run_directory_means_its_latest_checkpoint(ghn_dir, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "ckpt-0000002").mkdir(parents=True)
    for f in ghn_dir.iterdir():
        (run / "ckpt-0000002" / f.name).write_bytes(f.read_bytes())
    (run / "latest.json").write_text(json.dumps({"step": 2, "dir": "ckpt-0000002"}))
    rc, text, err = _run(["--model", "timm:test_resnet", "--model-kwargs", '{"num_classes": 10, "in_chans": 1}',
                          "--input-shape", "1,28,28", "--ghn", str(run), "--out", str(tmp_path / "r.safetensors")],
                         capsys)
    assert rc == 0, err


# ---- item 4: the command line in its own terms --------------------------------------------------------------------
@pytest.mark.parametrize("extra,says,not_says", [
    (["--input-shape", "3,8"], "--input-shape", "example_inputs"),
    (["--device", "cuda:7"], "--device cpu", "device='cpu'"),
])
def test_errors_name_flags_not_api_arguments(extra, says, not_says, ghn_dir, tmp_path, capsys):
    rc, _, err = _run(["--model", "timm:test_resnet", "--ghn", str(ghn_dir), "--out", str(tmp_path / "o.safetensors"),
                       *extra], capsys)
    assert rc == 1 and says in err and not_says not in err and err.startswith("ghn-predict: error:")


def test_cli_terms_rewrites_every_api_hint():
    msgs = ["M does not declare its input, so the graph cannot be traced; pass example_inputs=..., e.g. "
            "torch.randn(2, 3, 224, 224) for an image model or {'input_ids': torch.zeros(2, 8)} for a language model",
            "... (so e.g. Tensor(2, 3, 8, 8):float32; leave example_inputs=None to use it). Pass example_inputs=... "
            "that the model's forward() accepts.",
            "could not allocate M on cuda (x); pass device='cpu' or a device this machine has",
            "M takes inputs of shape (3, 224, 224), but this GHN was trained on (1, 28, 28): pass example_inputs of "
            "shape (B, 1, 28, 28) if the model takes them"]
    for m in msgs:
        text = cli_terms(m)
        assert "example_inputs" not in text and "device='" not in text and "--" in text
    assert cli_terms(msgs[-1]).endswith("pass --input-shape 1,28,28 if the model takes them")


@pytest.mark.parametrize("flags", [["--seq-len", "8"], ["--input-shape", "8"]])
def test_language_models_take_token_ids(flags, ghn_dir, tmp_path, capsys):
    rc, text, err = _run(["--model", "hf:gpt2", "--model-kwargs", json.dumps(TINY_GPT2), *flags, "--ghn", str(ghn_dir),
                          "--out", str(tmp_path / "g.safetensors")], capsys)
    assert rc == 0, err
    assert "coverage 100.00%" in text


def test_seq_len_for_an_image_model_is_an_error(ghn_dir, tmp_path, capsys):
    rc, _, err = _run(["--model", "timm:test_resnet", "--seq-len", "8", "--ghn", str(ghn_dir),
                       "--out", str(tmp_path / "o.safetensors")], capsys)
    assert rc == 1 and "--seq-len needs a model that takes token ids" in err


def test_progress_lines_unless_quiet(ghn_dir, tmp_path, capsys):
    argv = ["--model", "timm:test_resnet", "--model-kwargs", '{"num_classes": 10, "in_chans": 1}', "--input-shape",
            "1,28,28", "--ghn", str(ghn_dir), "--out", str(tmp_path / "o.safetensors")]
    rc, text, _ = _run(argv, capsys)
    steps = [line for line in text.splitlines() if line.startswith("[")]
    assert rc == 0 and [s.split("] ")[1].split()[0] for s in steps] == ["loading", "building", "tracing", "predicting",
                                                                         "writing"]
    rc, text, _ = _run([*argv, "--quiet"], capsys)
    assert rc == 0 and not any(line.startswith("[") for line in text.splitlines())


def test_help_shows_defaults():
    text = " ".join(build_parser().format_help().split())  # the wrapping depends on the terminal width
    assert "(default: 5GB)" in text and "(default: cpu)" in text
    assert "(default: the shipped predictor of the model's task: ghn-fortunes for language models, ghn-fmnist " \
           "otherwise)" in text
    assert "hf:t5" in text  # the examples survive the formatter


def test_a_long_step_keeps_reporting(capsys):
    import time

    from ghn.cli import _Progress
    progress = _Progress(every=0.2)
    progress("predicting 436 tensors")
    time.sleep(0.7)
    progress.close()
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("predicting 436 tensors ...") and len(lines) >= 3
    assert all(line.endswith("still predicting 436 tensors") for line in lines[1:])


def test_without_ghn_the_predictor_matches_the_models_task():
    from ghn.cli import pick_predictor
    from model_zoo import create_arch
    assert pick_predictor(tiny_gpt2())[0] == "ghn-fortunes"
    assert pick_predictor(create_arch("test_nanolm").build())[0] == "ghn-fortunes"  # hand-written: its embedding
    assert pick_predictor(timm.create_model("test_resnet", num_classes=10, in_chans=1))[0] == "ghn-fmnist"
    name, why = pick_predictor(nn.Linear(4, 2))  # nothing tells: the image predictor, and the reason says so
    assert name == "ghn-fmnist" and "unknown task" in why


def test_an_image_model_without_ghn_gets_the_image_predictor(tmp_path, capsys):
    rc, text, err = _run(["--model", "timm:test_resnet", "--model-kwargs", '{"num_classes": 10, "in_chans": 1}',
                          "--out", str(tmp_path / "r.safetensors"), "-q"], capsys)
    assert rc == 0 and err == "", err
    assert "GHN: ghn-fmnist (picked for an image model; --ghn chooses another)" in text
