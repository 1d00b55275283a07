"""ArchDataset: determinism, DDP/worker partitioning, resuming, the JSON graph cache, lazy models."""
import json
import pickle

import pytest
import torch
from torch.utils.data import DataLoader

import model_zoo as mz
import model_zoo.dataset as zds
from ghn.errors import ConfigError

KW = dict(families=("mlp", "cnn"), constraints=dict(max_params=30_000, max_depth=2))


def _take(ds, n):
    it = iter(ds)
    return [next(it) for _ in range(n)]


def test_deterministic_stream_of_train_archs():
    a, b = _take(mz.ArchDataset(seed=1, **KW), 6), _take(mz.ArchDataset(seed=1, **KW), 6)
    assert [s.spec for s in a] == [s.spec for s in b]
    assert [s.graph.to_dict() for s in a] == [s.graph.to_dict() for s in b]
    assert [s.index for s in a] == list(range(6))
    assert all(mz.split_of(s.spec) == "train" for s in a)
    assert [s.spec for s in _take(mz.ArchDataset(seed=2, **KW), 6)] != [s.spec for s in a]
    held = _take(mz.ArchDataset(seed=1, split="heldout", **KW), 2)
    assert all(mz.split_of(s.spec) == "heldout" for s in held)


def test_ranks_partition_the_stream():
    whole = [mz.ArchDataset(seed=0, **KW).spec_at(k) for k in range(6)]
    r0 = _take(mz.ArchDataset(seed=0, rank=0, world_size=2, **KW), 3)
    r1 = _take(mz.ArchDataset(seed=0, rank=1, world_size=2, **KW), 3)
    assert [s.index for s in r0] == [0, 2, 4] and [s.index for s in r1] == [1, 3, 5]
    assert [s.spec for s in r0] + [s.spec for s in r1] == whole[0::2] + whole[1::2]
    with pytest.raises(ConfigError):
        mz.ArchDataset(rank=2, world_size=2)


def test_dataloader_workers_keep_the_order():
    ds = mz.ArchDataset(seed=0, **KW)
    loader = DataLoader(ds, batch_size=None, num_workers=2)
    got = []
    for sample in loader:
        got.append(sample)
        if len(got) == 4:
            break
    assert [s.index for s in got] == [0, 1, 2, 3]
    assert [s.spec for s in got] == [ds.spec_at(k) for k in range(4)]


def test_resume_from_state():
    ds = mz.ArchDataset(seed=3, **KW)
    first = _take(ds, 5)
    assert ds.state_dict() == {"seed": 3, "position": 5, "rank": 0, "world_size": 1}
    json.dumps(ds.state_dict())
    resumed = mz.ArchDataset(seed=3, **KW)
    resumed.load_state_dict(first[2].state)  # what a trainer with DataLoader workers stores
    assert [s.spec for s in _take(resumed, 2)] == [first[3].spec, first[4].spec]
    with pytest.raises(ConfigError):
        mz.ArchDataset(seed=4, **KW).load_state_dict(ds.state_dict())


def test_graph_cache(tmp_path, monkeypatch):
    cold = _take(mz.ArchDataset(seed=0, cache_dir=tmp_path, **KW), 3)
    files = sorted(tmp_path.rglob("*.json"))
    assert len(files) == 3 and not list(tmp_path.rglob("*.tmp"))
    entry = json.loads(files[0].read_text())
    assert set(entry) == {"spec", "ghn_version", "graph"}

    def no_build(spec):
        raise AssertionError("graph should come from the cache")

    monkeypatch.setattr(zds, "graph_of", no_build)
    warm = _take(mz.ArchDataset(seed=0, cache_dir=tmp_path, **KW), 3)
    assert [s.graph.to_dict() for s in warm] == [s.graph.to_dict() for s in cold]
    monkeypatch.undo()
    cache = zds.GraphCache(tmp_path)
    cache.path(cold[0].spec).write_text("{not json")  # a corrupt entry is rebuilt, not trusted
    assert cache.get(cold[0].spec) is None
    assert cache.get_or_build(cold[0].spec).to_dict() == cold[0].graph.to_dict()
    assert json.loads(cache.path(cold[0].spec).read_text())["spec"] == cold[0].spec.to_dict()


def test_model_is_lazy_and_not_pickled():
    sample = _take(mz.ArchDataset(seed=0, **KW), 1)[0]
    assert "model" not in sample.__dict__
    model = sample.model
    assert isinstance(model, torch.nn.Module) and sample.model is model
    assert not any(p.is_meta for p in model.parameters())
    clone = pickle.loads(pickle.dumps(sample))  # what a DataLoader worker sends
    assert "model" not in clone.__dict__ and clone.spec == sample.spec


def test_per_family_constraints():
    ds = mz.ArchDataset(families=("cnn", "gpt"), constraints={"cnn": dict(max_params=20_000),
                                                              "gpt": dict(max_params=50_000, max_depth=1)})
    specs = [ds.spec_at(k) for k in range(6)]
    assert {s.family for s in specs} == {"cnn", "gpt"}
    assert all(s.num_params() <= (20_000 if s.family == "cnn" else 50_000) for s in specs)
    with pytest.raises(ConfigError):
        mz.ArchDataset(families=("cnn", "nope"))
