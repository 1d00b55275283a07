"""Decoder v2: learned codes on the data-facing axes; v3: flattened conv maps read as pooled channels; version
handling of checkpoints; the ceiling benchmark."""
import json

import pytest
import torch
from torch import nn

from ghn import GHN, GHNConfig, build_graph
from ghn.decoder import graph_queries
from ghn.errors import CheckpointError


def test_data_facing_axes_are_found_from_the_graph():
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))
    q = {x.info.name: x for x in graph_queries(build_graph(model, torch.randn(2, 3, 2, 2)))}
    assert q["1.weight"].reads_input and not q["1.weight"].writes_output
    assert not q["3.weight"].reads_input and not q["3.weight"].writes_output
    assert q["5.weight"].writes_output and q["5.bias"].writes_output and not q["5.weight"].reads_input


def test_learned_input_codes_change_only_the_layer_that_reads_the_input():
    torch.manual_seed(0)
    ghn = GHN(GHNConfig.preset("tiny", data_codes=[16, 4, 8])).eval()
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    graph = build_graph(model, torch.randn(2, 12))
    before = ghn(graph)[0]
    with torch.no_grad():
        ghn.decoder.tables["input"].normal_()
    after = ghn(graph)[0]
    assert not torch.allclose(before["1.weight"], after["1.weight"])
    for name in ("1.bias", "3.weight", "3.bias"):
        assert torch.equal(before[name], after[name]), name


def test_tables_start_at_zero_so_an_untrained_v2_decoder_predicts_like_v1():
    torch.manual_seed(0)
    v2 = GHN(GHNConfig.preset("tiny")).eval()
    torch.manual_seed(0)
    v1 = GHN(GHNConfig.preset("tiny", data_codes=[0, 0, 0])).eval()
    v1.load_state_dict({k: v for k, v in v2.state_dict().items() if "tables" not in k})
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.ReLU(), nn.Linear(8, 3))
    g = build_graph(model, torch.randn(2, 12))
    a, b = v1(g)[0], v2(g)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def _save_as_v1(tmp_path):
    torch.manual_seed(0)
    ghn = GHN(GHNConfig.preset("tiny", data_codes=[0, 0, 0], code_gain=1.0, pooled_flatten=False,
                               centered_fan_in=False, output_gain=1.0))
    ghn.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for k in ("decoder_version", "data_codes", "code_gain", "pooled_flatten", "centered_fan_in", "output_gain"):
        cfg.pop(k)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    return ghn


def test_a_version_1_checkpoint_loads_as_the_decoder_that_wrote_it(tmp_path):
    saved = _save_as_v1(tmp_path)
    ghn = GHN.from_pretrained(tmp_path)
    assert ghn.config.decoder_version == 1 and ghn.config.data_codes == [0, 0, 0] and len(ghn.decoder.tables) == 0
    model = nn.Sequential(nn.Linear(4, 3))
    g = build_graph(model, torch.randn(2, 4))
    assert torch.equal(ghn(g)[0]["0.weight"], saved.eval()(g)[0]["0.weight"])


def _flatten_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 36, 8), nn.ReLU(), nn.Linear(8, 3))


def test_v3_predicts_a_flattened_map_reader_as_pooling_then_a_linear(tmp_path):
    model = _flatten_cnn()
    g = build_graph(model, torch.randn(2, 1, 6, 6))
    spread = {q.info.name: q.in_spread for q in graph_queries(g)}
    assert spread["4.weight"] == 36 and spread["6.weight"] == 1 and spread["0.weight"] == 1
    torch.manual_seed(0)
    ghn = GHN(GHNConfig.preset("tiny")).eval()
    assert ghn.config.pooled_flatten and ghn.config.decoder_version == 3
    w = ghn(g)[0]["4.weight"].view(8, 4, 36)  # (rows, channels, positions), torch.flatten order
    assert torch.allclose(w, w[..., :1].expand_as(w)) and w.abs().sum() > 0  # one value per channel
    # a version-2 checkpoint keeps its own rule: every column its own code
    ghn.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    for k in ("pooled_flatten", "centered_fan_in", "output_gain"):
        cfg.pop(k)
    cfg["decoder_version"] = 2
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    v2 = GHN.from_pretrained(tmp_path)
    assert not v2.config.pooled_flatten
    w2 = v2(g)[0]["4.weight"].view(8, 4, 36)
    assert not torch.allclose(w2, w2[..., :1].expand_as(w2))
    assert torch.equal(v2(g)[0]["6.weight"], ghn(g)[0]["6.weight"])  # nothing else changes


def test_v3_flattened_reader_streams_into_a_meta_model_like_a_cpu_one():
    torch.manual_seed(0)
    ghn = GHN(GHNConfig.preset("tiny")).eval()
    x = torch.randn(2, 1, 6, 6)
    cpu = ghn.predict(_flatten_cnn(), x)
    with torch.device("meta"):
        meta = _flatten_cnn()
    ghn.predict(meta, x)
    assert all(torch.equal(a, b) for a, b in zip(cpu.parameters(), meta.parameters()))


def test_a_checkpoint_from_a_newer_decoder_is_refused_clearly(tmp_path):
    GHN(GHNConfig.preset("tiny")).save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["decoder_version"] = 99
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="newer ghn"):
        GHN.from_pretrained(tmp_path)


def test_ceiling_quick_linear_reaches_direct_training(tmp_path):
    """The decoder's unit test: a GHN meta-trained on a linear classifier nearly matches training it directly
    (the full benchmark asks ≥ 0.95; this quick, 300-step run keeps a margin for noise)."""
    from benchmarks.ceiling import main
    assert main(["--quick", "--out", str(tmp_path)]) == 0
    row = json.loads((tmp_path / "ceiling_quick.json").read_text())["rows"][0]
    assert row["family"] == "linear" and row["direct"] > 75
    assert row["ratio"] >= 0.9, row


def test_balance_gradients_gives_every_tensor_unit_rms_gradient():
    from ghn.decoder import balance_gradients
    a, b = torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)
    params = balance_gradients({"a": a * 1.0, "b": b * 1.0})
    (1000 * params["a"].sum() + 0.001 * params["b"].sum()).backward()
    for g in (a.grad, b.grad):
        assert g.pow(2).mean().sqrt().item() == pytest.approx(1.0, rel=1e-4)


def _cell_cnn() -> nn.Module:
    """A stem reading the input, a depthwise conv, a dense hidden conv and a hidden linear before the classifier."""
    return nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1, groups=6),
                         nn.Conv2d(6, 8, 3, padding=1), nn.GroupNorm(1, 8), nn.ReLU(), nn.AdaptiveMaxPool2d(1),
                         nn.Flatten(), nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 3))


def test_centered_fan_in_makes_hidden_rows_sum_to_zero_over_their_input_channels():
    torch.manual_seed(0)
    ghn = GHN(GHNConfig.preset("tiny", centered_fan_in=True)).eval()
    p = ghn(build_graph(_cell_cnn(), torch.randn(2, 1, 6, 6)))[0]
    for name in ("3.weight", "8.weight", "10.weight"):  # hidden columns: every (row, kernel position) sums to 0
        w = p[name]
        assert w.sum(1).abs().max() < 1e-5 * w.abs().max() * w.shape[1], name
        assert w.abs().max() > 0
    # the first layer's columns face the data, a depthwise kernel has one column: neither is centred
    assert p["0.weight"].sum(1).abs().max() > 1e-3 and p["2.weight"].sum(1).abs().max() > 1e-3


def test_output_gain_starts_the_output_layer_small_and_leaves_the_rest():
    torch.manual_seed(0)
    small = GHN(GHNConfig.preset("tiny", output_gain=0.1)).eval()
    full = GHN(GHNConfig.preset("tiny")).eval()
    full.load_state_dict(small.state_dict())
    g = build_graph(_cell_cnn(), torch.randn(2, 1, 6, 6))
    a, b = small(g)[0], full(g)[0]
    assert torch.allclose(a["10.weight"], 0.1 * b["10.weight"])  # the classifier
    assert all(torch.equal(a[k], b[k]) for k in a if k != "10.weight")


def test_the_fit_options_are_off_unless_asked_for(tmp_path):
    assert not GHNConfig.preset("small").centered_fan_in and GHNConfig.preset("small").output_gain == 1.0
    ghn = GHN.from_pretrained("checkpoints/ghn-fmnist")  # released before the options existed
    assert ghn.config.decoder_version == 3
    assert not ghn.config.centered_fan_in and ghn.config.output_gain == 1.0
    assert not ghn.decoder.centered_fan_in and ghn.decoder.output_gain == 1.0
