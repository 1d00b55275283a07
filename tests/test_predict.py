"""predict / predict_params on real model families: 100 % coverage, finite values, in place, atomic."""
import warnings

import pytest
import timm
import torch
import torch.nn as nn

from ghn import CoverageWarning, build_graph
from ghn.graph import residual_branch_ends
from ghn.errors import ConfigError

from conftest import tiny_bert, tiny_gpt2, tiny_llama

MODELS = {
    "resnet18": lambda: timm.create_model("resnet18", num_classes=10, in_chans=1),
    "vit_tiny": lambda: timm.create_model("vit_tiny_patch16_224", img_size=32, num_classes=10),
    "convnext_atto": lambda: timm.create_model("convnext_atto", num_classes=10),
    "efficientnet_b0": lambda: timm.create_model("efficientnet_b0", num_classes=10),
    "gpt2": tiny_gpt2, "llama": tiny_llama, "bert": tiny_bert,
}
INPUTS = {"resnet18": torch.randn(2, 1, 28, 28), "convnext_atto": torch.randn(2, 3, 32, 32),
          "efficientnet_b0": torch.randn(2, 3, 32, 32)}


@pytest.mark.parametrize("name", list(MODELS))
def test_predict_params_full_coverage(tiny_ghn, name):
    model = MODELS[name]()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with warnings.catch_warnings():
        warnings.simplefilter("error", CoverageWarning)  # 100 % coverage: no warning
        pred = tiny_ghn.predict_params(model, INPUTS.get(name))
    assert pred.coverage.fraction == 1.0 and not pred.coverage.missing
    own = dict(model.named_parameters())
    assert set(pred) == set(own)
    for k, v in pred.items():
        assert v.shape == own[k].shape and torch.isfinite(v).all(), k
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # predict_params changes nothing


@pytest.mark.parametrize("name", ["resnet18", "gpt2"])
def test_predict_writes_in_place_and_runs(tiny_ghn, name):
    model = MODELS[name]()
    pred = tiny_ghn.predict_params(model, INPUTS.get(name))
    out = tiny_ghn.predict(model, INPUTS.get(name))
    assert out is model
    for k, p in model.named_parameters():
        assert torch.equal(p, pred[k]) and p.grad_fn is None
    x = INPUTS.get(name, {"input_ids": torch.zeros(2, 8, dtype=torch.long)})
    model.eval()
    y = model(x) if torch.is_tensor(x) else model(**x).logits
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("meta", [False, True])
def test_tied_weights_stay_tied(tiny_ghn, meta):
    with torch.device("meta" if meta else "cpu"):
        model = tiny_gpt2()
    tiny_ghn.predict(model)
    assert model.lm_head.weight is model.transformer.wte.weight
    assert model.lm_head.weight.abs().sum() > 0
    assert set(tiny_ghn.predict_params(model).state_dict()) >= {"lm_head.weight", "transformer.wte.weight"}


def test_meta_model_is_materialised_and_filled(tiny_ghn):
    with torch.device("meta"):
        model = tiny_llama()
    ref = tiny_llama()
    tiny_ghn.predict(model)
    assert not any(p.is_meta for p in model.parameters())
    pred = tiny_ghn.predict_params(ref)
    for k, p in model.named_parameters():
        assert torch.equal(p, pred[k])
    # rotary buffers are re-created from the config, not left empty
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, ref.model.rotary_emb.inv_freq)


def test_classifier_reinit_and_bn_recalibrate(tiny_ghn):
    model = MODELS["resnet18"]()
    x = torch.randn(2, 1, 28, 28)
    pred = tiny_ghn.predict_params(model, x)
    batches = [torch.randn(16, 1, 28, 28) * 3 + 1 for _ in range(3)]
    tiny_ghn.predict(model, x, classifier="reinit", bn="recalibrate", bn_data=batches)
    assert not torch.equal(model.fc.weight, pred["fc.weight"])  # back to the model's own init
    assert torch.equal(model.conv1.weight, pred["conv1.weight"])
    assert model.bn1.num_batches_tracked.item() == 3 and model.bn1.momentum == 0.1
    assert model.bn1.running_var.mean() > 1.5  # statistics of the (scaled) data, not the reset values


def test_branch_scale_shrinks_exactly_the_gains_that_end_residual_branches(tiny_ghn):
    model = MODELS["resnet18"]()
    x = torch.randn(2, 1, 28, 28)
    graph = build_graph(model, x)
    ends = {graph.nodes[i].name for i in residual_branch_ends(graph)}
    assert ends == {f"layer{s}.{b}.bn2" for s in range(1, 5) for b in range(2)}  # not bn1, not downsample BNs
    pred = tiny_ghn.predict_params(model, x)
    tiny_ghn.predict(model, x, branch_scale=0.1)
    for name, p in model.named_parameters():
        scaled = name.endswith(".bn2.weight")
        torch.testing.assert_close(p, pred[name] * 0.1 if scaled else pred[name], msg=name)
    tiny_ghn.config.branch_scale = 0.0  # the predictor's own default applies when the argument is omitted
    try:
        tiny_ghn.predict(model, x)
    finally:
        tiny_ghn.config.branch_scale = 1.0
    assert model.layer1[0].bn2.weight.abs().max() == 0
    assert torch.equal(model.layer1[0].bn2.bias, pred["layer1.0.bn2.bias"])


def test_branch_ends_of_layer_scale_and_plain_nets():
    convnext = MODELS["convnext_atto"]()
    g = build_graph(convnext, INPUTS["convnext_atto"])
    ends = [g.nodes[i] for i in residual_branch_ends(g)]
    assert len(ends) == 12 and all(n.op == "layer_scale" for n in ends)  # one per block, through its mul
    plain = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))
    plain(torch.randn(2, 1, 28, 28))
    assert residual_branch_ends(build_graph(plain, torch.randn(2, 1, 28, 28))) == []


def test_bad_options_are_config_errors(tiny_ghn):
    model = nn.Linear(3, 3)
    with pytest.raises(ConfigError):
        tiny_ghn.predict(model, torch.randn(2, 3), classifier="keep")
    with pytest.raises(ConfigError, match="bn_data"):
        tiny_ghn.predict(model, torch.randn(2, 3), bn="recalibrate")
    for bad in (-0.5, float("nan"), "0.1"):
        with pytest.raises(ConfigError, match="branch_scale"):
            tiny_ghn.predict(model, torch.randn(2, 3), branch_scale=bad)


def test_coverage_warning_when_incomplete(tiny_ghn):
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.steps = nn.Parameter(torch.zeros(3, dtype=torch.long), requires_grad=False)

        def forward(self, x):
            return self.fc(x) + self.steps

    with pytest.warns(CoverageWarning, match="steps"):
        pred = tiny_ghn.predict_params(Net(), torch.randn(2, 3))
    assert pred.coverage.fraction == pytest.approx(12 / 15)
    assert "not floating point" in pred.coverage.missing["steps"]


def test_predictions_depend_on_the_architecture(tiny_ghn):
    a = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
    b = nn.Sequential(nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8))
    pa = tiny_ghn.predict_params(a, torch.randn(2, 8))
    pb = tiny_ghn.predict_params(b, torch.randn(2, 8))
    assert not torch.allclose(pa["0.weight"], pb["0.weight"])


def test_graph_can_be_reused(tiny_ghn):
    model = MODELS["resnet18"]()
    g = build_graph(model, torch.randn(2, 1, 28, 28))
    p1 = tiny_ghn.predict_params(model, graph=g)
    p2 = tiny_ghn.predict_params(model, torch.randn(2, 1, 28, 28))
    assert all(torch.equal(p1[k], p2[k]) for k in p1)
