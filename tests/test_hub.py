"""save_pretrained / from_pretrained: round trip, offline Hub cache, strict and atomic loading."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from ghn import GHN, GHNConfig
from ghn.errors import CheckpointError


@pytest.fixture()
def saved(tmp_path, tiny_ghn):
    tiny_ghn.save_pretrained(tmp_path / "ghn")
    return tmp_path / "ghn"


def test_layout_and_round_trip(saved, tiny_ghn):
    assert sorted(p.name for p in saved.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert json.loads((saved / "config.json").read_text())["hidden_dim"] == tiny_ghn.config.hidden_dim
    loaded = GHN.from_pretrained(saved)
    assert loaded.config == tiny_ghn.config and not loaded.training
    for (k, a), (k2, b) in zip(tiny_ghn.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    x = torch.randn(2, 4)
    p1, p2 = tiny_ghn.predict_params(model, x), loaded.predict_params(model, x)
    assert all(torch.equal(p1[k], p2[k]) for k in p1)


def test_offline_hub_cache(saved, tmp_path, monkeypatch):
    # a pre-populated cache in huggingface_hub's layout; HF_HUB_OFFLINE=1 is set by conftest before import
    commit = "a" * 40
    repo = tmp_path / "cache" / "models--ghn-org--ghn-tiny"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(saved / f, snap / f)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    ghn = GHN.from_pretrained("ghn-org/ghn-tiny", cache_dir=tmp_path / "cache")
    assert isinstance(ghn, GHN) and ghn.config.hidden_dim == 32
    with pytest.raises(CheckpointError, match="cache"):
        GHN.from_pretrained("ghn-org/not-cached", cache_dir=tmp_path / "cache")


def test_missing_files(saved):
    (saved / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors"):
        GHN.from_pretrained(saved)


def test_truncated_weights(saved):
    data = (saved / "model.safetensors").read_bytes()
    (saved / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        GHN.from_pretrained(saved)


def test_config_does_not_match_weights(saved):
    cfg = json.loads((saved / "config.json").read_text())
    cfg["rank"] = 8
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        GHN.from_pretrained(saved)
    cfg["rank"], cfg["hiden_dim"] = 16, 3
    (saved / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="hiden_dim"):
        GHN.from_pretrained(saved)


def test_nan_weights(saved):
    state = load_file(saved / "model.safetensors")
    key = next(k for k, v in state.items() if v.is_floating_point())
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="NaN"):
        GHN.from_pretrained(saved)


def test_missing_and_extra_tensors(saved):
    state = load_file(saved / "model.safetensors")
    state["extra"] = torch.zeros(1)
    save_file(state, saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="unexpected"):
        GHN.from_pretrained(saved)


def test_save_is_atomic(saved, tiny_ghn, monkeypatch):
    before = (saved / "model.safetensors").read_bytes()
    import safetensors.torch

    def crash(tensors, path, metadata=None):
        with open(path, "wb") as f:
            f.write(b"partial")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(safetensors.torch, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        tiny_ghn.save_pretrained(saved)
    assert (saved / "model.safetensors").read_bytes() == before
    assert not [p for p in saved.iterdir() if p.name.endswith(".tmp")]


def test_presets_and_config_errors():
    from ghn.errors import ConfigError
    assert GHNConfig.preset("tiny").hidden_dim == 32
    with pytest.raises(ConfigError, match="unknown GHN preset"):
        GHNConfig.preset("huge")
    with pytest.raises(ConfigError, match="divisible"):
        GHNConfig(hidden_dim=30, num_heads=4)
