"""Issue 14, items 2 and 5: ``python -m train`` never loses a checkpoint and checks its input before writing.

2. ``--resume`` with fewer ``steps`` than the run has done rewrote ``ckpt-<steps>`` with later weights and moved
   ``latest.json`` back. Now: a typed error ("run is at step 4, config asks for 3"), and no checkpoint directory
   is ever written into again.
5. ``--help`` named an environment variable the code does not read; a misspelled ``zoo_constraints`` key failed
   only after the run had written files (and with no suggestion); a constraint for a family that is not trained
   was ignored. Now everything is checked before the first file is written.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from ghn.errors import CheckpointError, ConfigError
from train.checkpoint import find_checkpoint, save_checkpoint
from train.cli import build_parser, main as cli_main, resolve_config
from train.config import TrainConfig, load_yaml
from train.loop import train

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "train" / "configs" / "tiny_cpu.yaml"


def _tiny(**overrides) -> TrainConfig:
    return TrainConfig.from_dict({**load_yaml(TINY), **overrides})


def _snapshot(run: Path) -> dict[str, tuple[int, bytes]]:
    """Every file and directory under ``run``: inode (a replaced directory gets a new one) and bytes."""
    return {str(p.relative_to(run)): (p.stat().st_ino, p.read_bytes() if p.is_file() else b"")
            for p in sorted(run.rglob("*"))}


@pytest.fixture(scope="module")
def run4(tmp_path_factory) -> Path:
    """A finished 4-step run with a checkpoint after every step."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(_tiny(out=str(out), steps=4, ckpt_every=1, keep_checkpoints=0))
    assert sorted(p.name for p in out.glob("ckpt-*")) == [f"ckpt-{s:07d}" for s in range(1, 5)]
    return out


@pytest.fixture()
def run(run4, tmp_path) -> Path:
    """A private copy of the 4-step run (tests may try to write into it)."""
    shutil.copytree(run4, tmp_path / "run")
    return tmp_path / "run"


# ---- item 2 --------------------------------------------------------------------------------------------------------
def test_resume_with_fewer_steps_than_done_is_refused(run, capsys):
    before = _snapshot(run)
    with pytest.raises(ConfigError, match="run is at step 4, config asks for 3"):
        train(_tiny(resume=str(run), out=str(run), steps=3, ckpt_every=1, keep_checkpoints=0))
    assert cli_main(["--resume", str(run), "--steps", "3"]) == 2
    err = capsys.readouterr().err
    assert "run is at step 4, config asks for 3" in err and "Traceback" not in err
    assert _snapshot(run) == before


def test_resume_at_the_last_step_rewrites_nothing(run):
    before = _snapshot(run)
    assert train(_tiny(resume=str(run), out=str(run), steps=4, ckpt_every=1, keep_checkpoints=0))["step"] == 4
    assert _snapshot(run) == before


def test_resume_from_an_older_checkpoint_into_the_same_run_is_refused(run, tmp_path):
    """Continuing from ckpt-2 in place would overwrite ckpt-3 and ckpt-4; into a new --out it is fine."""
    before = _snapshot(run)
    with pytest.raises(ConfigError, match=r"ckpt-0000003.*ckpt-0000004.*--out"):
        train(_tiny(resume=str(run / "ckpt-0000002"), out=str(run), steps=4, ckpt_every=1, keep_checkpoints=0))
    assert _snapshot(run) == before
    branch = tmp_path / "branch"
    train(_tiny(resume=str(run / "ckpt-0000002"), out=str(branch), steps=3, ckpt_every=1))
    assert json.loads((branch / "latest.json").read_text())["step"] == 3


def test_resume_into_another_run_is_refused(run, run4, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(run4, other)
    before = _snapshot(other)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_tiny(resume=str(run / "ckpt-0000002"), out=str(other), steps=3))
    assert _snapshot(other) == before


def test_new_run_into_a_directory_with_checkpoints_is_refused(run):
    (run / "latest.json").unlink()  # e.g. killed before its first pointer was written, or deleted by hand
    before = _snapshot(run)
    with pytest.raises(ConfigError, match="already holds a run"):
        train(_tiny(out=str(run)))
    assert _snapshot(run) == before


def test_save_checkpoint_never_writes_into_an_existing_checkpoint(run):
    from ghn import GHN
    before = _snapshot(run)
    ghn = GHN.from_pretrained(run / "ckpt-0000003")
    with pytest.raises(CheckpointError, match="ckpt-0000003 already exists") as e:
        save_checkpoint(run, 3, ghn, {}, {}, "steps: 3\n", keep=0)
    assert isinstance(e.value, OSError)
    assert _snapshot(run) == before
    assert not list(run.glob(".ckpt-*")), "the temporary directory was left behind"


def test_a_complete_checkpoint_newer_than_latest_json_is_resumed_from(run):
    """A save killed between renaming its directory and updating latest.json leaves a complete, newer checkpoint."""
    (run / "latest.json").write_text(json.dumps({"step": 3, "dir": "ckpt-0000003"}))
    assert find_checkpoint(run) == run / "ckpt-0000004"
    before = _snapshot(run)
    train(_tiny(resume=str(run), out=str(run), steps=4, ckpt_every=1, keep_checkpoints=0))
    assert {k: v for k, v in _snapshot(run).items() if k != "latest.json"} == \
        {k: v for k, v in before.items() if k != "latest.json"}


# ---- item 5 --------------------------------------------------------------------------------------------------------
def test_help_names_the_environment_variables_the_code_reads():
    help_text = build_parser().format_help()
    documented = set(re.findall(r"\$(GHN_\w+)", help_text))
    read = set()
    for path in (ROOT / "train").glob("*.py"):
        read |= set(re.findall(r"environ(?:\.get\(|\[)\s*[\"'](GHN_\w+)[\"']", path.read_text()))
    assert documented, "--help documents no data directory variable"
    assert documented == read, f"--help documents {sorted(documented)}, the code reads {sorted(read)}"


@pytest.mark.parametrize("constraints, match", [
    ("{cnn: {max_dept: 2}}", r"unknown zoo_constraints key 'max_dept' for family 'cnn'; did you mean 'max_depth'"),
    ("{max_dept: 2}", r"unknown zoo_constraints key 'max_dept'.*did you mean 'max_depth'"),
    ("{cnn: {max_depth: 2}, mpl: {max_depth: 2}}", r"'mpl'.*did you mean 'mlp'"),
    ("{cnn: {max_depth: 2}, vit: {max_tokens: 4}}", r"'vit'.*not trained.*\['cnn', 'mlp'\]"),
    ("{max_tokens: 4}", r"'max_tokens'.*family 'cnn'"),  # shared keys go to every family: cnn has no tokens
    ("{cnn: 3}", r"zoo_constraints\['cnn'\] must be a mapping"),
])
def test_bad_zoo_constraints_fail_before_any_file_is_written(tmp_path, capsys, constraints, match):
    out = tmp_path / "run"
    argv = ["--config", str(TINY), "--out", str(out), "--zoo-constraints", constraints]
    with pytest.raises(ConfigError, match=match):
        resolve_config(argv)
    assert cli_main(argv) == 2
    assert re.search(match, capsys.readouterr().err)
    assert not out.exists()


def test_good_zoo_constraints_still_pass():
    cfg, _ = resolve_config(["--config", str(TINY), "--zoo-constraints", "{max_depth: 2, min_params: 10}"])
    assert cfg.zoo_constraints == {"max_depth": 2, "min_params": 10}
    resolve_config(["--config", str(TINY), "--zoo-constraints", "{cnn: {max_nodes: 2}}"])  # mlp: no entry is fine


def test_constraints_no_arch_satisfies_fail_before_any_file_is_written(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="params"):
        train(_tiny(out=str(out), zoo_constraints={"cnn": {"max_params": 10}, "mlp": {"max_params": 10}}))
    assert not out.exists() or not os.listdir(out)
