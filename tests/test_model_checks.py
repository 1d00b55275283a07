"""Issue 21: what ghn refuses (typed, before anything changes), and the edges of predict it must get right.

Entry checks (``ghn.model_checks.check_model``, run by build_graph, predict and predict_params): not a module,
data-parallel wrappers, TorchScript and quantized models. Then the tied / absent classifier with
``classifier="reinit"``, ``branch_scale`` overflow, config.json validation, unverified checkpoints, deterministic
saves and the domain warning's wording.
"""
import re
import warnings

import pytest
import torch
import torch.nn as nn

from ghn import GHN, build_graph
from ghn.errors import ConfigError, DomainWarning, GHNError, NotAModuleError, UnsupportedModuleError


@pytest.fixture(scope="module")
def fmnist():
    return GHN.from_pretrained("ghn-fmnist")


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10))


def _entries(ghn, model):
    """Every public entry that takes a model, each without example inputs (the GHN's own are used)."""
    x = torch.randn(2, 1, 28, 28)
    return {"build_graph": lambda: build_graph(model, x), "predict": lambda: ghn.predict(model),
            "predict_params": lambda: ghn.predict_params(model)}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---- item 6: not a module -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("make, fix", [
    (lambda: _mlp().state_dict(), "pass the model object itself"),
    (lambda: [_mlp()], "one model at a time"),
    (lambda: nn.Linear, "pass an instance of it"),
], ids=["state_dict", "list", "class"])
def test_not_a_module_is_typed_at_every_entry(fmnist, make, fix):
    for entry, call in _entries(fmnist, make()).items():
        with pytest.raises(NotAModuleError, match=f"{entry} expects a torch.nn.Module.*{fix}") as e:
            call()
        assert isinstance(e.value, TypeError) and "\n" not in str(e.value)


# ---- item 10: data-parallel wrappers ------------------------------------------------------------------------------
def test_data_parallel_asks_for_model_module(fmnist):
    model = nn.DataParallel(_mlp())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for entry, call in _entries(fmnist, model).items():
        with pytest.raises(UnsupportedModuleError, match="data-parallel wrapper.*pass model.module"):
            call()
    assert _same(before, model.state_dict())  # refused before anything was written
    with pytest.raises(UnsupportedModuleError, match=r"pass the model with 1 replaced by 1.module"):
        fmnist.predict(nn.Sequential(nn.Flatten(), nn.DataParallel(nn.Linear(784, 10))))
    fmnist.predict(model.module)  # what the message says works, and fills the wrapper too
    assert not _same(before, model.state_dict())


def test_distributed_data_parallel_asks_for_model_module(fmnist, tmp_path):
    import torch.distributed as dist
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        model = nn.parallel.DistributedDataParallel(_mlp())
        with pytest.raises(UnsupportedModuleError, match="DistributedDataParallel is a data-parallel wrapper.*"
                                                         "pass model.module"):
            fmnist.predict(model)
    finally:
        dist.destroy_process_group()


# ---- item 7: TorchScript ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("script", [torch.jit.script, lambda m: torch.jit.trace(m, torch.randn(2, 1, 28, 28))],
                         ids=["script", "trace"])
def test_torchscript_asks_for_the_original_module(fmnist, script):
    model = script(_mlp())
    for entry, call in _entries(fmnist, model).items():
        with pytest.raises(UnsupportedModuleError, match="TorchScript module.*pass the original nn.Module") as e:
            call()
        assert "\n" not in str(e.value)
    nested = nn.Sequential(nn.Flatten(), torch.jit.script(nn.Linear(784, 10)))
    with pytest.raises(UnsupportedModuleError, match=r"^1 \(RecursiveScriptModule\) is a TorchScript module"):
        fmnist.predict(nested)


# ---- item 2: quantized models -------------------------------------------------------------------------------------
def test_quantized_model_asks_for_the_float_model(fmnist):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.ao.quantization announces its move to torchao
        model = torch.ao.quantization.quantize_dynamic(_mlp(), {nn.Linear}, dtype=torch.qint8)
    for entry, call in _entries(fmnist, model).items():
        with pytest.raises(UnsupportedModuleError, match=r"^1 \(torch\.ao\.nn\.quantized.*is quantized.*"
                                                         "predict the float model, then quantize it"):
            call()


def test_every_refusal_is_a_ghn_error():
    for thing in ({}, nn.DataParallel(nn.Linear(2, 2)), torch.jit.script(nn.Linear(2, 2))):
        with pytest.raises(GHNError):
            build_graph(thing, torch.randn(2, 2))


# ---- item 3: classifier="reinit" on a tied head, or on a model without a classifier -------------------------------
def _gpt2(tie: bool = True):
    from transformers import GPT2Config, GPT2LMHeadModel
    torch.manual_seed(0)
    return GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=256, n_positions=32, bos_token_id=0,
                                      eos_token_id=0, tie_word_embeddings=tie))


def _tied_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                        num_attention_heads=2, num_key_value_heads=2, vocab_size=256, bos_token_id=0,
                                        eos_token_id=0, pad_token_id=0, tie_word_embeddings=True))


@pytest.mark.parametrize("make, alias", [(_gpt2, "lm_head.weight is transformer.wte.weight"),
                                         (_tied_llama, "lm_head.weight is model.embed_tokens.weight")],
                         ids=["gpt2", "llama"])
def test_reinit_of_a_tied_head_is_refused_before_anything_is_written(make, alias, caplog):
    fortunes, model = GHN.from_pretrained("ghn-fortunes"), make()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.zeros(2, 8, dtype=torch.long)
    with caplog.at_level("INFO", logger="ghn"), pytest.raises(ConfigError, match=f"tied.*{alias}.*untie"):
        fortunes.predict(model, ids, classifier="reinit")
    assert _same(before, model.state_dict())  # the old code re-initialised Llama's last down_proj instead
    assert "classifier None" not in caplog.text


def test_reinit_of_an_untied_head_resets_exactly_the_head(caplog):
    fortunes, ids = GHN.from_pretrained("ghn-fortunes"), torch.zeros(2, 8, dtype=torch.long)
    kept, reset = fortunes.predict(_gpt2(tie=False), ids), _gpt2(tie=False)
    with caplog.at_level("INFO", logger="ghn"):
        fortunes.predict(reset, ids, classifier="reinit")
    assert "classifier lm_head re-initialised" in caplog.text
    changed = [k for k, v in reset.state_dict().items() if not torch.equal(v, kept.state_dict()[k])]
    assert changed == ["lm_head.weight"]


def test_reinit_without_a_classifier_says_so(fmnist, caplog):
    import timm
    features = timm.create_model("resnet10t", num_classes=0, in_chans=1)  # pooled features out: no classifier
    before = features.conv1[0].weight.clone()
    with caplog.at_level("INFO", logger="ghn"), pytest.warns(UserWarning, match="ResNet has no classifier.*nothing "
                                                                             "is re-initialised"):
        fmnist.predict(features, classifier="reinit")
    assert not torch.equal(before, features.conv1[0].weight)  # predicted all the same
    assert "re-initialised" not in caplog.text  # the old code reset layer4's last conv, "the head nearest the output"


# ---- item 5: branch_scale is checked after scaling ----------------------------------------------------------------
@pytest.mark.parametrize("dtype, scale", [(torch.float16, 1e5), (torch.float32, 1e308)])
def test_branch_scale_that_overflows_is_refused_model_untouched(fmnist, dtype, scale):
    import timm
    model = timm.create_model("resnet10t", num_classes=10, in_chans=1).to(dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError, match=re.escape(f"branch_scale={scale:g} makes ") + r".*bn2\.weight non-finite "
                       f"in the model's {str(dtype)[6:]}.*smaller branch_scale"):
        fmnist.predict(model, branch_scale=scale)
    assert _same(before, model.state_dict())
    fmnist.predict(model, branch_scale=1e3)  # large but finite: written
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ---- item 8: config.json is validated at load ---------------------------------------------------------------------
@pytest.mark.parametrize("field, value", [
    ("input_shape", [1, -28, 28]), ("input_shape", [1, 28]), ("decoder_version", "3"), ("num_classes", "4"),
    ("num_classes", -4), ("input_std", [0.0]), ("input_mean", [0.1, 0.2]), ("vocab_size", 2.5), ("trained", "yes"),
    ("dropout", 1.5), ("code_gain", 0), ("branch_scale", float("inf")), ("notes", []), ("hidden_dim", True),
])
def test_bad_config_json_field_is_a_checkpoint_error_naming_it(tmp_path, field, value):
    import json
    import shutil
    from ghn.errors import CheckpointError
    shutil.copytree("checkpoints/ghn-fmnist", tmp_path / "g")
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    (tmp_path / "g" / "config.json").write_text(json.dumps({**config, field: value}))
    with pytest.raises(CheckpointError, match=rf"config\.json: GHNConfig\.{field} must be") as e:
        GHN.from_pretrained(tmp_path / "g")
    assert "upgrade" not in str(e.value) and "\n" not in str(e.value)


# ---- item 14: the class-count warning in the CLI's terms, and only for classifiers -----------------------------------
def test_class_count_warning_names_the_cli_flag_in_the_cli(tmp_path, capsys):
    from conftest import run_cli
    rc, _, err = run_cli(["--model", "timm:test_resnet", "--model-kwargs", '{"num_classes": 5, "in_chans": 1}',
                          "--ghn", "ghn-fmnist", "--out", str(tmp_path / "o.safetensors")], capsys)
    assert rc == 0, err
    assert "5 outputs" in err and "--classifier reinit" in err and "classifier='reinit'" not in err


def test_a_model_that_is_not_a_classifier_is_not_told_about_classes(fmnist):
    from transformers import Wav2Vec2Config, Wav2Vec2Model
    model = Wav2Vec2Model(Wav2Vec2Config(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                         num_attention_heads=2, conv_dim=(32, 32), conv_stride=(5, 2),
                                         conv_kernel=(10, 3), num_conv_pos_embeddings=16,
                                         num_conv_pos_embedding_groups=2))
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fmnist.predict_params(model, torch.randn(2, 1600))
    domain = [str(w.message) for w in seen if issubclass(w.category, DomainWarning)]
    assert domain and not any("outputs, but" in m for m in domain), domain  # the input shape is still named


# ---- item 16: init_empty_weights is named so that it cannot be shadowed by the GHN instance -------------------------
def test_init_empty_weights_is_never_written_as_an_attribute_of_ghn():
    from pathlib import Path

    from ghn.errors import DeviceError

    class Computed(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.register_buffer("scale", torch.arange(4.0))  # computed by the constructor: nothing can redo it

        def forward(self, x):
            return self.fc(x * self.scale)

    assert "ghn.init_empty_weights" not in Path("README.md").read_text()
    with torch.device("meta"):
        model = Computed()
    with pytest.raises(DeviceError, match="from ghn import init_empty_weights") as e:
        GHN.from_pretrained("ghn-fmnist").predict(model, torch.randn(2, 4))
    assert "ghn.init_empty_weights" not in str(e.value)


# ---- item 18: a checkpoint without a checksum loads, but says its weights are unverified --------------------------
def test_missing_checksum_warns_that_weights_are_unverified(tmp_path):
    import json
    import shutil
    shutil.copytree("checkpoints/ghn-fmnist", tmp_path / "g")
    config = json.loads((tmp_path / "g" / "config.json").read_text())
    del config["checksum"]
    (tmp_path / "g" / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match="no checksum.*unverified.*save_pretrained") as seen:
        GHN.from_pretrained(tmp_path / "g")
    assert [w.category.__name__ for w in seen] == ["UnverifiedWeightsWarning"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the shipped predictors record their checksums: silent
        GHN.from_pretrained("ghn-fmnist"), GHN.from_pretrained("ghn-fortunes")


# ---- item 21: save_pretrained is byte-deterministic ---------------------------------------------------------------
def test_saving_the_same_weights_twice_writes_the_same_bytes(tmp_path, tiny_ghn):
    # safetensors used to order two metadata keys at random (a hash map): 8 saves all equal by chance is 1 in 128
    saves = []
    for i in range(8):
        tiny_ghn.save_pretrained(tmp_path / str(i))
        saves.append(((tmp_path / str(i) / "model.safetensors").read_bytes(),
                      (tmp_path / str(i) / "config.json").read_text()))
    assert all(s == saves[0] for s in saves)
