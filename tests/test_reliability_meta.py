"""Issue 14, item 1: a model built on the ``meta`` device and predicted is the same model as one built on CPU.

Buffers computed by a constructor (BERT's ``position_ids``/``token_type_ids``, Swin's ``relative_position_index``
and ``attn_mask``, rotary ``inv_freq``) have no values on ``meta``. ``GHN.predict`` must restore them the way the
model's own constructor makes them, or refuse with a typed error naming them and leave the model untouched; it
must never return a model whose buffers are silently zero. Each case compares against a CPU-built twin that holds
the same parameters: every buffer and the outputs must be equal.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from conftest import tiny_bert, tiny_gpt2, tiny_llama
from ghn import init_empty_weights
from ghn.errors import DeviceError


def tiny_t5():
    from transformers import T5Config, T5ForConditionalGeneration
    cfg = T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=2, num_heads=2, decoder_start_token_id=0,
                   pad_token_id=0, eos_token_id=1)
    return T5ForConditionalGeneration(cfg)


def tiny_swin():
    """Two stages of two blocks: the second block of a stage is shifted, so it has an ``attn_mask`` buffer."""
    import timm
    return timm.create_model("swin_tiny_patch4_window7_224", img_size=32, window_size=4, embed_dim=16,
                             depths=(2, 2), num_heads=(1, 2), num_classes=3, in_chans=1)


def _ids(vocab: int = 64) -> torch.Tensor:
    return torch.randint(2, vocab, (2, 7), generator=torch.Generator().manual_seed(0))


CASES = {
    "bert": (tiny_bert, lambda: {"input_ids": _ids()}),
    "gpt2": (tiny_gpt2, lambda: {"input_ids": _ids()}),
    "llama": (tiny_llama, lambda: {"input_ids": _ids()}),
    "t5": (tiny_t5, lambda: {"input_ids": _ids(), "decoder_input_ids": _ids()[:, :5]}),
    "swin": (tiny_swin, lambda: torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))),
}


def _build(make, how: str) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        if how == "meta":
            with torch.device("meta"):
                return make()
        with init_empty_weights():
            return make()


def _output(model: nn.Module, inputs) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    for key in ("logits", "last_hidden_state"):
        if hasattr(out, key):
            return getattr(out, key)
    return out


def _assert_same_as_cpu_twin(model: nn.Module, make, inputs) -> None:
    twin = make()
    # Parameters only: copying the state dict would also copy (persistent) buffers and hide a wrong one.
    params = dict(model.named_parameters(remove_duplicate=False))  # tied aliases too
    missing, unexpected = twin.load_state_dict(params, strict=False)
    assert not unexpected and set(missing) <= {n for n, _ in twin.named_buffers()}
    buffers = dict(model.named_buffers())
    for name, b in twin.named_buffers():
        assert not buffers[name].is_meta, name
        assert torch.equal(buffers[name], b), f"buffer {name} differs from the CPU-built model's"
    torch.testing.assert_close(_output(model, inputs), _output(twin, inputs), rtol=0, atol=0)


@pytest.mark.parametrize("name", list(CASES))
def test_model_built_with_init_empty_weights_equals_its_cpu_twin(ghn_, name):
    """Parameters on meta, buffers computed on CPU by the constructor: predict keeps those buffers."""
    make, inputs = CASES[name]
    model = _build(make, "init_empty_weights")
    assert all(p.is_meta for p in model.parameters())
    ghn_.predict(model, inputs())
    _assert_same_as_cpu_twin(model, make, inputs())


@pytest.mark.parametrize("name", list(CASES))
def test_model_built_on_meta_equals_its_cpu_twin(ghn_, name):
    """Plain ``torch.device("meta")``: buffers are recomputed by the model's own code (transformers: its constructor,
    from the config; timm: ``init_non_persistent_buffers()``)."""
    make, inputs = CASES[name]
    model = _build(make, "meta")
    assert any(b.is_meta for b in model.buffers()) or name in ("gpt2", "t5")
    ghn_.predict(model, inputs())
    _assert_same_as_cpu_twin(model, make, inputs())


def test_bert_on_meta_gets_its_position_and_token_type_ids(ghn_):
    model = _build(tiny_bert, "meta")
    ghn_.predict(model, {"input_ids": _ids()})
    assert torch.equal(model.embeddings.position_ids, torch.arange(32).unsqueeze(0))
    assert torch.equal(model.embeddings.token_type_ids, torch.zeros(1, 32, dtype=torch.long))


class _ComputedBuffer(nn.Module):
    """A user module whose constructor computes a buffer (nothing but the constructor knows how)."""

    def __init__(self, d: int = 4):
        super().__init__()
        self.fc = nn.Linear(d, d)
        self.register_buffer("scale", torch.linspace(1, 2, d))

    def forward(self, x):
        return self.fc(x) * self.scale


def test_buffers_that_cannot_be_recomputed_are_a_typed_error_and_the_model_is_untouched(ghn_):
    """A user module's computed buffer on plain meta: nothing but its constructor knows it, so predict refuses."""
    x = torch.randn(2, 4)
    with torch.device("meta"):
        model = nn.Sequential(_ComputedBuffer(), nn.ReLU(), _ComputedBuffer())
    before = [(n, id(t)) for n, t in [*model.named_parameters(), *model.named_buffers()]]
    with pytest.raises(DeviceError) as e:
        ghn_.predict(model, x)
    assert isinstance(e.value, RuntimeError)
    assert "'0.scale', '2.scale'" in str(e.value) and "init_empty_weights" in str(e.value)  # names them and the fix
    assert [(n, id(t)) for n, t in [*model.named_parameters(), *model.named_buffers()]] == before
    assert all(t.is_meta for t in [*model.parameters(), *model.buffers()])
    # built under init_empty_weights, the constructor computes the buffer on CPU and predict keeps it
    with init_empty_weights():
        model = _ComputedBuffer()
    ghn_.predict(model, x)
    assert torch.equal(model.scale, torch.linspace(1, 2, 4))
    _assert_same_as_cpu_twin(model, _ComputedBuffer, x)


def test_batchnorm_statistics_and_tied_weights_on_meta(ghn_):
    """Buffers with a known reset (BatchNorm) are restored; tied weights stay tied under init_empty_weights."""
    with torch.device("meta"):
        model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    ghn_.predict(model, torch.randn(2, 1, 8, 8))
    assert torch.equal(model[1].running_var, torch.ones(4)) and int(model[1].num_batches_tracked) == 0
    with init_empty_weights():
        lm = tiny_gpt2()
    assert lm.lm_head.weight is lm.transformer.wte.weight
    ghn_.predict(lm, {"input_ids": _ids()})
    assert lm.lm_head.weight is lm.transformer.wte.weight and not lm.lm_head.weight.is_meta


def test_init_empty_weights_restores_module_registration():
    before = nn.Module.register_parameter
    with pytest.raises(ValueError):
        with init_empty_weights():
            raise ValueError("boom")
    assert nn.Module.register_parameter is before
    assert not nn.Linear(2, 2).weight.is_meta
