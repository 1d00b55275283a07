"""train: TrainConfig, YAML presets and the command line (precedence, typed errors with suggestions)."""
from pathlib import Path

import pytest

from ghn.errors import ConfigError
from train.cli import main, resolve_config
from train.config import TrainConfig, load_yaml

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_presets_are_valid_configs(preset):
    cfg = TrainConfig.from_dict(load_yaml(CONFIGS / preset), source=preset)
    assert cfg.steps >= 1 and cfg.families


def test_required_presets_exist():
    assert {"tiny_cpu.yaml", "fmnist.yaml"} <= {p.name for p in CONFIGS.glob("*.yaml")}


def test_unknown_yaml_key_names_key_and_close_match(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("steps: 3\nmeta_bach: 4\n")
    with pytest.raises(ConfigError, match=r"unknown key 'meta_bach' in .*run.yaml; did you mean 'meta_batch'"):
        resolve_config(["--config", str(f)])


def test_unknown_flag_names_flag_and_close_match():
    with pytest.raises(ConfigError, match=r"unknown flag '--lrr'.*did you mean '--lr'"):
        resolve_config(["--lrr", "0.1"])


def test_wrong_type_in_yaml(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("steps: ten\n")
    with pytest.raises(ConfigError, match="steps must be int"):
        resolve_config(["--config", str(f)])


@pytest.mark.parametrize("yaml_text, match", [
    ("task: lm\nfamilies: [cnn]\n", r"families \['cnn'\] do not fit task 'lm'"),
    ("task: audio\n", "task must be 'image' or 'lm'"),
    ("steps: 0\n", "steps must be >= 1"),
    ("- steps\n", "must hold a mapping"),
    ("steps: [1\n", "not valid YAML"),
])
def test_invalid_values(tmp_path, yaml_text, match):
    f = tmp_path / "run.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError, match=match):
        resolve_config(["--config", str(f)])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_config(["--config", "no/such/file.yaml"])


def test_precedence_defaults_then_yaml_then_flags(tmp_path):
    f = tmp_path / "run.yaml"
    f.write_text("steps: 7\nlr: 0.01\nfamilies: [mlp]\nzoo_constraints: {max_depth: 2}\n")
    cfg, _ = resolve_config(["--config", str(f), "--lr", "0.5", "--no-amp", "--zoo-constraints", "{max_depth: 3}"])
    assert cfg.steps == 7  # from the YAML
    assert cfg.lr == 0.5  # the flag wins over the YAML
    assert cfg.families == ["mlp"] and cfg.zoo_constraints == {"max_depth": 3}
    assert cfg.batch_size == TrainConfig().batch_size  # untouched default


def test_resume_of_a_non_checkpoint_is_a_checkpoint_error(tmp_path):
    from ghn.errors import CheckpointError
    with pytest.raises(CheckpointError, match="neither a run directory"):
        resolve_config(["--resume", str(tmp_path)])


def test_main_reports_config_errors_with_exit_code_2(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text("gama: 0.1\n")
    assert main(["--config", str(f)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'gama'" in err and "did you mean 'gamma'" in err


def test_print_config_prints_resolved_yaml(capsys):
    assert main(["--config", str(CONFIGS / "tiny_cpu.yaml"), "--steps", "3", "--print-config"]) == 0
    out = capsys.readouterr().out
    printed = TrainConfig.from_dict(__import__("yaml").safe_load(out))
    assert printed.steps == 3 and printed.ghn_preset == "tiny"
