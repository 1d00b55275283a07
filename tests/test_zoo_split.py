"""The seeded train / held-out split and the named held-out archs."""
import pytest

import model_zoo as mz
from ghn.errors import ConfigError
from model_zoo.split import HELDOUT_FRACTION, split_score


def _spec(i: int, seed: int = 0) -> mz.ArchSpec:
    return mz.ArchSpec("mlp", dict(input_shape=[1, 28, 28], num_classes=10, widths=[i], norm="none", act="relu",
                                   bias=True), seed=seed)


def test_split_is_a_deterministic_function_of_the_arch():
    specs = [_spec(i) for i in range(4000)]
    splits = [mz.split_of(s) for s in specs]
    assert splits == [mz.split_of(mz.ArchSpec.from_json(s.to_json())) for s in specs]
    assert all(mz.split_of(_spec(i, seed=99)) == splits[i] for i in range(200))  # the sampling seed is ignored
    frac = splits.count("heldout") / len(splits)
    assert abs(frac - HELDOUT_FRACTION) < 0.02  # 4000 draws: std of the fraction is ~0.005
    other = [mz.split_of(s, seed=1) for s in specs]
    assert other != splits  # another split seed draws another split
    assert all(mz.split_of(s, heldout_fraction=0.0) == "train" for s in specs[:50])
    with pytest.raises(ConfigError):
        mz.split_of(specs[0], heldout_fraction=1.5)
    assert all(0.0 <= split_score(s) < 1.0 for s in specs[:50])


def test_heldout_archs():
    archs = mz.heldout_archs(4, seed=0)
    assert len(archs) == 4 and {s.family for s in archs.values()} == {"cnn", "vit"}
    for name, spec in archs.items():
        fam, sample_seed = name.split("_")[1], int(name.split("_")[2])
        assert mz.split_of(spec) == "heldout" and mz.sample_arch(fam, sample_seed) == spec  # deterministic
        assert spec.hparams["input_shape"] == [1, 28, 28] and spec.hparams["num_classes"] == 10
    assert not set(archs) & set(mz.heldout_archs(2, seed=1))
