"""The LM families of issue 22 (``model_zoo/lm_families.py``): GPT-NeoX, Phi / Gemma and ``nn.TransformerEncoder``
LMs sample within bounds, run causally, round-trip as JSON, graph with full coverage and have held-out archs."""
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import model_zoo as mz  # noqa: E402
from ghn import build_graph  # noqa: E402
from ghn.errors import ConfigError  # noqa: E402
from model_zoo.spec import ArchSpec  # noqa: E402
from train.tasks import logits_of  # noqa: E402

FAMILIES = ("neox", "phi_gemma", "torchlm")
SMALL = dict(max_params=200_000, max_depth=4)  # the fortunes predictor's first-stage constraints


@pytest.mark.parametrize("family", FAMILIES)
def test_samples_fit_run_causally_and_graph(family):
    for seed in (0, 7, 19, 31, 42):
        spec = mz.sample_arch(family, seed, **SMALL)
        assert spec.task == "lm" and spec.hparams["n_layer"] <= 4
        assert ArchSpec.from_json(spec.to_json()) == spec
        model = spec.build()
        assert 10_000 <= mz.count_params(model) <= 200_000, (seed, spec.hparams)
        x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            logits = logits_of(model(x))
            assert logits.shape == (2, 16, 256) and torch.isfinite(logits).all()
            y = x.clone()
            y[:, 10:] = (y[:, 10:] + 1) % 256  # change later tokens: earlier logits must not move
            torch.testing.assert_close(logits_of(model(y))[:, :10], logits[:, :10])
        graph = build_graph(model, torch.randint(0, 256, (2, 64)))
        assert graph.coverage.fraction == 1.0, (seed, graph.coverage.missing)


@pytest.mark.parametrize("family", FAMILIES)
def test_sampling_and_build_are_seeded(family):
    for seed in (3, 11):
        a, b = mz.sample_arch(family, seed, **SMALL), mz.sample_arch(family, seed, **SMALL)
        assert a == b and a.hparams == b.hparams
        x = a.example_inputs()
        with torch.no_grad():
            torch.testing.assert_close(logits_of(a.build()(x)), logits_of(b.build()(x)), rtol=0, atol=0)
    assert len({mz.sample_arch(family, s, **SMALL).arch_hash() for s in range(8)}) >= 6


@pytest.mark.parametrize("family", FAMILIES)
def test_bad_hparams_name_the_problem(family):
    fam, hp = mz.get_family(family), mz.create_arch(f"test_{family}").hparams
    with pytest.raises(ConfigError, match="missing \\['vocab_size'\\]"):
        fam.build({k: v for k, v in hp.items() if k != "vocab_size"})
    with pytest.raises(ConfigError, match="unknown \\['colour'\\]"):
        fam.build({**hp, "colour": "red"})
    with pytest.raises(ConfigError, match="activation"):
        fam.build({**hp, "activation": "swish-ish"})
    for n_head in (0, 3) if family != "phi_gemma" else (0,):  # Gemma's head_dim is free: 3 heads are fine
        with pytest.raises(ConfigError, match="n_head"):
            fam.build({**hp, "n_head": n_head})
    with pytest.raises(ConfigError):
        mz.sample_arch(family, 0, max_depth=0)


def test_family_specific_checks():
    neox, pg = mz.create_arch("test_neox").hparams, mz.create_arch("test_phi_gemma").hparams
    with pytest.raises(ConfigError, match="even number"):  # 8 dims x 0.125 = 1 rotated dim: rotate_half breaks
        mz.get_family("neox").build({**neox, "rotary_pct": 0.125})
    with pytest.raises(ConfigError, match="in \\(0, 1\\]"):
        mz.get_family("neox").build({**neox, "rotary_pct": 1.5})
    assert mz.count_params(mz.get_family("neox").build({**neox, "width": 40, "n_head": 2, "rotary_pct": 0.4})) > 0
    with pytest.raises(ConfigError, match="must divide"):  # GQA: the KV heads divide the heads
        mz.get_family("phi_gemma").build({**pg, "n_head": 4, "n_kv_head": 3})
    with pytest.raises(ConfigError, match="whole heads"):
        mz.get_family("phi_gemma").build({**pg, "partial_rotary_factor": 0.5})
    with pytest.raises(ConfigError, match="no free head dim"):
        mz.get_family("phi_gemma").build({**pg, "model_type": "phi", "activation": "gelu_new", "head_dim": 16})
    with pytest.raises(ConfigError, match="model_type"):
        mz.get_family("phi_gemma").build({**pg, "model_type": "gemma2"})


def test_every_kind_is_sampled_and_has_a_heldout_split():
    for family in FAMILIES:
        specs = [mz.sample_arch(family, s, **SMALL) for s in range(60)]
        assert any(mz.split_of(s) == "heldout" for s in specs), family
        assert any(mz.split_of(s) == "train" for s in specs), family
        assert len({s.hparams["n_head"] for s in specs}) >= 3, family
        if family == "neox":
            assert {s.hparams["parallel_residual"] for s in specs} == {True, False}
            assert {s.hparams["rotary_pct"] for s in specs} == {0.25, 0.5, 1.0}
        if family == "phi_gemma":
            assert {s.hparams["model_type"] for s in specs} == {"phi", "gemma"}
            gemma = [s.hparams for s in specs if s.hparams["model_type"] == "gemma"]
            assert any(h["n_kv_head"] == 1 < h["n_head"] for h in gemma)  # MQA
            assert any(h["n_head"] * h["head_dim"] != h["width"] for h in gemma)  # head_dim free of the width
            assert any(1 < h["n_kv_head"] < h["n_head"] for s in specs for h in [s.hparams])  # GQA
        if family == "torchlm":
            for key in ("norm_first", "pos", "tie", "activation"):
                assert len({s.hparams[key] for s in specs}) == 2, key


def test_deep_wide_sample_builds():
    for family in FAMILIES:
        spec = next(s for s in (mz.sample_arch(family, seed) for seed in range(200)) if s.hparams["n_layer"] >= 6)
        model = spec.build(device="meta")
        assert spec.hparams["n_layer"] <= 8 and 10_000 <= mz.count_params(model) <= 2_000_000
        assert mz.graph_of(spec).coverage.fraction == 1.0
    big = mz.sample_arch("torchlm", 5, min_params=1_000_000, max_params=2_000_000, max_depth=8)
    with torch.no_grad():
        assert big.build()(big.example_inputs()).shape == (2, 64, 256)
