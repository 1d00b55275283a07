"""Family samplers: seeded, within constraints, fast meta builds, graphs with full coverage (a sample of
``python -m model_zoo.check --n 1000``, which runs the full check)."""
import time

import pytest
import torch

import model_zoo as mz
from ghn.errors import ConfigError

SEEDS = {"cnn": 8, "vit": 8, "mlp": 8, "gpt": 4, "llama": 4, "nanolm": 6, "timm": 3, "realnet": 7}


@pytest.mark.parametrize("family", list(SEEDS))
def test_samples_build_on_meta_and_graph(family):
    for seed in range(SEEDS[family]):
        spec = mz.sample_arch(family, seed=seed)
        t = time.perf_counter()
        model = spec.build(device="meta")
        assert time.perf_counter() - t < 1.0, f"{family} seed {seed} builds slowly on meta"
        n = mz.count_params(model)
        if family in ("cnn", "vit", "mlp", "realnet"):
            assert 5_000 <= n <= 500_000, (seed, n)
        graph = mz.graph_of(spec)
        assert graph.coverage.fraction == 1.0, (seed, graph.coverage.missing)
        assert set(graph.param_names) == set(dict(model.named_parameters()))  # tied parameters: once


@pytest.mark.parametrize("family", ["cnn", "vit", "llama"])
def test_same_seed_same_spec_and_graph(family):
    a, b = mz.sample_arch(family, seed=11), mz.sample_arch(family, seed=11)
    assert a == b and a.to_json() == b.to_json()
    assert mz.graph_of(a).to_dict() == mz.graph_of(b).to_dict()
    assert mz.sample_arch(family, seed=12) != a


def test_families_are_varied():
    specs = [mz.sample_arch("cnn", seed=s) for s in range(20)]
    assert len({s.arch_hash() for s in specs}) == 20
    assert len({s.hparams["norm"] for s in specs}) >= 3 and {s.hparams["residual"] for s in specs} == {True, False}
    vits = [mz.sample_arch("vit", seed=s) for s in range(20)]
    assert len({v.hparams["pos_embed"] for v in vits}) >= 3 and len({v.hparams["depth"] for v in vits}) >= 4


def test_image_constraints():
    spec = mz.sample_arch("cnn", seed=1, input_shape=(3, 32, 32), num_classes=100, max_params=60_000, max_depth=2)
    model = spec.build()
    assert spec.hparams["n_cells"] <= 2 and mz.count_params(model) <= 60_000
    assert model(spec.example_inputs()).shape == (2, 100)
    vit = mz.sample_arch("vit", seed=2, input_shape=(3, 32, 32), num_classes=100, max_depth=1, max_params=50_000)
    assert vit.hparams["depth"] == 1 and vit.build()(vit.example_inputs()).shape == (2, 100)
    with pytest.raises(ConfigError, match="widen"):
        mz.sample_arch("mlp", seed=0, min_params=10, max_params=20)


def test_lm_constraints():
    spec = mz.sample_arch("gpt", seed=4, vocab_size=64, seq_len=32, max_depth=2, max_params=200_000)
    assert spec.hparams["n_layer"] <= 2 and spec.num_params() <= 200_000
    logits = spec.build()(spec.example_inputs()).logits
    assert logits.shape == (2, 32, 64)


def test_timm_family_runs_on_small_inputs():
    spec = mz.sample_arch("timm", seed=0, max_params=1_500_000, pattern="*net*")
    assert "net" in spec.hparams["name"] and spec.num_params() <= 1_500_000
    with torch.no_grad():
        assert spec.build().eval()(spec.example_inputs()).shape == (2, 10)
    with pytest.raises(ConfigError):
        mz.sample_arch("timm", seed=0, pattern="no_such_model*")


def test_nanolm_is_a_hand_written_decoder_of_every_kind():
    specs = [mz.sample_arch("nanolm", seed=s, max_params=300_000, max_depth=4) for s in range(24)]
    for key in ("mlp", "norm", "pos", "tie", "bias"):
        assert len({s.hparams[key] for s in specs}) >= 2, key
    spec = mz.sample_arch("nanolm", seed=3, vocab_size=64, seq_len=32, max_depth=2, max_params=100_000)
    model = spec.build()
    logits = model(spec.example_inputs())  # a plain tensor, not an output object
    assert logits.shape == (2, 32, 64) and spec.hparams["n_layer"] <= 2
    # causal: the logits at position t do not depend on later tokens
    ids = torch.randint(0, 64, (1, 32))
    other = ids.clone()
    other[0, 20:] = (other[0, 20:] + 1) % 64
    assert torch.allclose(model(ids)[0, :20], model(other)[0, :20], atol=1e-5)
    assert not torch.allclose(model(ids)[0, 20:], model(other)[0, 20:])
    with pytest.raises(ConfigError, match="heads"):
        mz.get_family("nanolm").build({**spec.hparams, "width": 30, "n_head": 4})


@pytest.mark.parametrize("kind", mz.realnet.KINDS)
def test_realnet_kinds_are_timm_structures_below_the_named_real_world_nets(kind):
    spec = mz.sample_arch("realnet", seed=1, kinds=[kind], max_params=200_000)
    model = spec.build()
    assert spec.hparams["kind"] == kind and mz.count_params(model) <= 200_000
    assert type(model).__module__.startswith("timm.models")
    with torch.no_grad():
        assert model.eval()(spec.example_inputs()).shape == (2, 10)
    hp = spec.hparams  # never as wide or deep as ResNet-18, RegNetX-200MF, MobileNetV3-050, DeiT-Tiny, Mixer-128
    assert hp.get("width", 0) < 128 and hp.get("channel_multiplier", 0) < 0.5 and hp.get("depth", 0) < 12


def test_realnet_rejects_unknown_kinds():
    with pytest.raises(ConfigError, match="resnet"):
        mz.sample_arch("realnet", seed=0, kinds=["densenet"])
    with pytest.raises(ConfigError, match="realnet hparams"):
        mz.get_family("realnet").build({"kind": "resnet"})
