"""Issue 21, the ghn-predict items: Ctrl-C at any moment (9), float-input encoder-decoders (12), warnings in flags
(14), pickle suffixes refused (15), parameters only unless --buffers (17), one rule for a token model (20)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file
from torch import nn

import ghn.cli
from ghn.cli import build_parser, example_inputs, pick_predictor
from ghn.domain import model_task

from conftest import run_cli, tiny_bert, tiny_gpt2

ROOT = Path(__file__).resolve().parents[1]


# ---- item 9: Ctrl-C at any moment, importing torch included: exit 130, one line --------------------------------------
# What the console script runs (pyproject.toml: ghn-predict = "ghn.cli:main"), with a "ready" line once the entry
# function's module is loaded (the Python interpreter has started; what is left to load is main's to handle).
_CONSOLE_SCRIPT = "import sys; from ghn.cli import main; print('ready', flush=True); sys.exit(main())"


def test_the_console_script_loads_its_entry_function_without_torch():
    assert tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]["ghn-predict"] == "ghn.cli:main"
    r = subprocess.run([sys.executable, "-c", "import sys, ghn.cli; print(sorted({'torch', 'transformers', 'timm'} "
                        "& set(sys.modules)))"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.stdout.strip() == "[]", r.stdout + r.stderr  # so main() is running before the slow imports start


@pytest.mark.parametrize("since,delay", [("entry", 0.05), ("entry", 0.3), ("entry", 1.0), ("start", 1.0)])
def test_ctrl_c_exits_130_with_one_line_at_any_moment(tmp_path, since, delay):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    p = subprocess.Popen([sys.executable, "-c", _CONSOLE_SCRIPT, "--model", "timm:resnet18", "--model-kwargs",
                          '{"num_classes": 10, "in_chans": 1}', "--out", str(tmp_path / "r18.safetensors")],
                         cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if since == "entry":
        assert p.stdout.readline() == "ready\n"
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130 and len(err.splitlines()) <= 1 and "Traceback" not in err, err
    assert list(tmp_path.iterdir()) == []  # nothing written, no temporary directory left


# ---- item 12: encoder-decoders fed floats get decoder_input_ids ------------------------------------------------------
_SPEECH = {
    "whisper": ({"d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
                 "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "num_mel_bins": 8,
                 "max_source_positions": 30, "max_target_positions": 16}, "8,60"),  # mel bins x 2 * source positions
    "speech_to_text": ({"d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
                        "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32,
                        "input_feat_per_channel": 8, "conv_channels": 8, "max_source_positions": 64,
                        "max_target_positions": 16, "vocab_size": 100}, "40,8"),  # frames x features
}


@pytest.mark.parametrize("name", sorted(_SPEECH))
def test_a_float_input_encoder_decoder_is_predicted_from_its_input_shape(name, tmp_path, capsys):
    kwargs, shape = _SPEECH[name]
    out = tmp_path / f"{name}.safetensors"
    rc, text, err = run_cli(["--model", f"hf:{name}", "--model-kwargs", json.dumps(kwargs), "--input-shape", shape,
                             "--out", str(out)], capsys)
    assert rc == 0, err
    assert "coverage 100.00%" in text and "decoder_input_ids" not in err and "--input-shape" not in err
    assert any(".decoder." in k for k in load_file(out))
    # it writes tokens: the picked predictor and the domain check agree that it is a language model
    assert "GHN: ghn-fortunes (picked for a language model" in text and "out of domain" not in err


def test_an_encoder_decoder_fed_floats_is_told_what_shape_it_takes(ghn_dir, tmp_path, capsys):
    kwargs, _ = _SPEECH["whisper"]
    rc, _, err = run_cli(["--model", "hf:whisper", "--model-kwargs", json.dumps(kwargs), "--input-shape", "8,20",
                          "--ghn", str(ghn_dir), "--out", str(tmp_path / "w.safetensors")], capsys)
    assert rc == 1 and "of length 60" in err and "Pass an --input-shape" in err  # the model's own words
    assert "You cannot specify both decoder_input_ids" not in err  # e4b22ec: the missing decoder ids, not the shape


# ---- item 14: warnings the CLI prints name its flags -----------------------------------------------------------------
def test_a_reinit_warning_names_the_flag(ghn_dir, tmp_path, capsys):
    rc, _, err = run_cli(["--model", "hf:bert", "--model-kwargs", json.dumps(
        {"num_hidden_layers": 1, "hidden_size": 16, "num_attention_heads": 2, "intermediate_size": 32}),
        "--classifier", "reinit", "--ghn", str(ghn_dir), "--out", str(tmp_path / "b.safetensors")], capsys)
    assert rc == 0, err
    assert "warning: --classifier reinit: BertModel has no classifier" in err and "classifier='" not in err


# ---- item 15: a pickle suffix is refused before any work -------------------------------------------------------------
@pytest.mark.parametrize("name", ["model.pt", "model.bin", "model.pth", "model.ckpt", "model"])
def test_out_without_the_safetensors_suffix_is_refused_before_any_work(name, ghn_dir, tmp_path, capsys):
    rc, text, err = run_cli(["--model", "timm:test_resnet", "--ghn", str(ghn_dir), "--out", str(tmp_path / name)],
                            capsys)
    assert rc == 1 and err.count("\n") == 1
    assert f"must end in .safetensors, e.g. --out {tmp_path / 'model.safetensors'}" in err
    assert text == "" and list(tmp_path.iterdir()) == []  # no GHN loaded, no model built, nothing written


# ---- item 17: parameters only, unless --buffers ----------------------------------------------------------------------
def test_help_says_the_output_holds_parameters_only():
    text = " ".join(build_parser().format_help().split())
    assert "BatchNorm running statistics or other buffers" in text and "strict=False" in text and "--buffers" in text


def test_buffers_flag_makes_a_strict_load_work(ghn_dir, tmp_path, capsys):
    kwargs = {"num_classes": 10, "in_chans": 1}
    for flags in ([], ["--buffers"]):
        out = tmp_path / f"o{len(flags)}.safetensors"
        rc, _, err = run_cli(["--model", "timm:test_resnet", "--model-kwargs", json.dumps(kwargs), "--input-shape",
                              "1,28,28", "--ghn", str(ghn_dir), "--out", str(out), *flags], capsys)
        assert rc == 0, err
        model = timm.create_model("test_resnet", **kwargs)
        if flags:
            model.load_state_dict(load_file(out))  # strict
            assert set(load_file(out)) == set(model.state_dict())
        else:
            with pytest.raises(RuntimeError, match="running_mean"):
                model.load_state_dict(load_file(out))
            assert set(load_file(out)) == {n for n, _ in model.named_parameters()}


# ---- item 20: one rule tells a token model ---------------------------------------------------------------------------
class _ScaledLM(nn.Module):
    """A learned scale at the root (as CLIP's logit_scale) registered before the embedding."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.emb = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 50)

    def forward(self, ids):
        return self.head(self.emb(ids)) * self.scale


def _bag_classifier():
    return nn.Sequential(nn.EmbeddingBag(50, 8), nn.Linear(8, 3))


@pytest.mark.parametrize("make", [_ScaledLM, _bag_classifier])
def test_a_model_the_two_old_rules_disagreed_on_is_one_kind_everywhere(make):
    # e4b22ec: ghn.cli.takes_token_ids fed these token ids, ghn.domain.model_task called them of unknown task, so
    # ghn-predict picked the image predictor for a model it traced with token ids
    model = make()
    x = example_inputs(model, (8,))
    assert x.dtype == torch.long
    assert model_task(model) == "lm" and pick_predictor(model)[0] == "ghn-fortunes"
    assert not hasattr(ghn.cli, "takes_token_ids")


@pytest.mark.parametrize("make", [lambda: timm.create_model("test_resnet"), tiny_gpt2, tiny_bert, _ScaledLM,
                                  _bag_classifier, lambda: nn.Sequential(nn.Conv1d(3, 4, 3), nn.Linear(6, 2))])
def test_the_cli_feeds_token_ids_exactly_to_the_models_model_task_calls_lm(make):
    model = make()
    x = example_inputs(model, (8,))
    x = x["input_ids"] if isinstance(x, dict) else x
    assert (x.dtype == torch.long) == (model_task(model) == "lm")
