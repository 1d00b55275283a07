"""Issue 15, item 5: train.evaluate takes a run directory, labels what it measures, and its help cites real files."""
from __future__ import annotations

import json
import re
from pathlib import Path

from train.evaluate import EXAMPLES, format_summary, main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "train" / "configs"


def test_a_run_directory_means_its_latest_checkpoint(ghn_dir, tmp_path, capsys):
    run = tmp_path / "run"
    ckpt = run / "ckpt-0000003"
    ckpt.mkdir(parents=True)
    for f in ghn_dir.iterdir():
        (ckpt / f.name).write_bytes(f.read_bytes())
    (ckpt / "train_state.json").write_text(json.dumps({"step": 3}))
    (run / "latest.json").write_text(json.dumps({"step": 3, "dir": ckpt.name}))
    out = tmp_path / "eval.json"
    rc = main(["--ghn", str(run), "--config", str(CONFIGS / "tiny_cpu.yaml"), "--archs", "1", "--families", "mlp",
               "--constraints", "{max_depth: 1}", "--images", "200", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    assert text.splitlines()[0].startswith("zero-shot test accuracy (%, higher is better)")
    assert re.search(r"all \(1 archs\): ghn \d+\.\d\d, default init \d+\.\d\d", text)
    assert json.loads(out.read_text())["metric"].startswith("zero-shot test accuracy")


def test_language_model_results_are_labelled_as_losses():
    text = format_summary({"all": {"ghn": 5.8, "default": 5.55, "archs": 2}}, "lm")
    assert "validation loss (nats/token, lower is better)" in text and "accuracy" not in text


def test_help_cites_only_files_that_exist():
    cited = re.findall(r"(?:train/configs|checkpoints|benchmarks)/[\w.-]+", EXAMPLES)
    assert cited and all((ROOT / c).exists() for c in cited), cited
    assert "ckpt-" not in EXAMPLES  # a run directory is enough; no made-up checkpoint step
