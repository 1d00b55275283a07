"""The low-rank decoder: shapes over a grid, untiled at width 4096, size independent of width."""
import pytest
import torch

from ghn import GHN, GHNConfig
from ghn.binding import ParamInfo
from ghn.decoder import LowRankDecoder, ParamQuery


def decode(dec, infos):
    h = torch.randn(1, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return dict((i.name, w) for i, w in dec.decode(h, [ParamQuery(0, i) for i in infos]))


@pytest.fixture(scope="module")
def dec():
    torch.manual_seed(0)
    return LowRankDecoder(d=32, hidden=64, p=32, r=16, code_seed=0).eval()


GRID = [
    ("weight", (7, 3)), ("weight", (64, 3, 3, 3)), ("weight", (5, 1, 3, 3)), ("weight", (16, 8, 5)),
    ("weight", (4, 2, 2, 3, 3)), ("weight", (1, 1)), ("weight_t", (8, 24)), ("weight_t", (6, 4, 2, 2)),
    ("embedding", (100, 16)), ("bias", (7,)), ("norm_weight", (33,)), ("norm_bias", (1,)),
    ("pos_embed", (1, 17, 16)), ("cls_token", (1, 1, 16)), ("layer_scale", (16,)), ("rel_pos", (49, 3)),
    ("free", ()), ("free", (2, 3, 4)),
]


@pytest.mark.parametrize("role,shape", GRID)
def test_shapes_and_finite(dec, role, shape):
    w = decode(dec, [ParamInfo("p", role, shape)])["p"]
    assert tuple(w.shape) == shape and w.dtype == torch.float32
    assert torch.isfinite(w).all()


def test_norm_scales_start_at_one_and_biases_at_zero(dec):
    out = decode(dec, [ParamInfo("g", "norm_weight", (64,)), ParamInfo("b", "bias", (64,))])
    assert out["g"].mean().item() == pytest.approx(1.0, abs=0.1)
    assert out["b"].abs().max().item() < 0.1


def test_width_4096_is_untiled(dec):
    w = decode(dec, [ParamInfo("w", "weight", (4096, 4096))])["w"]
    assert w.shape == (4096, 4096)
    assert torch.unique(w, dim=0).shape[0] == 4096  # no two rows repeat
    assert torch.unique(w, dim=1).shape[1] == 4096  # nor columns
    # no tiling with any period: compare each row with the row 64, 128, ... further down
    for period in (32, 64, 128, 256, 512, 1024, 2048):
        assert not torch.allclose(w[:-period], w[period:])
    # and the matrix has exactly the decoder's rank (low-rank, not a copy of a block)
    assert torch.linalg.matrix_rank(w[:512, :512].double(), rtol=1e-4).item() == 16


def test_fan_in_scaling(dec):
    small = decode(dec, [ParamInfo("w", "weight", (256, 16))])["w"]
    big = decode(dec, [ParamInfo("w", "weight", (256, 1024))])["w"]
    # std shrinks with fan-in (here by more than √(1024/16) = 8: see decoder docstring)
    assert small.std() / big.std() > 8


def test_parameter_count_does_not_depend_on_target_width():
    ghn = GHN(GHNConfig.preset("tiny"))
    n = sum(p.numel() for p in ghn.parameters())
    assert n < 200_000
    # predicting a 4096-wide layer needs no new parameters and the decoder has no width-sized tensor
    assert all(4096 not in p.shape and 1024 not in p.shape for p in ghn.parameters())


def test_batched_prediction_equals_single(tiny_ghn):
    import torch.nn as nn
    from ghn import build_graph
    a = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    b = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    ga, gb = build_graph(a, torch.randn(2, 4)), build_graph(b, torch.randn(2, 1, 6, 6))
    with torch.no_grad():
        both = tiny_ghn([ga, gb])
        alone = tiny_ghn(gb)[0]
    assert both[1].keys() == alone.keys()
    for k in alone:
        torch.testing.assert_close(both[1][k], alone[k], rtol=1e-4, atol=1e-6)


def test_forward_is_differentiable(tiny_ghn):
    import torch.nn as nn
    from ghn import build_graph
    g = build_graph(nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3)), torch.randn(2, 4))
    params = tiny_ghn(g)[0]
    sum(v.square().sum() for v in params.values()).backward()
    grads = [p.grad for p in tiny_ghn.parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) > len(grads) // 2
    tiny_ghn.zero_grad(set_to_none=True)
