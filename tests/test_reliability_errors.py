"""Issue 7, part 2: bad input gives a typed error that names the problem and the fix, one case at a time."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import ghn.ops
from ghn import GHN, GHNConfig, build_graph, register_op
from ghn.errors import DeviceError, ExampleInputError, GHNError, NotAModuleError, UnsupportedModuleError
from ghn.prediction import recalibrate_bn, resolve_device, write_params


def _params(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: t.detach().clone() for n, t in [*model.named_parameters(), *model.named_buffers()]}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


# ---- models without parameters ------------------------------------------------------------------------------------
class NoParams(nn.Module):
    def forward(self, x):
        return torch.relu(x).mean(-1)


@pytest.mark.parametrize("make", [NoParams, nn.Identity, lambda: nn.Sequential(nn.ReLU(), nn.Flatten()),
                                  lambda: nn.BatchNorm1d(3, affine=False)])
def test_model_without_parameters_is_an_empty_prediction_with_full_coverage(ghn_, make):
    """Decision: nothing to predict is not an error. predict_params returns an empty mapping with coverage 1.0
    (and no CoverageWarning), predict returns the model, build_graph gives input -> ... -> output."""
    model = make()
    x = torch.randn(2, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no CoverageWarning
        pred = ghn_.predict_params(model, x)
        assert len(pred) == 0 and pred.coverage.fraction == 1.0 and pred.coverage.complete
        assert ghn_.predict(model, x) is model
    g = build_graph(model, x)
    assert g.nodes[0].op == "input" and g.nodes[-1].op == "output" and g.param_names == []


def test_model_without_parameters_still_needs_inputs_like_any_model(ghn_):
    with pytest.raises(ExampleInputError, match="example_inputs="):
        ghn_.predict_params(NoParams())


def test_only_integer_parameters_is_zero_coverage_with_reasons(ghn_):
    class Counter(nn.Module):
        def __init__(self):
            super().__init__()
            self.count = nn.Parameter(torch.zeros(4, dtype=torch.long), requires_grad=False)

        def forward(self, x):
            return x * 2 + self.count.sum()

    with pytest.warns(UserWarning, match="count"):
        pred = ghn_.predict_params(Counter(), torch.randn(2, 4))
    assert len(pred) == 0 and pred.coverage.fraction == 0.0
    assert "not floating point" in pred.coverage.missing["count"]


# ---- unsupported modules ------------------------------------------------------------------------------------------
def _complex_model():
    class SpectralFilter(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.d = d
            self.filt = nn.Parameter(torch.randn(d // 2 + 1, dtype=torch.cfloat))

        def forward(self, x):
            return torch.fft.irfft(torch.fft.rfft(x) * self.filt, n=self.d)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(8, 8)
            self.blocks = nn.ModuleList([nn.Sequential(SpectralFilter(8), nn.GELU())])
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            return self.out(self.blocks[0](self.inp(x)))

    return Net(), SpectralFilter


def test_complex_parameter_names_module_path_type_and_fix(ghn_):
    model, cls = _complex_model()
    before = _params(model)
    with pytest.raises(UnsupportedModuleError) as e:
        ghn_.predict(model, torch.randn(2, 8))
    msg = str(e.value)
    assert isinstance(e.value, ValueError)
    assert "blocks.0.0" in msg and "SpectralFilter" in msg and "filt" in msg  # where and what
    assert "register_op(SpectralFilter, None)" in msg  # how to get past it
    assert _same(before, _params(model))
    with pytest.raises(UnsupportedModuleError):
        build_graph(model, torch.randn(2, 8))


def test_register_op_none_skips_the_module_and_reports_it(ghn_):
    model, cls = _complex_model()
    register_op(cls, None)
    try:
        filt = model.blocks[0][0].filt.detach().clone()
        with pytest.warns(UserWarning, match="blocks.0.0.filt"):
            pred = ghn_.predict_params(model, torch.randn(2, 8))
        assert set(pred) == {"inp.weight", "inp.bias", "out.weight", "out.bias"}
        assert "register_op" in pred.coverage.missing["blocks.0.0.filt"]
        assert 0 < pred.coverage.fraction < 1
        with pytest.warns(UserWarning):
            ghn_.predict(model, torch.randn(2, 8))
        assert torch.equal(model.blocks[0][0].filt, filt)  # the skipped module keeps its own init
        assert torch.equal(model.out.weight, pred["out.weight"])
    finally:
        ghn.ops._REGISTRY.pop(cls, None)


def test_register_op_rejects_bad_arguments():
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_op("Linear", "linear")
    with pytest.raises(ValueError, match="unknown op"):
        register_op(nn.Linear, "lineer")


def test_lazy_module_is_a_typed_error(ghn_):
    model = nn.Sequential(nn.LazyLinear(4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(GHNError, match="(?i)lazy"):
        ghn_.predict_params(model, torch.randn(2, 3))


# ---- example inputs -----------------------------------------------------------------------------------------------
def _mlp(dtype=torch.float32):
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)).to(dtype)


@pytest.mark.parametrize("case", ["linear wrong width", "conv wrong channels", "conv wrong rank", "too few args",
                                  "unknown kwarg"])
def test_wrong_input_shape(ghn_, case):
    model, x, expect = {
        "linear wrong width": (_mlp(), torch.randn(2, 5), ["Tensor(2, 5)", "expects 4 input"]),
        "conv wrong channels": (nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()), torch.randn(2, 1, 8, 8),
                                ["Tensor(2, 1, 8, 8)", "expects 3 input"]),
        "conv wrong rank": (nn.Conv2d(3, 4, 3), torch.randn(2, 3, 8, 8, 8), ["Tensor(2, 3, 8, 8, 8)"]),
        "too few args": (nn.Bilinear(3, 3, 2), torch.randn(2, 3), ["Bilinear"]),
        "unknown kwarg": (_mlp(), {"pixels": torch.randn(2, 4)}, ["pixels"]),
    }[case]
    before = _params(model)
    with pytest.raises(ExampleInputError) as e:
        ghn_.predict(model, x)
    msg = str(e.value)
    assert all(s in msg for s in expect), msg
    assert "example_inputs=" in msg  # the fix
    assert _same(before, _params(model))


def test_wrong_input_dtype_says_what_the_model_expects(ghn_):
    with pytest.raises(ExampleInputError, match="integer tensors but the first layer takes floating"):
        ghn_.predict_params(_mlp(), torch.zeros(2, 4, dtype=torch.long))
    emb = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 2))
    with pytest.raises(ExampleInputError, match=r"integer token ids in \[0, 10\)"):
        ghn_.predict_params(emb, torch.randn(2, 5))
    with pytest.raises(ExampleInputError, match="parameters are float16 but the floating inputs are float32; cast"):
        ghn_.predict_params(_mlp(torch.float16), torch.randn(2, 4))


def test_wrong_inputs_to_a_meta_model(ghn_):
    with torch.device("meta"):
        model = _mlp()
    with pytest.raises(ExampleInputError, match="expects 4 input"):
        ghn_.predict(model, torch.randn(2, 7))
    with pytest.raises(ExampleInputError, match="integer"):
        ghn_.predict_params(model, torch.zeros(2, 4, dtype=torch.long))


def test_timm_model_error_names_its_declared_input_size(ghn_):
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", num_classes=3, in_chans=1)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 40, 40)}
    with pytest.raises(ExampleInputError) as e:
        ghn_.predict_params(model, torch.randn(2, 3, 32, 32))
    # declared size, with the channel count of the model's own first conv (in_chans=1), not timm's default 3
    assert "input_size=(1, 40, 40)" in str(e.value) and "example_inputs=None" in str(e.value), str(e.value)
    ghn_.predict_params(model)  # which works


@pytest.mark.parametrize("bad", [3.0, "x", object(), lambda: 3])
def test_unsupported_example_input_types(ghn_, bad):
    with pytest.raises(ExampleInputError, match="pass a tensor, a tuple"):
        ghn_.predict_params(_mlp(), bad)


def test_example_input_callable_that_raises_is_not_swallowed(ghn_):
    def broken():
        raise KeyError("dataset not found")

    with pytest.raises(KeyError):  # the user's own bug surfaces as is
        ghn_.predict_params(_mlp(), broken)


def test_forward_that_raises_is_an_example_input_error(ghn_):
    class Picky(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            if x.shape[0] != 3:
                raise AssertionError("batch must be 3")
            return self.fc(x)

    with pytest.raises(ExampleInputError, match="batch must be 3"):
        ghn_.predict_params(Picky(), torch.randn(2, 4))
    assert len(ghn_.predict_params(Picky(), torch.randn(3, 4))) == 2


def test_forward_returning_no_tensor(ghn_):
    class Silent(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            self.fc(x)
            return None

    with pytest.raises(ExampleInputError, match="returned no tensor"):
        ghn_.predict_params(Silent(), torch.randn(2, 4))


# ---- not a module -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("thing", ["resnet18", None, nn.Linear, lambda x: x, {"fc.weight": torch.zeros(2, 2)},
                                   [nn.Linear(2, 2)]], ids=["str", "None", "class", "function", "state_dict", "list"])
def test_not_a_module(ghn_, thing):
    for call in (lambda: build_graph(thing, torch.randn(2, 2)), lambda: ghn_.predict_params(thing, torch.randn(2, 2)),
                 lambda: ghn_.predict(thing, torch.randn(2, 2))):
        with pytest.raises(NotAModuleError, match="torch.nn.Module") as e:
            call()
        assert isinstance(e.value, TypeError) and isinstance(e.value, GHNError)


# ---- dtypes and devices -------------------------------------------------------------------------------------------
def _conv_net(dtype):
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=8),
                         nn.GroupNorm(2, 8), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_models_keep_their_dtype(ghn_, dtype):
    model = _conv_net(dtype)
    x = torch.randn(2, 3, 8, 8, dtype=dtype)
    ref = ghn_.predict_params(_conv_net(torch.float32), x.float())  # predicted in fp32 ...
    pred = ghn_.predict_params(model, x)
    assert all(t.dtype == torch.float32 for t in pred.values())
    assert all(torch.equal(pred[k], ref[k]) for k in ref)  # ... the same whatever the model's dtype
    ghn_.predict(model, x)
    for name, p in model.named_parameters():
        assert p.dtype == dtype, name  # ... and cast back
        assert torch.isfinite(p).all(), name
        assert torch.equal(p, ref[name].to(dtype)), name
    assert all(b.dtype == dtype for n, b in model.named_buffers() if b.is_floating_point())
    with torch.no_grad():
        out = model.eval()(x)
    assert out.dtype == dtype and torch.isfinite(out).all()


def test_default_inputs_follow_the_model_dtype(ghn_):
    timm = pytest.importorskip("timm")
    model = timm.create_model("resnet10t", num_classes=3, in_chans=1).to(torch.bfloat16)
    model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (1, 32, 32)}
    ghn_.predict(model)  # default inputs come from pretrained_cfg, in the model's dtype
    assert all(p.dtype == torch.bfloat16 and torch.isfinite(p).all() for p in model.parameters())


def test_prediction_outside_the_target_dtype_range_is_refused(ghn_, monkeypatch):
    model = _mlp(torch.float16)
    before = _params(model)
    real = ghn_.decoder.decode

    def huge(h, queries):
        for info, w in real(h, queries):
            yield info, w * 1e6 if info.name == "2.weight" else w

    monkeypatch.setattr(ghn_.decoder, "decode", huge)
    with pytest.raises(GHNError, match="beyond the range of the model's float16"):
        ghn_.predict(model, torch.randn(2, 4, dtype=torch.float16))
    assert _same(before, _params(model))
    ghn_.predict(_mlp(torch.bfloat16), torch.randn(2, 4, dtype=torch.bfloat16))  # bf16 holds 1e6: fine


def test_written_tensors_are_moved_to_each_parameters_device_and_dtype():
    """On a CPU-only machine we cannot put the model on another device; we check that write_params asks for the
    parameter's own device and dtype for every tensor (the CUDA test below checks the real thing)."""
    calls = []

    class Spy(torch.Tensor):
        def to(self, *args, **kwargs):
            calls.append(kwargs)
            return super().to(*args, **kwargs)

    model = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3)).to(torch.float64)
    pred = {n: torch.ones(p.shape, dtype=torch.float32).as_subclass(Spy) for n, p in model.named_parameters()}
    write_params(model, pred.items())
    assert len(calls) == 4
    assert all(c.get("device") == torch.device("cpu") and c.get("dtype") == torch.float64 for c in calls)
    assert all(type(p) is nn.Parameter and p.dtype == torch.float64 and (p == 1).all() for p in model.parameters())


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_device_that_does_not_exist_is_a_device_error(ghn_):
    for bad in ("cuda", "cuda:3"):
        with pytest.raises(DeviceError, match="not available on this machine"):
            resolve_device(bad)
    with torch.device("meta"):
        model = _mlp()
    with pytest.raises(DeviceError, match="device='cpu'"):
        ghn_.predict(model, torch.randn(2, 4), device="cuda")


def test_malformed_device_is_a_device_error():
    with pytest.raises(DeviceError, match="not a device"):
        resolve_device("gpu0")
    assert resolve_device(None) == torch.device("cpu") and resolve_device("meta") == torch.device("meta")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_ghn_on_a_missing_device_is_a_device_error():
    with pytest.raises(DeviceError):
        GHN(GHNConfig.preset("tiny"), device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_model_and_ghn_on_different_devices(ghn_):
    x = torch.randn(2, 3, 8, 8)
    ref = ghn_.predict_params(_conv_net(torch.float32), x)
    model = _conv_net(torch.float16).cuda()
    ghn_.predict(model, x.half().cuda())  # GHN on CPU, model on GPU
    for name, p in model.named_parameters():
        assert p.is_cuda and p.dtype == torch.float16
        assert torch.equal(p.cpu(), ref[name].half()), name
    gpu_ghn = GHN(ghn_.config, device="cuda")
    gpu_ghn.load_state_dict(ghn_.state_dict())
    cpu_model = _conv_net(torch.float32)
    gpu_ghn.predict(cpu_model, x)  # GHN on GPU, model on CPU
    assert all(not p.is_cuda for p in cpu_model.parameters())
    for name, p in cpu_model.named_parameters():
        torch.testing.assert_close(p, ref[name], rtol=1e-4, atol=1e-5)

    class DataDependent(nn.Module):  # forces the real-tensor trace: inputs are moved to the model's device
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(x) if bool((x > -100).all()) else x

    dd = DataDependent().cuda()
    pred = ghn_.predict_params(dd, torch.randn(2, 4))  # inputs on CPU, model on GPU
    assert set(pred) == {"fc.weight", "fc.bias"}


# ---- BatchNorm recalibration data -----------------------------------------------------------------------------------
def _bn_net(dtype=torch.float32):
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2)).to(dtype)


@pytest.mark.parametrize("data,match", [
    ([torch.randn(3, 5)], "failed on batch 0"),
    ([[1, 2]], "bn_data yielded a int"),
    (5, "iterable of input batches"),
    ([], "yielded no batch"),
])
def test_bad_bn_data_is_typed_and_leaves_running_stats_alone(data, match):
    model = _bn_net()
    with torch.no_grad():
        model[1].running_mean.fill_(0.5)
    before = _params(model)
    with pytest.raises(ExampleInputError, match=match):
        recalibrate_bn(model, data)
    assert _same(before, _params(model))
    assert model[1].momentum == 0.1 and model.training


def test_bn_data_is_cast_to_the_model_dtype():
    model = _bn_net(torch.bfloat16)
    assert recalibrate_bn(model, [torch.randn(8, 4) for _ in range(3)]) == 3  # float32 batches, bf16 model
    assert model[1].num_batches_tracked.item() == 3 and torch.isfinite(model[1].running_var).all()


def test_bad_bn_data_through_predict_is_typed(ghn_):
    with pytest.raises(ExampleInputError, match="bn_data"):
        ghn_.predict(_bn_net(), torch.randn(2, 4), bn="recalibrate", bn_data=[torch.randn(3, 7)])
