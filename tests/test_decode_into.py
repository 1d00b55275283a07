"""Issue 15, item 7: a model streamed from ``meta`` is decoded straight into its parameters (no full-size temporary per
tensor), with exactly the values an ordinary decode gives."""
from __future__ import annotations

import pytest
import torch

from ghn.binding import ParamInfo
from ghn.decoder import LowRankDecoder, ParamQuery

from conftest import tiny_gpt2

INFOS = [ParamInfo("w", "weight", (7, 5)), ParamInfo("wt", "weight_t", (8, 24)), ParamInfo("e", "embedding", (50, 6)),
         ParamInfo("k1", "weight", (6, 4, 1, 1)), ParamInfo("k3", "weight", (6, 4, 3, 3)), ParamInfo("b", "bias", (7,))]


@pytest.fixture(scope="module")
def dec():
    torch.manual_seed(0)
    return LowRankDecoder(d=32, hidden=64, p=32, r=16, code_seed=0).eval()


def test_decode_into_destinations_gives_the_same_values_in_place(dec):
    h = torch.randn(len(INFOS), 32, generator=torch.Generator().manual_seed(0))
    queries = [ParamQuery(i, info) for i, info in enumerate(INFOS)]
    with torch.no_grad():
        plain = {i.name: w.clone() for i, w in dec.decode(h, queries)}
        dest = {i.name: torch.full(i.shape, float("nan")) for i in INFOS}
        into = dict(dec.decode(h, queries, out=dest))
    for info in INFOS:
        w = into[info]
        assert torch.equal(w, plain[info.name]), info.name
        in_place = w.data_ptr() == dest[info.name].data_ptr()
        # every kernel-free matrix is written where it lives; kernels and vectors are small and copied by the caller
        assert in_place == (info.name in ("w", "wt", "e", "k1")), info.name
        if in_place:
            assert torch.equal(dest[info.name], plain[info.name]) and w.is_contiguous()


def test_meta_gpt2_is_filled_without_writing_copies(tiny_ghn, monkeypatch):
    """GPT-2's Conv1D weights are stored transposed: they too are decoded in place, so predict() copies only the
    small vectors; the values equal predict_params on a CPU build."""
    import ghn.hypernet
    copied = []
    real = ghn.hypernet.write_params

    def write_params(model, params, own=None):
        params = list(params)
        copied.extend(n for n, _ in params)
        real(model, params, own)

    monkeypatch.setattr(ghn.hypernet, "write_params", write_params)
    with torch.device("meta"):
        model = tiny_gpt2()
    tiny_ghn.predict(model)
    ref = tiny_ghn.predict_params(tiny_gpt2())
    assert all(torch.equal(p, ref[k]) for k, p in model.named_parameters())
    assert copied and all(dict(model.named_parameters())[n].ndim == 1 for n in copied), copied
