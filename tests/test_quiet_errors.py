"""Issue 15, items 1 and 6: a failed prediction shows our typed error and nothing else; registry errors are typed."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from ghn import build_graph, register_op
from ghn.errors import ConfigError, ExampleInputError, GHNError, NotAModuleError


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))


def test_wrong_inputs_raise_without_torch_logging_a_traceback(ghn_, capfd):
    with pytest.raises(ExampleInputError, match="could not run Sequential"):
        ghn_.predict(_mlp(), torch.randn(2, 5))
    out, err = capfd.readouterr()
    assert "fake_tensor" not in err and "Traceback" not in err and out == ""


def test_a_fresh_process_prints_only_what_the_caller_prints():
    """The whole stderr of a failed predict + a successful to_data(): empty (no torch log, no FutureWarning, no
    'untrained' warning for a prediction that never happened)."""
    code = textwrap.dedent("""
        import torch, torch.nn as nn
        from ghn import GHN, GHNConfig, build_graph
        ghn = GHN(GHNConfig.preset("tiny"))
        try:
            ghn.predict(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), torch.randn(2, 5))
        except Exception as e:
            print(type(e).__name__)
        data = build_graph(nn.Sequential(nn.Linear(8, 4)), torch.randn(2, 8)).to_data()
        print(data.num_nodes)
    """)
    r = subprocess.run([sys.executable, "-W", "default", "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ExampleInputError", "3"]
    assert r.stderr == ""


def test_register_op_with_a_misspelled_op_names_close_ones():
    class Gate(nn.Module):
        pass

    with pytest.raises(ConfigError, match="did you mean 'layer_norm'") as e:
        register_op(Gate, "layernorm")
    assert isinstance(e.value, ValueError) and "register_op(Gate" in str(e.value)
    with pytest.raises(ConfigError, match="choose one of"):
        register_op(Gate, "zzz")


def test_not_a_module_error_is_exported_from_errors():
    with pytest.raises(NotAModuleError, match="torch.nn.Module") as e:
        build_graph({"weight": torch.zeros(2, 2)})
    assert isinstance(e.value, GHNError) and isinstance(e.value, TypeError)
