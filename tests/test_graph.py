"""build_graph: golden graphs of tiny models, every parameter role, exports."""
import networkx as nx
import pytest
import timm
import torch
import torch.nn as nn

from ghn import Graph, build_graph, register_op
from ghn.errors import ExampleInputError, GraphError

from conftest import tiny_gpt2, tiny_llama


class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x)))
        h = h + self.conv(x)  # the conv is used twice: one node owns its parameters, the second use is a plain op
        return self.fc(h.mean((2, 3)))


def test_golden_tiny_net():
    g = build_graph(TinyNet(), torch.randn(2, 1, 8, 8))
    assert [n.op for n in g.nodes] == ["input", "conv", "batch_norm", "relu", "conv", "add", "mean", "linear", "output"]
    assert [n.name for n in g.nodes][:3] == ["input", "conv", "bn"]
    assert g.edges == [(0, 1), (0, 4), (1, 2), (1, 4), (2, 3), (3, 5), (4, 5), (5, 6), (6, 7), (7, 8)]
    assert len(g) == 9
    conv = g.nodes[1]
    assert [(p.name, p.role) for p in conv.params] == [("conv.weight", "weight"), ("conv.bias", "bias")]
    assert g.nodes[4].params == ()  # second use of shared weights
    assert conv.shape == (4, 1, 3, 3)
    assert g.coverage.fraction == 1.0 and not g.coverage.missing


def test_distances_are_capped_shortest_paths():
    g = build_graph(TinyNet(), torch.randn(2, 1, 8, 8))
    d = g.distances()
    assert d.shape == (9, 9) and d.dtype == torch.uint8
    assert d[0, 8] == 5  # input -> conv(2nd use) -> add -> mean -> linear -> output
    assert d[1, 5] == 2  # conv -> conv(2nd use) -> add is shorter than conv -> bn -> relu -> add
    assert d[8, 0] == g.max_hops + 1  # edges are directed
    assert torch.all(d.diagonal() == 0)


class AllRoles(nn.Module):
    """One module per parameter role the binder knows."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, 8))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.conv1d = nn.Conv1d(8, 8, 3, padding=1)
        self.convt = nn.ConvTranspose1d(8, 8, 2, stride=2)
        self.conv3d = nn.Conv3d(1, 2, (2, 3, 3))
        self.gn = nn.GroupNorm(2, 8)
        self.ln = nn.LayerNorm(8)
        self.rms = nn.RMSNorm(8)
        self.gamma = nn.Parameter(torch.ones(8))
        self.rel_pos = nn.Parameter(torch.zeros(9, 2))
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.temperature = nn.Parameter(torch.ones(()))

    def forward(self, ids, vol):
        x = self.emb(ids) + self.pos_embed  # (B, 5, 8)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1)  # (B, 6, 8)
        y = self.conv1d(x.transpose(1, 2))
        y = self.convt(self.gn(y)).transpose(1, 2)[:, :6]
        x = self.rms(self.ln(x + y)) * self.gamma + self.rel_pos.sum()
        return self.head(x) * self.temperature, self.conv3d(vol)


def test_every_role_is_bound_once():
    m = AllRoles()
    g = build_graph(m, {"ids": torch.zeros(2, 5, dtype=torch.long), "vol": torch.randn(2, 1, 4, 5, 5)})
    roles = {p.name: p.role for _, p in g.params}
    assert roles == {
        "emb.weight": "embedding", "pos_embed": "pos_embed", "cls_token": "cls_token",
        "conv1d.weight": "weight", "conv1d.bias": "bias", "convt.weight": "weight_t", "convt.bias": "bias",
        "conv3d.weight": "weight", "conv3d.bias": "bias", "gn.weight": "norm_weight", "gn.bias": "norm_bias",
        "ln.weight": "norm_weight", "ln.bias": "norm_bias", "rms.weight": "norm_weight",
        "gamma": "layer_scale", "rel_pos": "rel_pos", "temperature": "free",
    }
    assert sorted(g.param_names) == sorted(dict(m.named_parameters()))  # each canonical parameter exactly once
    assert g.tied == {"head.weight": "emb.weight"}
    assert g.coverage.fraction == 1.0
    ops = {n.name: n.op for n in g.nodes}
    assert ops["pos_embed"] == "pos_embed" and ops["cls_token"] == "cls_token" and ops["gamma"] == "layer_scale"
    assert ops["rms"] == "rms_norm" and ops["convt"] == "conv_transpose" and ops["gn"] == "group_norm"


def test_unused_parameters_still_get_a_node():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.unused = nn.Linear(3, 3), nn.Linear(3, 3)

        def forward(self, x):
            return self.used(x)

    g = build_graph(Unused(), torch.randn(2, 3))
    assert "unused.weight" in g.param_names and g.coverage.fraction == 1.0
    node = next(i for i, n in enumerate(g.nodes) if n.name == "unused")
    assert all(node not in e for e in g.edges)  # isolated


def test_register_op_skip_is_reported():
    class Weird(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x * self.w

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.weird = nn.Linear(3, 3), Weird()

        def forward(self, x):
            return self.weird(self.fc(x))

    register_op(Weird, None)
    try:
        g = build_graph(Net(), torch.randn(2, 3))
    finally:
        register_op(Weird, "free_param")
    assert "weird.w" in g.missing and "skip" in g.missing["weird.w"]
    assert g.coverage.fraction == pytest.approx(12 / 15)


@pytest.mark.parametrize("name,kwargs,nodes_min", [
    ("resnet18", {}, 60), ("vit_tiny_patch16_224", {"img_size": 32}, 100), ("convnext_atto", {}, 90),
    ("efficientnet_b0", {}, 200),
])
def test_timm_default_inputs_and_full_coverage(name, kwargs, nodes_min):
    with torch.device("meta"):
        m = timm.create_model(name, **kwargs)
    g = build_graph(m)  # input shape from pretrained_cfg / patch_embed.img_size, traced with fake tensors
    assert len(g) >= nodes_min
    assert g.coverage.fraction == 1.0
    assert g.nodes[0].op == "input" and g.nodes[-1].op == "output"


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama])
def test_transformers_decoders(make):
    m = make()
    g = build_graph(m)  # input_ids from the config
    assert g.coverage.fraction == 1.0
    ops = [n.op for n in g.nodes]
    assert "embedding" in ops and "attention" in ops
    if "GPT2" in type(m).__name__:
        assert g.tied == {"lm_head.weight": "transformer.wte.weight"}
        assert {p.role for _, p in g.params if p.name.endswith("c_attn.weight")} == {"weight_t"}


def test_exports():
    g = build_graph(TinyNet(), torch.randn(2, 1, 8, 8))
    data = g.to_data()
    assert data.num_nodes == len(g) and data.edge_index.shape == (2, len(g.edges))
    assert data.x.tolist() == g.op_ids.tolist() and data.spd.shape == (len(g), len(g))
    nxg = g.to_networkx()
    assert isinstance(nxg, nx.DiGraph) and nxg.number_of_nodes() == len(g)
    assert nx.is_directed_acyclic_graph(nxg)
    assert nx.shortest_path_length(nxg, 0, len(g) - 1) == int(g.distances()[0, -1])


def test_dict_round_trip_and_bad_dict():
    g = build_graph(TinyNet(), torch.randn(2, 1, 8, 8))
    g2 = Graph.from_dict(g.to_dict())
    assert g2.to_dict() == g.to_dict() and torch.equal(g2.distances(), g.distances())
    bad = g.to_dict()
    bad["edges"].append([0, 99])
    with pytest.raises(GraphError):
        Graph.from_dict(bad)
    with pytest.raises(GraphError):
        Graph.from_dict({"format": 1})


def test_example_inputs_forms_agree():
    m = TinyNet()
    x = torch.randn(2, 1, 8, 8)
    graphs = [build_graph(m, x), build_graph(m, (x,)), build_graph(m, {"x": x}), build_graph(m, lambda: x)]
    assert all(gr.to_dict() == graphs[0].to_dict() for gr in graphs)


def test_missing_inputs_is_a_clear_error():
    with pytest.raises(ExampleInputError, match="example_inputs"):
        build_graph(TinyNet())
    with pytest.raises(ExampleInputError, match="input channels"):
        build_graph(TinyNet(), torch.randn(2, 3, 8, 8))
