"""The decoder options chosen on the LM ceiling (ledger E23): whitened hidden codes, a depth code, fused q/k/v
blocks and position codes. Each is off by default (predictions of existing checkpoints unchanged)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ghn import GHN, GHNConfig, build_graph
from ghn.decoder import IndexCode, _sinusoids, _whiten, graph_queries
from ghn.errors import ConfigError

OPTIONS = dict(whitened_codes=True, depth_code=8.0, fused_blocks=True, position_codes=64)


class TinyLM(nn.Module):
    """Token + learned position tables, two pre-norm blocks with a fused q/k/v projection, a linear head."""

    def __init__(self, vocab=32, seq=16, width=16, heads=2, layers=2, mlp=48):
        super().__init__()
        self.heads = heads
        self.tok, self.pos = nn.Embedding(vocab, width), nn.Embedding(seq, width)
        self.norms = nn.ModuleList(nn.LayerNorm(width) for _ in range(layers))
        self.qkv = nn.ModuleList(nn.Linear(width, 3 * width) for _ in range(layers))
        self.proj = nn.ModuleList(nn.Linear(width, width) for _ in range(layers))
        self.up = nn.ModuleList(nn.Linear(width, mlp) for _ in range(layers))  # 3x wider, but no attention after it
        self.down = nn.ModuleList(nn.Linear(mlp, width) for _ in range(layers))
        self.head = nn.Linear(width, vocab)

    def forward(self, ids):
        b, t = ids.shape
        x = self.tok(ids) + self.pos(torch.arange(t))
        for norm, qkv, proj, up, down in zip(self.norms, self.qkv, self.proj, self.up, self.down):
            q, k, v = (z.view(b, t, self.heads, -1).transpose(1, 2) for z in qkv(norm(x)).chunk(3, dim=-1))
            x = x + proj(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, t, -1))
            x = x + down(torch.relu(up(x)))
        return self.head(x)


@pytest.fixture(scope="module")
def graph():
    return build_graph(TinyLM(), torch.randint(0, 32, (2, 16)))


def test_options_are_off_by_default_and_checked():
    c = GHNConfig.preset("small")
    assert (c.whitened_codes, c.depth_code, c.fused_blocks, c.position_codes) == (False, 0.0, False, 0)
    for bad in (dict(depth_code=-1.0), dict(position_codes=-3), dict(whitened_codes="yes"), dict(fused_blocks=1)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            GHNConfig.preset("tiny", **bad)


@pytest.mark.parametrize("n", [8, 64, 200])
def test_whitened_codes_have_a_flat_spectrum_and_keep_their_size(n):
    raw = IndexCode(64, 0)(n)
    white = _whiten(raw)
    s = torch.linalg.svdvals(white.double())
    assert torch.allclose(s, torch.full_like(s, math.sqrt(max(n, 64))), rtol=1e-4)
    assert abs(white.pow(2).mean().item() - 1.0) < 1e-3
    # ... while raw codes of a width equal to the code size are nearly singular (why the option exists)
    if n == 64:
        r = torch.linalg.svdvals(raw.double())
        assert r[-1] < 1e-3 * r[0]


def test_fused_qkv_and_position_tables_are_recognised(graph):
    q = {x.info.name: x for x in graph_queries(graph)}
    assert all(q[f"qkv.{i}.weight"].row_blocks == 3 for i in (0, 1))
    assert q["up.0.weight"].row_blocks == 1 and q["proj.0.weight"].row_blocks == 1  # 3x rows, no attention: MLP
    assert q["pos.weight"].positions and not q["tok.weight"].positions


def test_position_codes_are_smooth_and_shift_by_a_fixed_rotation():
    code = _sinusoids(64, 32, "cpu").double()
    cos = F.cosine_similarity(code[10], code, dim=-1)
    assert cos[11] > 0.9 and cos[40] < cos[11]
    shift = torch.linalg.lstsq(code[:-1], code[1:]).solution  # one linear map takes every position to the next
    assert torch.allclose(code[:-1] @ shift, code[1:], atol=1e-6)


def test_depth_code_tells_repeated_blocks_apart(graph):
    def layer_cos(**kw):
        torch.manual_seed(0)
        p = GHN(GHNConfig.preset("tiny", **kw)).eval()(graph)[0]
        return F.cosine_similarity(p["qkv.0.weight"].flatten(), p["qkv.1.weight"].flatten(), dim=0).item()
    assert layer_cos(depth_code=8.0) < layer_cos() - 0.1


def test_every_option_changes_predictions_and_a_checkpoint_keeps_them(graph, tmp_path):
    torch.manual_seed(0)
    base = GHN(GHNConfig.preset("tiny")).eval()
    with torch.no_grad():
        before = base(graph)[0]
        for name, value in OPTIONS.items():
            ghn = GHN(GHNConfig.preset("tiny", **{name: value})).eval()
            ghn.load_state_dict(base.state_dict(), strict=False)  # the same weights; position_codes adds a table
            after = ghn(graph)[0]
            changed = {k for k in before if not torch.equal(before[k], after[k])}
            assert changed, name
            if name == "position_codes":
                assert changed == {"pos.weight"}  # only the position table is decoded on other codes
            if name == "fused_blocks":
                assert {k for k in changed if k.endswith("weight")} == {"qkv.0.weight", "qkv.1.weight"}
        ghn = GHN(GHNConfig.preset("tiny", **OPTIONS)).eval()
        ghn.save_pretrained(tmp_path)
        again = GHN.from_pretrained(tmp_path)
        assert {k: getattr(again.config, k) for k in OPTIONS} == OPTIONS
        a, b = ghn(graph)[0], again(graph)[0]
        assert all(torch.equal(a[k], b[k]) for k in a)
