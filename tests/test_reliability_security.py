"""Issue 7, part 1: no pickle anywhere; checkpoints are loaded strictly and saved atomically.

Every file the package writes or reads is safetensors or JSON/YAML. A scan of the source tree (ghn, model_zoo,
train) rejects pickle-based I/O, and loading a directory that holds only a ``pytorch_model.bin`` must raise
CheckpointError without ever unpickling it.
"""
from __future__ import annotations

import ast
import json
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ghn import GHN, GHNConfig
from ghn.errors import CheckpointError, ConfigError, GHNError

ROOT = Path(__file__).resolve().parents[1]
SCANNED = ("ghn", "model_zoo", "train")
PICKLE_MODULES = frozenset({"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"})


# ---- the pickle scan ----------------------------------------------------------------------------------------------
def _kw(call: ast.Call, name: str):
    for k in call.keywords:
        if k.arg == name:
            return k.value
    return None


def _is_true(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def pickle_uses(source: str, filename: str = "<src>") -> list[str]:
    """Pickle-based I/O in ``source``: imports of pickle-like modules, torch.save, torch.load without
    ``weights_only=True``, numpy.load with ``allow_pickle=True``, pandas pickles. Returns ``file:line: what``."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}  # local name -> module it stands for ("torch", "numpy", "pandas", ...)
    found: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                top = a.name.split(".")[0]
                aliases[a.asname or top] = a.name
                if top in PICKLE_MODULES:
                    found.append(f"{filename}:{node.lineno}: import {a.name}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            top = node.module.split(".")[0]
            if top in PICKLE_MODULES:
                found.append(f"{filename}:{node.lineno}: from {node.module} import ...")
            for a in node.names:
                if top == "torch" and a.name in ("load", "save"):
                    found.append(f"{filename}:{node.lineno}: from torch import {a.name}")
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
            owner = aliases.get(f.value.id, f.value.id)
            what = f"{owner}.{f.attr}"
        elif isinstance(f, ast.Name):
            what = aliases.get(f.id, f.id)
        else:
            continue
        if what in ("torch.save", "torch.serialization.save"):
            found.append(f"{filename}:{node.lineno}: torch.save writes a pickle; use safetensors.torch.save_file")
        elif what in ("torch.load", "torch.serialization.load") and not _is_true(_kw(node, "weights_only")):
            found.append(f"{filename}:{node.lineno}: torch.load without weights_only=True")
        elif what in ("numpy.load", "np.load") and _kw(node, "allow_pickle") is not None \
                and not (isinstance(_kw(node, "allow_pickle"), ast.Constant) and not _kw(node, "allow_pickle").value):
            found.append(f"{filename}:{node.lineno}: numpy.load with allow_pickle")
        elif isinstance(f, ast.Attribute) and f.attr in ("read_pickle", "to_pickle"):
            found.append(f"{filename}:{node.lineno}: {what} (a pickle)")
    return found


def test_the_scanner_finds_each_kind_of_pickle_use():
    bad = """
import pickle
import joblib as jl
from dill import loads
import torch, numpy as np, pandas as pd
from torch import load as tload
torch.save(obj, "x.pt")
torch.load("x.pt")
torch.load("x.pt", weights_only=False)
np.load("x.npy", allow_pickle=True)
df = pd.read_pickle("x.pkl")
"""
    found = pickle_uses(bad)
    for what in ("import pickle", "import joblib", "from dill", "from torch import load", "torch.save",
                 "torch.load without", "allow_pickle", "read_pickle"):
        assert any(what in f for f in found), (what, found)
    assert sum("torch.load without" in f for f in found) == 2
    ok = """
import torch, numpy as np, json
from safetensors.torch import load_file, save_file
state = torch.load("x.pt", weights_only=True, map_location="cpu")
np.load("x.npy")
np.load("x.npy", allow_pickle=False)
text = "we never pickle anything"  # pickle in a comment or a string is fine
"""
    assert pickle_uses(ok) == []


def test_source_tree_has_no_pickle_io():
    files = [p for d in SCANNED if (ROOT / d).is_dir() for p in sorted((ROOT / d).rglob("*.py"))]
    assert len(files) > 10, "the scan found almost no source files; did the layout change?"
    found = [f for p in files for f in pickle_uses(p.read_text(), str(p.relative_to(ROOT)))]
    assert not found, "pickle-based I/O (use safetensors / JSON / YAML):\n" + "\n".join(found)


def test_written_files_are_safetensors_json_or_text(tmp_path, tiny_ghn):
    tiny_ghn.save_pretrained(tmp_path)
    for p in tmp_path.iterdir():
        data = p.read_bytes()
        assert not data.startswith(b"PK\x03\x04"), f"{p.name} is a zip (torch.save format)"
        if p.suffix == ".safetensors":  # 8-byte little-endian header length, then a JSON header
            n = int.from_bytes(data[:8], "little")
            assert isinstance(json.loads(data[8:8 + n]), dict)
            load_file(p)
            continue
        assert not data.startswith(b"\x80"), f"{p.name} starts like a pickle"  # pickle protocol 2+ header
        if p.suffix == ".json":
            json.loads(data)
        else:
            assert p.suffix == ".md", p.name
            data.decode("utf-8")


# ---- pytorch_model.bin is never unpickled ------------------------------------------------------------------------
@pytest.fixture()
def no_unpickling(monkeypatch):
    """Any attempt to unpickle fails the test loudly (AssertionError is not caught by from_pretrained)."""
    def trap(*args, **kwargs):
        raise AssertionError("ghn tried to unpickle a file")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, trap)
    monkeypatch.setattr(torch, "load", trap)
    monkeypatch.setattr(torch.serialization, "load", trap)


@pytest.mark.parametrize("with_config", [False, True])
def test_pytorch_model_bin_is_refused_without_unpickling(tmp_path, tiny_ghn, no_unpickling, with_config):
    d = tmp_path / "ckpt"
    d.mkdir()
    # The bytes of a pickle would go here; any bytes do, since they must never be read as a pickle.
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04\x95" + bytes(range(256)) * 4)
    if with_config:
        (d / "config.json").write_text(json.dumps(tiny_ghn.config.to_dict()))
    with pytest.raises(CheckpointError, match="model.safetensors") as e:
        GHN.from_pretrained(d)
    assert isinstance(e.value, OSError) and "save_pretrained" in str(e.value)


def test_pytorch_model_bin_in_the_hub_cache_is_refused(tmp_path, tiny_ghn, no_unpickling):
    commit = "b" * 40
    repo = tmp_path / "cache" / "models--org--legacy"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    (snap / "config.json").write_text(json.dumps(tiny_ghn.config.to_dict()))
    (snap / "pytorch_model.bin").write_bytes(b"\x80\x04not-a-real-pickle")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        GHN.from_pretrained("org/legacy", cache_dir=tmp_path / "cache", local_files_only=True)


# ---- strict loading: every kind of broken checkpoint is a CheckpointError -------------------------------------------
@pytest.fixture(scope="module")
def good_dir(tmp_path_factory, tiny_ghn):
    d = tmp_path_factory.mktemp("good")
    tiny_ghn.save_pretrained(d)
    return d


@pytest.fixture()
def ckpt(tmp_path, good_dir):
    d = tmp_path / "ckpt"
    shutil.copytree(good_dir, d)
    return d


def _first_float(state: dict) -> str:
    return next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)


CORRUPTIONS = {
    "no weights": lambda d: (d / "model.safetensors").unlink(),
    "no config": lambda d: (d / "config.json").unlink(),
    "empty dir": lambda d: [p.unlink() for p in d.iterdir()],
    "weights are a directory": lambda d: ((d / "model.safetensors").unlink(), (d / "model.safetensors").mkdir()),
    "zero-byte weights": lambda d: (d / "model.safetensors").write_bytes(b""),
    "truncated weights": lambda d: (d / "model.safetensors").write_bytes(
        (d / "model.safetensors").read_bytes()[:-100]),
    "truncated header": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:40]),
    "garbage weights": lambda d: (d / "model.safetensors").write_bytes(bytes(range(256)) * 40),
    "corrupt header json": lambda d: (d / "model.safetensors").write_bytes(
        (lambda b: b[:8] + b[8:20].replace(b"{", b"[") + b[20:])((d / "model.safetensors").read_bytes())),
    "no tensors": lambda d: save_file({}, d / "model.safetensors"),
    "extra tensor": lambda d: save_file({**load_file(d / "model.safetensors"), "extra.weight": torch.zeros(2)},
                                        d / "model.safetensors"),
    "missing tensor": lambda d: save_file(
        (lambda s: {k: v for k, v in s.items() if k != _first_float(s)})(load_file(d / "model.safetensors")),
        d / "model.safetensors"),
    "wrong shape": lambda d: save_file(
        (lambda s: {**s, _first_float(s): s[_first_float(s)].flatten()[:-1].clone()})(load_file(d / "model.safetensors")),
        d / "model.safetensors"),
    "NaN in the last tensor": lambda d: save_file(
        (lambda s, k: {**s, k: torch.full_like(s[k], float("nan"))})(
            *(lambda s: (s, [k for k, v in s.items() if v.is_floating_point()][-1]))(load_file(d / "model.safetensors"))),
        d / "model.safetensors"),
    "one Inf value": lambda d: save_file(
        (lambda s: {**s, _first_float(s): s[_first_float(s)].clone().index_fill_(0, torch.tensor([0]), float("inf"))})(
            load_file(d / "model.safetensors")), d / "model.safetensors"),
    "config not json": lambda d: (d / "config.json").write_text("hidden_dim: 32"),
    "config is a list": lambda d: (d / "config.json").write_text("[32, 2]"),
    "config is null": lambda d: (d / "config.json").write_text("null"),
    "config not utf-8": lambda d: (d / "config.json").write_bytes(b"\xff\xfe{\x00"),
    "config unknown key": lambda d: (d / "config.json").write_text(
        json.dumps({**json.loads((d / "config.json").read_text()), "hiden_dim": 32})),
    "config wrong type": lambda d: (d / "config.json").write_text(
        json.dumps({**json.loads((d / "config.json").read_text()), "hidden_dim": "32"})),
    "config of another size": lambda d: (d / "config.json").write_text(
        json.dumps({**json.loads((d / "config.json").read_text()), "decoder_hidden": 48})),
}


@pytest.mark.parametrize("what", list(CORRUPTIONS))
def test_broken_checkpoint_is_a_checkpoint_error(ckpt, what, monkeypatch):
    CORRUPTIONS[what](ckpt)
    loaded = []
    monkeypatch.setattr(GHN, "load_state_dict", lambda self, *a, **k: loaded.append(1))
    with pytest.raises(CheckpointError) as e:
        GHN.from_pretrained(ckpt)
    msg = str(e.value)
    assert str(ckpt) in msg or "config" in msg, msg  # names the file
    assert not loaded, "tensors were copied into a GHN before every check had passed"


def test_tensor_of_another_dtype_is_a_checkpoint_error(ckpt):
    state = load_file(ckpt / "model.safetensors")
    key = _first_float(state)
    save_file({**state, key: state[key].round().long()}, ckpt / "model.safetensors")
    with pytest.raises(CheckpointError, match="dtype"):
        GHN.from_pretrained(ckpt)


def test_not_a_checkpoint_path(tmp_path, good_dir):
    with pytest.raises(CheckpointError, match="save_pretrained"):
        GHN.from_pretrained(good_dir / "model.safetensors")  # a file, not the directory
    with pytest.raises(CheckpointError):
        GHN.from_pretrained(tmp_path / "does" / "not" / "exist")
    with pytest.raises(CheckpointError):
        GHN.from_pretrained("not-cached/anywhere", cache_dir=tmp_path / "empty-cache")
    with pytest.raises(ConfigError, match="unknown argument"):
        GHN.from_pretrained(good_dir, strict=False)


def test_good_checkpoint_still_loads_exactly(good_dir, tiny_ghn):
    loaded = GHN.from_pretrained(good_dir)
    a, b = tiny_ghn.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_loading_does_not_touch_the_global_rng(good_dir):
    state = torch.random.get_rng_state()
    GHN.from_pretrained(good_dir)
    assert torch.equal(state, torch.random.get_rng_state())


# ---- atomic save --------------------------------------------------------------------------------------------------
def _other_ghn() -> GHN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(123)
        return GHN(GHNConfig.preset("tiny", rank=8, decoder_hidden=48))


def _assert_is(d: Path, ghn: GHN) -> None:
    loaded = GHN.from_pretrained(d)
    assert loaded.config == ghn.config
    assert all(torch.equal(v, ghn.state_dict()[k]) for k, v in loaded.state_dict().items())
    assert not [p.name for p in d.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")], \
        "temporary files were left behind"


def test_crash_while_writing_weights_keeps_the_previous_checkpoint(ckpt, tiny_ghn, monkeypatch):
    import safetensors.torch

    def disk_full(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"\x00" * 1000)  # half a file ...
        raise OSError(28, "No space left on device")  # ... then the disk is full

    monkeypatch.setattr(safetensors.torch, "save_file", disk_full)
    with pytest.raises(OSError, match="No space"):
        _other_ghn().save_pretrained(ckpt)
    monkeypatch.undo()
    _assert_is(ckpt, tiny_ghn)


def test_interrupt_while_writing_weights_keeps_the_previous_checkpoint(ckpt, tiny_ghn, monkeypatch):
    import safetensors.torch
    real = safetensors.torch.save_file

    def interrupted(tensors, filename, metadata=None):
        real(dict(list(tensors.items())[: len(tensors) // 2]), filename, metadata=metadata)
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _other_ghn().save_pretrained(ckpt)
    monkeypatch.undo()
    _assert_is(ckpt, tiny_ghn)


def test_crash_while_writing_config_keeps_the_previous_checkpoint(ckpt, tiny_ghn, monkeypatch):
    real = Path.write_text

    def disk_full(self, *args, **kwargs):
        if ".config.json" in self.name:
            raise OSError(28, "No space left on device")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", disk_full)
    with pytest.raises(OSError):
        _other_ghn().save_pretrained(ckpt)
    monkeypatch.undo()
    _assert_is(ckpt, tiny_ghn)


def test_save_then_load_round_trip_after_a_failed_save(ckpt, monkeypatch):
    """A failed save is not sticky: the next save succeeds and is what gets loaded."""
    import safetensors.torch
    real = safetensors.torch.save_file
    calls = []

    def fail_once(tensors, filename, metadata=None):
        calls.append(filename)
        if len(calls) == 1:
            raise OSError(5, "I/O error")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", fail_once)
    other = _other_ghn()
    with pytest.raises(OSError):
        other.save_pretrained(ckpt)
    other.save_pretrained(ckpt)
    monkeypatch.undo()
    _assert_is(ckpt, other)


def test_checkpoint_errors_are_typed():
    assert issubclass(CheckpointError, OSError) and issubclass(CheckpointError, GHNError)
