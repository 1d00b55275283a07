"""Issue 7, part 3: nothing half-done. A failed predict or build_graph leaves the model exactly as it was.

(Atomic save and strict loading are in test_reliability_security.py.)
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from ghn import GHN, GHNConfig, build_graph
from ghn.errors import ExampleInputError, GHNError, GraphError


def _net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                         nn.LayerNorm([8, 6, 6]), nn.Flatten(), nn.Linear(8 * 36, 16), nn.GELU(), nn.Linear(16, 4))


X = torch.randn(2, 3, 6, 6)


def _state(model: nn.Module):
    """Everything a failed call must leave alone: tensor objects, their values, dtypes, modes, requires_grad."""
    tensors = [*model.named_parameters(remove_duplicate=False), *model.named_buffers()]
    return ([(n, id(t), type(t), t.dtype, t.requires_grad) for n, t in tensors],
            {n: t.detach().clone() for n, t in tensors}, [m.training for m in model.modules()])


def _assert_untouched(model: nn.Module, before) -> None:
    meta, values, modes = _state(model)
    assert meta == before[0], "parameters or buffers were replaced"
    assert modes == before[2], "training modes changed"
    for n, v in values.items():
        assert torch.equal(v, before[1][n]), f"{n} changed"


def _with_running_stats(model):
    with torch.no_grad():
        model[1].running_mean.uniform_()
        model[1].running_var.uniform_(0.5, 2)
        model[1].num_batches_tracked.fill_(7)
    return model


def _sabotage(ghn, monkeypatch, what: str, target: str = "8.weight"):
    """Make the decoder's output for ``target`` (the last tensor decoded) bad in one of several ways."""
    real = ghn.decoder.decode

    def decode(h, queries):
        for info, w in real(h, queries):
            if info.name == target:
                if what == "nan":
                    w = w.clone()
                    w.view(-1)[-1] = float("nan")
                elif what == "inf":
                    w = torch.full_like(w, float("inf"))
                elif what == "shape":
                    w = w[:, :-1]
                elif what == "raise":
                    raise RuntimeError("decoder crashed")
                elif what == "interrupt":
                    raise KeyboardInterrupt
            yield info, w

    monkeypatch.setattr(ghn.decoder, "decode", decode)


@pytest.mark.parametrize("what,error", [("nan", GHNError), ("inf", GHNError), ("shape", GraphError),
                                        ("raise", RuntimeError), ("interrupt", KeyboardInterrupt)])
def test_failed_predict_leaves_every_parameter_unchanged(ghn_, monkeypatch, what, error):
    model = _with_running_stats(_net())
    graph = build_graph(model, X)
    assert graph.param_names[-1] == "8.weight" or "8.weight" in graph.param_names[-2:]  # a late tensor
    model.train()
    before = _state(model)
    _sabotage(ghn_, monkeypatch, what)
    with pytest.raises(error):
        ghn_.predict(model, X)
    _assert_untouched(model, before)
    monkeypatch.undo()
    ghn_.predict(model, X)  # and the same model can then be predicted normally
    assert not torch.equal(model[8].weight, before[1]["8.weight"])


def test_non_finite_message_blames_the_checkpoint(ghn_, monkeypatch):
    _sabotage(ghn_, monkeypatch, "nan")
    with pytest.raises(GHNError, match="8.weight has non-finite values; the GHN checkpoint is broken"):
        ghn_.predict(_net(), X)


def test_graph_of_another_model_is_refused_before_writing(ghn_):
    other = nn.Sequential(nn.Linear(4, 4))
    model = _net()
    before = _state(model)
    with pytest.raises(GraphError, match="built from another model"):
        ghn_.predict(model, graph=build_graph(other, torch.randn(2, 4)))
    _assert_untouched(model, before)


def test_predict_params_never_changes_the_model(ghn_):
    model = _with_running_stats(_net()).train()
    before = _state(model)
    pred = ghn_.predict_params(model, X)
    assert len(pred) == len(list(model.parameters()))
    _assert_untouched(model, before)


class Aliased(nn.Module):
    """One module registered under two names, and applied twice: functional_call used to restore it wrongly."""

    def __init__(self, fail: bool = False):
        super().__init__()
        self.block = nn.Linear(4, 4)
        self.alias = self.block
        self.emb = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 5, bias=False)
        self.head.weight = self.emb.weight
        self.fail = fail

    def forward(self, ids):
        x = self.alias(self.block(self.emb(ids)))
        if self.fail:
            raise RuntimeError("forward failed half-way")
        return self.head(x)


@pytest.mark.parametrize("fail", [False, True])
def test_build_graph_leaves_no_stand_in_tensors_in_the_model(fail):
    model = Aliased(fail)
    before = _state(model)
    ids = torch.randint(0, 5, (2, 3))
    if fail:
        with pytest.raises(ExampleInputError, match="forward failed half-way"):
            build_graph(model, ids)
    else:
        g = build_graph(model, ids)
        assert g.tied == {"alias.weight": "block.weight", "alias.bias": "block.bias", "head.weight": "emb.weight"}
    _assert_untouched(model, before)
    assert all(type(p) is nn.Parameter for p in model.parameters())
    assert model.alias is model.block and model.head.weight is model.emb.weight


def test_predict_with_aliased_modules_writes_real_tensors(ghn_):
    model = Aliased()
    ghn_.predict(model, torch.randint(0, 5, (2, 3)))
    assert model.alias.weight is model.block.weight and type(model.block.weight) is nn.Parameter
    out = model(torch.randint(0, 5, (2, 3)))  # a fake tensor left in the model would fail here
    assert torch.isfinite(out).all()


def test_failed_trace_restores_training_modes():
    class Boom(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.drop = nn.Dropout(0.5)

        def forward(self, x):
            raise ValueError("no")

    model = Boom().train()
    model.drop.eval()  # mixed modes must come back exactly
    before = _state(model)
    with pytest.raises(ExampleInputError):
        build_graph(model, torch.randn(2, 3))
    _assert_untouched(model, before)


def test_predict_with_bad_bn_data_leaves_parameters_unchanged(ghn_):
    model = _with_running_stats(_net())
    before = _state(model)
    with pytest.raises(ExampleInputError):
        ghn_.predict(model, X, bn="recalibrate", bn_data=[torch.randn(2, 5, 6, 6)])
    _assert_untouched(model, before)
