"""Parametrized weights (issue 21, item 1): weight norm, spectral norm and other ``torch.nn.utils.parametrize``
parametrizations are predicted as the plain layer's weight and written through the parametrization, never bound as
free tensors.

The effective weight is read the way the model's forward reads it (``module.weight`` in eval mode, or after a
forward for the legacy hooks), so these tests do not depend on ghn's own helpers.
"""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.utils.parametrize as parametrize
from torch.nn.utils import parametrizations

import ghn as ghn_pkg
from ghn import Graph, build_graph
from ghn.errors import UnsupportedModuleError

X = torch.randn(2, 1, 12, 12)


def legacy(fn):
    """The deprecated ``torch.nn.utils.weight_norm`` / ``spectral_norm`` hooks (they warn when applied)."""
    def apply(module):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn(module)
    return apply


WEIGHT_NORMS = {"weight_norm": parametrizations.weight_norm, "legacy weight_norm": legacy(nn.utils.weight_norm)}
SPECTRAL_NORMS = {"spectral_norm": parametrizations.spectral_norm,
                  "legacy spectral_norm": legacy(nn.utils.spectral_norm)}


def net(wrap=lambda m: m):
    """A conv and a linear layer, each optionally wrapped (weight norm, ...); the same architecture otherwise."""
    return nn.Sequential(wrap(nn.Conv2d(1, 6, 3)), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         wrap(nn.Linear(6, 5)))


@torch.no_grad()
def effective(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weights the forward pass uses, after one forward in eval mode (legacy hooks set them in a pre-hook)."""
    model.eval()
    model(X)
    return {f"{i}.weight": model[i].weight.detach().clone() for i in (0, 4)}


def sigma_max(w: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(w.flatten(1), ord=2)


@pytest.fixture(scope="module")
def plain(ghn_):
    """The prediction for the layers without any parametrization."""
    return ghn_.predict_params(net(), X)


@pytest.mark.parametrize("kind", WEIGHT_NORMS)
def test_weight_norm_gets_the_plain_layers_prediction(ghn_, plain, kind):
    model = net(WEIGHT_NORMS[kind])
    graph = build_graph(model, X)
    # bound to the conv / linear node with the plain weight's role, not as free tensors
    roles = {p.name: (n.op, p.role) for n in graph.nodes for p in n.params}
    assert roles["0.weight"] == ("conv", "weight") and roles["4.weight"] == ("linear", "weight")
    assert not any(role == "free" for _, role in roles.values())
    ghn_.predict(model, X, graph=graph)
    for name, w in effective(model).items():
        torch.testing.assert_close(w, plain[name], rtol=1e-5, atol=1e-6)
        assert w.std() > 0.5 * plain[name].std()  # the issue: g came out near 0, the weight ~40x too small
    cov = ghn_.predict_params(model, X).coverage
    assert cov.fraction == 1.0 and not cov.missing
    originals = (["0.weight_g", "0.weight_v"] if kind.startswith("legacy")
                 else ["0.parametrizations.weight.original0", "0.parametrizations.weight.original1"])
    assert set(originals) <= set(cov.predicted)
    assert "weight_norm" in cov.parametrized["0.weight"] and originals[0] in cov.parametrized["0.weight"]
    assert "2 parametrized" in cov.summary()


def test_issue_reproduction_with_the_shipped_predictor():
    """The issue's case: ghn-fmnist on a conv with weight norm gave an effective weight ~40x smaller (std 0.0045 vs
    0.18) while coverage said 100 %."""
    from ghn import GHN
    ghn = GHN.from_pretrained("ghn-fmnist")
    x = torch.randn(2, 1, 28, 28)

    def model(wrap):
        return nn.Sequential(wrap(nn.Conv2d(1, 16, 3)), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(16, 10))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = ghn.predict(model(lambda m: m), x)[0].weight
        got = ghn.predict(model(parametrizations.weight_norm), x)[0].weight
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", SPECTRAL_NORMS)
def test_spectral_norm_divides_the_plain_prediction_by_its_norm_in_eval_and_train(ghn_, plain, kind):
    model = net(SPECTRAL_NORMS[kind])
    ghn_.predict(model, X)
    for name, w in effective(model).items():
        torch.testing.assert_close(w, plain[name] / sigma_max(plain[name]), rtol=1e-4, atol=1e-6)
    original = "0.weight_orig" if kind.startswith("legacy") else "0.parametrizations.weight.original"
    torch.testing.assert_close(dict(model.named_parameters())[original], plain["0.weight"])
    model.train()  # power iteration starts from the refreshed vectors: it is already at its fixed point
    with torch.no_grad():
        model(X)
    model.eval()
    for name, w in effective(model).items():
        torch.testing.assert_close(w, plain[name] / sigma_max(plain[name]), rtol=1e-4, atol=1e-6)
    cov = ghn_.predict_params(model, X).coverage
    assert "spectral_norm" in cov.parametrized["0.weight"] and original in cov.parametrized["0.weight"]


@pytest.mark.parametrize("kind", [*WEIGHT_NORMS, *SPECTRAL_NORMS])
def test_predict_params_names_load_into_the_model(ghn_, plain, kind):
    wrap = {**WEIGHT_NORMS, **SPECTRAL_NORMS}[kind]
    model = net(wrap)
    pred = ghn_.predict_params(model, X)
    assert set(pred) <= set(dict(model.named_parameters()))
    result = model.load_state_dict(pred.state_dict(), strict=False)
    assert not result.unexpected_keys
    for name, w in effective(model).items():  # the buffers (spectral norm's vectors) come with the state dict
        want = plain[name] / sigma_max(plain[name]) if "spectral" in kind else plain[name]
        torch.testing.assert_close(w, want, rtol=1e-4, atol=1e-6)


def test_orthogonal_is_written_through_right_inverse(ghn_):
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), parametrizations.orthogonal(nn.Linear(6, 6)))
    x = torch.randn(2, 4)
    pred = ghn_.predict_params(model, x)
    assert "2.parametrizations.weight.original" in pred and "2.parametrizations.weight.0.base" in pred.buffers
    ghn_.predict(model, x)
    with torch.no_grad():
        q = model.eval()[2].weight
    torch.testing.assert_close(q @ q.T, torch.eye(6), atol=1e-5, rtol=0)
    assert "right_inverse" in pred.coverage.parametrized["2.weight"]


class Symmetric(nn.Module):
    """A parametrization without right_inverse: a predicted weight cannot be written through it."""

    def forward(self, w):
        return w.triu() + w.triu(1).T


def test_parametrization_without_right_inverse_is_reported_not_predicted(ghn_):
    model = nn.Sequential(nn.Linear(3, 3), nn.Tanh(), nn.Linear(3, 2))
    parametrize.register_parametrization(model[0], "weight", Symmetric())
    before = model[0].parametrizations.weight.original.detach().clone()
    with pytest.warns(UserWarning, match="coverage"):
        pred = ghn_.predict_params(model, torch.randn(2, 3))
    assert "0.parametrizations.weight.original" not in pred
    assert "right_inverse" in pred.coverage.missing["0.parametrizations.weight.original"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ghn_.predict(model, torch.randn(2, 3))
    assert torch.equal(model[0].parametrizations.weight.original, before)


@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm", "legacy spectral_norm"])
@pytest.mark.parametrize("build", ["meta", "init_empty_weights"])
def test_meta_models_are_materialised_and_written_through(ghn_, plain, kind, build):
    wrap = {**WEIGHT_NORMS, **SPECTRAL_NORMS}[kind]
    if build == "meta":
        with torch.device("meta"):
            model = net(wrap)
    else:
        with ghn_pkg.init_empty_weights():
            model = net(wrap)
    ghn_.predict(model, X)
    for name, w in effective(model).items():
        want = plain[name] / sigma_max(plain[name]) if "spectral" in kind else plain[name]
        torch.testing.assert_close(w, want, rtol=1e-4, atol=1e-6)


def test_orthogonal_on_meta_is_a_typed_error(ghn_):
    with torch.device("meta"):  # torch leaves orthogonal's base empty on meta: nothing can compute the weight
        model = nn.Sequential(parametrizations.orthogonal(nn.Linear(4, 6)))
    with pytest.raises(UnsupportedModuleError, match="0.weight .*build the model on CPU"):
        ghn_.predict(model, torch.randn(2, 4))


def test_graph_cache_round_trip_keeps_the_parametrized_tensors(ghn_, plain):
    model = net(parametrizations.weight_norm)
    graph = Graph.from_dict(build_graph(model, X).to_dict())
    assert set(graph.parametrized) == {"0.weight", "4.weight"}
    ghn_.predict(model, X, graph=graph)
    torch.testing.assert_close(effective(model)["0.weight"], plain["0.weight"], rtol=1e-5, atol=1e-6)


def test_tracing_leaves_no_stand_in_behind(ghn_):
    model = net(legacy(nn.utils.weight_norm))
    attr = model[0].weight  # the legacy hook's plain attribute
    with parametrize.cached():  # a caller's own cache block keeps exactly its own entries
        build_graph(net(parametrizations.weight_norm), X)
        assert not parametrize._cache
    build_graph(model, X)
    assert model[0].weight is attr
