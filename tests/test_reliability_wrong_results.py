"""Issue 14, items 3, 6 and 7: results that used to be silently wrong.

3. ``predict(model, graph=<another model's graph>)`` wrote the tensors whose names matched and reported 100 %.
6. ``nn.Embedding(padding_idx=...)``: the padding row was overwritten; PyTorch keeps it zero.
7. A checkpoint corrupted into finite values loaded silently: ``save_pretrained`` now records the sha256 of
   ``model.safetensors`` in ``config.json`` and ``from_pretrained`` verifies it.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from conftest import tiny_bert
from ghn import GHN, build_graph, init_empty_weights
from ghn.errors import CheckpointError, GraphError

ROOT = Path(__file__).resolve().parents[1]


# ---- 3: a graph built from another model ---------------------------------------------------------------------------
def _mlp(*widths: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths, widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_graph_of_a_smaller_model_is_refused_and_the_model_untouched(ghn_):
    """The smaller model's names and shapes are a subset of the bigger one's: every check per tensor passes."""
    small, big = _mlp(4, 8, 3), _mlp(4, 8, 3, 5)
    graph = build_graph(small, torch.randn(2, 4))
    before = _state(big)
    for call in (ghn_.predict, ghn_.predict_params):
        with pytest.raises(GraphError) as e:
            call(big, graph=graph)
        assert isinstance(e.value, ValueError)
        msg = str(e.value)
        assert "4.weight" in msg and "another model" in msg and "build_graph" in msg  # names the gap and the fix
    after = big.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_graph_with_other_shapes_or_more_parameters_is_refused(ghn_):
    wide = _mlp(4, 9, 3)
    with pytest.raises(GraphError, match=r"0\.weight.*\(9, 4\).*\(8, 4\)"):
        ghn_.predict_params(_mlp(4, 8, 3), graph=build_graph(wide, torch.randn(2, 4)))
    with pytest.raises(GraphError, match="4.weight"):
        ghn_.predict(_mlp(4, 8, 3), graph=build_graph(_mlp(4, 8, 3, 5), torch.randn(2, 4)))


def test_resnet18_graph_on_resnet34_is_refused(ghn_):
    """The case from the issue: 62 of resnet34's 110 tensors were written from a resnet18 graph (meta: no init)."""
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        r18 = timm.create_model("resnet18", num_classes=10, in_chans=1)
        r34 = timm.create_model("resnet34", num_classes=10, in_chans=1)
    graph = build_graph(r18, torch.randn(2, 1, 28, 28))
    with pytest.raises(GraphError, match="resnet34|ResNet"):
        ghn_.predict(r34, graph=graph)
    assert all(p.is_meta for p in r34.parameters())  # not materialised: nothing was done


def test_graph_of_the_same_model_still_works(ghn_):
    model = _mlp(4, 8, 3)
    graph = build_graph(model, torch.randn(2, 4))
    twin = _mlp(4, 8, 3)  # another instance of the same architecture: same names and shapes, so it fits
    assert ghn_.predict_params(twin, graph=graph).coverage.fraction == 1.0
    ghn_.predict(model, graph=graph)


# ---- 6: Embedding(padding_idx) -------------------------------------------------------------------------------------
class _PaddedLM(nn.Module):
    def __init__(self, tied: bool = False):
        super().__init__()
        self.emb = nn.Embedding(12, 8, padding_idx=3)
        self.head = nn.Linear(8, 12, bias=False)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, ids):
        return self.head(torch.tanh(self.emb(ids)))


@pytest.mark.parametrize("tied", [False, True])
def test_padding_row_stays_zero(ghn_, tied):
    ids = torch.randint(0, 12, (2, 5))
    model = _PaddedLM(tied)
    assert torch.equal(model.emb.weight[3], torch.zeros(8))  # what PyTorch does
    pred = ghn_.predict_params(model, ids)
    assert torch.equal(pred["emb.weight"][3], torch.zeros(8))
    assert pred["emb.weight"].abs().sum() > 0
    ghn_.predict(model, ids)
    assert torch.equal(model.emb.weight[3], torch.zeros(8)) and model.emb.weight.abs().sum() > 0
    with init_empty_weights():  # the streamed meta path too
        meta = _PaddedLM(tied)
    ghn_.predict(meta, ids)
    assert torch.equal(meta.emb.weight[3], torch.zeros(8))


def test_padding_row_of_bert_word_embeddings(ghn_):
    model = tiny_bert()
    pad = model.embeddings.word_embeddings.padding_idx
    assert pad is not None
    ghn_.predict(model, {"input_ids": torch.randint(1, 128, (2, 7))})
    assert torch.equal(model.embeddings.word_embeddings.weight[pad], torch.zeros(32))


# ---- 7: checksum of model.safetensors ------------------------------------------------------------------------------
@pytest.fixture()
def saved(tmp_path, tiny_ghn):
    tiny_ghn.save_pretrained(tmp_path / "ghn")
    return tmp_path / "ghn"


def _corrupt_one_float(path: Path, value: float = 3.8e37) -> None:
    """Overwrite the first float32 of the data section with a finite value (the file stays a valid safetensors)."""
    data = bytearray(path.read_bytes())
    header_len = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + header_len])
    name, info = next((k, v) for k, v in header.items() if k != "__metadata__" and v["dtype"] == "F32")
    offset = 8 + header_len + info["data_offsets"][0]
    data[offset:offset + 4] = struct.pack("<f", value)
    path.write_bytes(bytes(data))


def test_config_records_the_sha256_of_the_weights(saved):
    config = json.loads((saved / "config.json").read_text())
    assert config["checksum"] == "sha256:" + hashlib.sha256((saved / "model.safetensors").read_bytes()).hexdigest()
    GHN.from_pretrained(saved)


def test_finite_corruption_is_a_checkpoint_error(saved):
    _corrupt_one_float(saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="sha256") as e:
        GHN.from_pretrained(saved)
    assert isinstance(e.value, OSError) and "corrupt" in str(e.value)


def test_checksum_of_other_weights_is_a_checkpoint_error(tmp_path, saved, tiny_ghn):
    """A config saved with other weights (e.g. files of two saves mixed) does not pass either."""
    other = GHN(tiny_ghn.config)
    other.save_pretrained(tmp_path / "other")
    shutil.copy(tmp_path / "other" / "model.safetensors", saved / "model.safetensors")
    with pytest.raises(CheckpointError, match="sha256"):
        GHN.from_pretrained(saved)


def test_checkpoint_without_a_checksum_still_loads(saved, tiny_ghn):
    config = json.loads((saved / "config.json").read_text())
    del config["checksum"]
    (saved / "config.json").write_text(json.dumps(config))
    ghn = GHN.from_pretrained(saved)
    assert all(torch.equal(a, b) for a, b in zip(ghn.state_dict().values(), tiny_ghn.state_dict().values()))
    GHN.from_pretrained(ROOT / "checkpoints" / "ghn-fmnist")  # the shipped predictor (saved before checksums)


@pytest.mark.parametrize("bad", ["md5:abc", 42, "sha256:xyz"])
def test_malformed_checksum_is_a_checkpoint_error(saved, bad):
    config = json.loads((saved / "config.json").read_text())
    config["checksum"] = bad
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="checksum"):
        GHN.from_pretrained(saved)
