"""Issue 14, item 4: ghn-predict checks --out before predicting, writes every file to a temporary directory and
moves them into place, cleans up after any failure or Ctrl-C, removes stale shards, writes 0644 files."""
from __future__ import annotations

import errno
import json
import os
import stat
import tempfile

import pytest
from safetensors.torch import load_file

import ghn.hypernet
from ghn.cli import main

GPT2 = json.dumps({"n_layer": 2, "n_embd": 32, "n_head": 2, "vocab_size": 500, "n_positions": 32, "bos_token_id": 0,
                   "eos_token_id": 0})


def _argv(ghn_dir, out, *extra):
    return ["--model", "hf:gpt2", "--model-kwargs", GPT2, "--meta", "-q", "--ghn", str(ghn_dir), "--out", str(out),
            *extra]


def _run(argv, capsys):
    rc = main(argv)
    return rc, capsys.readouterr().err


@pytest.fixture
def predicted(monkeypatch):
    """Counts predictions, to show that a bad destination fails before any work."""
    calls = []
    real = ghn.hypernet.GHN.predict

    def predict(self, *a, **k):
        calls.append(1)
        return real(self, *a, **k)

    monkeypatch.setattr(ghn.hypernet.GHN, "predict", predict)
    return calls


@pytest.mark.parametrize("case", ["is_dir", "missing_dir", "read_only"])
def test_a_bad_destination_fails_before_predicting(case, ghn_dir, tmp_path, capsys, monkeypatch, predicted):
    out = {"is_dir": tmp_path, "missing_dir": tmp_path / "nope" / "m.safetensors",
           "read_only": tmp_path / "m.safetensors"}[case]
    if case == "read_only":  # (chmod does not stop root, so the OS answer is simulated)
        def refuse(*a, **k):
            raise PermissionError(errno.EACCES, "Permission denied")
        monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    rc, err = _run(_argv(ghn_dir, out), capsys)
    assert rc == 1 and err.startswith("ghn-predict: error: --out") and err.count("\n") == 1, err
    assert {"is_dir": "is a directory", "missing_dir": "does not exist", "read_only": "Permission denied"}[case] in err
    assert not predicted and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_a_failure_while_writing_leaves_nothing(interrupt, ghn_dir, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    real = safetensors.torch.save_file
    written = []

    def save_file(tensors, path, metadata=None):
        if written:  # the second shard: Ctrl-C, or a full disk
            raise interrupt(errno.ENOSPC, "No space left on device") if interrupt is OSError else interrupt()
        written.append(path)
        real(tensors, path, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", save_file)
    old = tmp_path / "m.safetensors"
    old.write_bytes(b"an earlier result")
    rc, err = _run(_argv(ghn_dir, old, "--max-shard-size", "100KB"), capsys)
    assert written and err.count("\n") == 1, err
    if interrupt is KeyboardInterrupt:
        assert rc == 130 and err == "ghn-predict: interrupted; no output written\n"
    else:
        assert rc == 1 and "No space left on device" in err and "Traceback" not in err
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]  # no shard, no index, no temporary directory
    assert old.read_bytes() == b"an earlier result"


def test_stale_shards_of_an_earlier_run_are_removed(ghn_dir, tmp_path, capsys):
    out = tmp_path / "m.safetensors"
    (tmp_path / "other.safetensors").write_bytes(b"not ours")
    assert _run(_argv(ghn_dir, out, "--max-shard-size", "40KB"), capsys)[0] == 0
    many = sorted(p.name for p in tmp_path.iterdir())
    assert _run(_argv(ghn_dir, out, "--max-shard-size", "100KB"), capsys)[0] == 0
    fewer = sorted(p.name for p in tmp_path.iterdir())
    index = json.loads((tmp_path / "m.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(many) > len(fewer) > 3 and set(fewer) == shards | {"m.safetensors.index.json", "other.safetensors"}
    names = set()
    for s in shards:
        names |= set(load_file(tmp_path / s))
    assert names == set(index["weight_map"])
    assert _run(_argv(ghn_dir, out), capsys)[0] == 0  # now small enough for one file: no index, no shards left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors", "other.safetensors"]
    assert "transformer.wte.weight" in load_file(out)


def test_files_are_written_like_save_pretrained(ghn_dir, tmp_path, capsys):
    mask = os.umask(0o022)
    try:
        assert _run(_argv(ghn_dir, tmp_path / "m.safetensors", "--max-shard-size", "100KB"), capsys)[0] == 0
    finally:
        os.umask(mask)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert len(modes) > 2 and set(modes.values()) == {0o644}, modes
