"""train.evaluate: the zero-shot protocol (BatchNorm recalibration, test accuracy) and its command line."""
import json
from pathlib import Path

import pytest
import torch

from train.data import fashion_mnist, normalize
from train.evaluate import ImageEvalData, accuracy, bn_batches, main, zero_shot_accuracy

CONFIGS = Path(__file__).resolve().parents[1] / "train" / "configs"


@pytest.fixture(scope="module")
def eval_data():
    return ImageEvalData.load(test_images=2000)


def test_bn_batches_are_fixed_by_seed(eval_data):
    a, b = list(bn_batches(eval_data.train_x)), list(bn_batches(eval_data.train_x))
    assert len(a) == 20 and a[0].shape == (128, 1, 28, 28) and all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(next(bn_batches(eval_data.train_x, seed=1)), a[0])


def test_zero_shot_accuracy_recalibrates_bn_and_measures_test_accuracy(eval_data):
    # A linear classifier fitted for a few steps is far above chance; BatchNorm's statistics start wrong
    # (zeros/ones) and must be recomputed from training images for the accuracy to survive.
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(1)
    lin = torch.nn.Linear(784, 10)
    model = torch.nn.Sequential(bn, torch.nn.Flatten(), lin)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    xu, y = fashion_mnist("train", limit=4096)
    x = normalize(xu)
    for i in range(0, 4096, 128):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + 128]), y[i:i + 128]).backward()
        opt.step()
    bn.reset_running_stats()
    bn.weight.data.fill_(1.0), bn.bias.data.zero_()
    acc = zero_shot_accuracy(model, eval_data)
    assert not model.training and bn.momentum == 0.1  # eval mode; momentum restored after recalibration
    assert bn.num_batches_tracked.item() == 20
    assert abs(bn.running_mean.item()) < 0.05  # recomputed from data normalised to mean 0
    assert 60 < acc <= 100
    assert accuracy(model, eval_data.test_x, eval_data.test_y) == acc


def test_evaluate_cli_compares_ghn_and_default_init(tmp_path, ghn_dir, capsys):
    out = tmp_path / "eval.json"
    # MLPs keep this cheap; CNNs (full 28x28 resolution) go through the same code in the long benchmarks.
    rc = main(["--ghn", str(ghn_dir), "--config", str(CONFIGS / "tiny_cpu.yaml"), "--archs", "2",
               "--families", "mlp", "--constraints", "{max_depth: 2}", "--images", "300", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    assert [r["family"] for r in result["rows"]] == ["mlp", "mlp"]
    for row in result["rows"]:
        assert row["name"].startswith(f"heldout_{row['family']}_") and 0 < row["params"] <= 20000  # tiny_cpu's limit
        assert 0 <= row["ghn"] <= 100 and 0 <= row["default"] <= 100
    assert result["summary"]["all"]["archs"] == 2 and "all (2 archs): ghn" in capsys.readouterr().out


def test_evaluate_cli_reports_a_missing_ghn_or_bad_config(tmp_path, capsys):
    assert main(["--ghn", str(tmp_path / "none"), "--archs", "1"]) == 1
    assert "no such directory" in capsys.readouterr().err
    assert main(["--ghn", str(tmp_path / "none"), "--families", "cnn", "gpt"]) == 1
    assert "do not fit task 'image'" in capsys.readouterr().err
