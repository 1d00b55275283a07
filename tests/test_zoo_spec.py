"""ArchSpec: JSON round trips, hashing, seeded builds, example inputs; registry verbs."""
import json

import pytest
import torch

import model_zoo as mz
from ghn.errors import ConfigError

FAMILIES = ["cnn", "vit", "mlp", "gpt", "llama", "timm"]


@pytest.mark.parametrize("family", FAMILIES)
def test_json_round_trip(family):
    spec = mz.sample_arch(family, seed=3)
    s = spec.to_json()
    back = mz.ArchSpec.from_json(s)
    assert back == spec and back.to_json() == s and back.spec_hash() == spec.spec_hash()
    assert json.loads(s)["family"] == family and back.task == ("lm" if family in ("gpt", "llama") else "image")


def test_hparams_normalised_and_validated():
    a = mz.ArchSpec("mlp", {"input_shape": (1, 28, 28), "widths": (4,), "num_classes": 10})
    assert a.hparams["input_shape"] == [1, 28, 28]  # tuples become lists: equality survives JSON
    assert mz.ArchSpec.from_json(a.to_json()) == a
    with pytest.raises(ConfigError):
        mz.ArchSpec("mlp", {"f": object()})
    with pytest.raises(ConfigError):
        mz.ArchSpec("mlp", {}, task="audio")
    with pytest.raises(ConfigError, match="version"):
        mz.ArchSpec.from_dict({"version": 99, "family": "mlp", "hparams": {}})
    with pytest.raises(ConfigError):
        mz.ArchSpec.from_dict({"family": "mlp", "weights": 1})


def test_hashes():
    a = mz.create_arch("test_cnn")
    b = mz.create_arch("test_cnn", seed=5)
    assert a.arch_hash() == b.arch_hash()  # same architecture, other seed
    assert a.spec_hash() != b.spec_hash()
    assert a.arch_hash() != mz.create_arch("test_cnn", C=8).arch_hash()


def test_build_is_seeded_and_keeps_global_rng():
    spec = mz.create_arch("test_vit", seed=7)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    m1, m2 = spec.build(), spec.build()
    assert torch.equal(torch.rand(1), before)  # build() restored the global RNG
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        assert torch.equal(v1, v2), k
    m3 = mz.create_arch("test_vit", seed=8).build()
    assert not torch.equal(m1.patch_embed.proj.weight, m3.patch_embed.proj.weight)


def test_meta_build_has_no_storage():
    model = mz.create_arch("test_gpt").build(device="meta")
    assert all(p.is_meta for p in model.parameters())


def test_example_inputs():
    x = mz.create_arch("test_cnn").example_inputs(batch_size=3)
    assert x.shape == (3, 1, 28, 28) and x.dtype == torch.float32
    spec = mz.create_arch("test_llama")
    ids = spec.example_inputs(batch_size=2)
    assert ids.dtype == torch.long and ids.shape == (2, spec.hparams["seq_len"])
    assert int(ids.max()) < spec.hparams["vocab_size"]
    assert torch.equal(ids, spec.example_inputs(batch_size=2))  # seeded


@pytest.mark.parametrize("name", mz.list_archs("test_*"))
def test_test_zoo_is_tiny_and_runs(name):
    spec = mz.create_arch(name)
    model = spec.build()
    assert 100 <= mz.count_params(model) <= 10_000
    out = model(spec.example_inputs(batch_size=2))
    out = getattr(out, "logits", out)
    expected = (2, 10) if spec.task == "image" else (2, spec.hparams["seq_len"], spec.hparams["vocab_size"])
    assert tuple(out.shape) == expected


def test_registry_verbs():
    names = mz.list_archs("test_*")
    assert {"test_cnn", "test_resnet", "test_vit", "test_gpt", "test_llama", "test_mlp"} <= set(names)
    assert mz.list_archs("test_vit*") == sorted(n for n in names if n.startswith("test_vit"))
    assert "test_vit" not in mz.list_archs("test_*", exclude="test_vit*")
    assert mz.create_arch("test_mlp", widths=[8, 8], num_classes=None).hparams["widths"] == [8, 8]  # None: ignored
    with pytest.raises(ConfigError, match="test_cnn"):
        mz.create_arch("test_cn")  # suggests the nearest name
    with pytest.raises(ConfigError, match="valid"):
        mz.create_arch("test_mlp", depth=3)
    with pytest.raises(ConfigError, match="max_params"):
        mz.sample_arch("cnn", seed=0, max_param=10)
    with pytest.raises(ConfigError):
        mz.sample_arch("resnet", seed=0)


def test_register_arch():
    @mz.register_arch
    def my_zoo_mlp():
        return mz.ArchSpec("mlp", dict(input_shape=[1, 4, 4], num_classes=2, widths=[3], norm="none", act="relu",
                                       bias=True))

    assert "my_zoo_mlp" in mz.list_archs("my_zoo_*")
    assert mz.create_arch("my_zoo_mlp").build()(torch.randn(2, 1, 4, 4)).shape == (2, 2)
