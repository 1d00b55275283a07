"""Issue 21, train/ and benchmarks/ items: model cards true to the GHN's own data (4), --init-from a shipped name
(11), train.evaluate on the data a GHN was trained on (13), messages in the caller's spelling (14), quiet config
typos and DDP runs (17), no import cycles (19), the arch stream public for benchmarks (20). CPU, tiny runs."""
import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ghn import GHN, GHNConfig
from ghn.errors import ConfigError
from train.api import meta_train
from train.cli import main as train_main
from train.evaluate import main as evaluate_main
from train.release import main as release_main, model_card

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "train" / "configs" / "tiny_cpu.yaml"
SHIPPED = ROOT / "checkpoints"


def _folder(root: Path, classes: int = 4, per_class: int = 6, sizes=((16, 16),)) -> Path:
    """``classes`` class folders of random RGB PNGs (sizes cycle through ``sizes``)."""
    g = torch.Generator().manual_seed(classes)
    for c in range(classes):
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
            (root / f"class{c}").mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels.numpy()).save(root / f"class{c}" / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return _folder(tmp_path_factory.mktemp("photos"))


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, folder):
    """``python -m train --config tiny_cpu.yaml --dataset imagefolder:DIR``, one step: a 4-class 3x16x16 GHN."""
    out = tmp_path_factory.mktemp("run") / "photos"
    assert train_main(["--config", str(TINY), "--dataset", f"imagefolder:{folder}", "--steps", "1", "--ckpt-every",
                       "1", "--out", str(out)]) == 0
    return out


# ---- 13: train.evaluate evaluates a GHN on its own data ------------------------------------------------------------
@pytest.fixture(scope="module")
def evaluation(folder_run, tmp_path_factory):
    """``python -m train.evaluate --ghn RUN --config C`` with no --dataset, as the issue ran it."""
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    assert evaluate_main(["--ghn", str(folder_run), "--config", str(TINY), "--archs", "1", "--families", "mlp",
                          "--constraints", "{max_depth: 1}", "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_evaluate_defaults_to_the_data_the_ghn_was_trained_on(evaluation, folder):
    assert evaluation["dataset"] == f"imagefolder:{folder}"  # not fashion-mnist
    assert evaluation["constraints"]["input_shape"] == [3, 16, 16] and evaluation["constraints"]["num_classes"] == 4
    assert evaluation["test_images"] == 4  # one held-out image per class of the folder


def test_evaluate_refuses_data_of_another_kind(folder_run, folder, tmp_path, capsys):
    other = _folder(tmp_path / "two", classes=2)
    assert evaluate_main(["--ghn", str(folder_run), "--config", str(TINY), "--archs", "1", "--dataset",
                          f"imagefolder:{other}"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error:" in err
    assert f"imagefolder:{folder} (3x16x16 images, 4 classes)" in err
    assert f"imagefolder:{other} (3x16x16 images, 2 classes)" in err and "omit --dataset" in err


def test_a_ghn_trained_on_python_data_asks_for_a_dataset_spec():
    from train.evaluate import recorded_data
    with pytest.raises(ConfigError, match="Python dataset.*pass --dataset"):
        recorded_data(GHNConfig(task="image", notes={"dataset": "python:Pictures"}), "runs/py")
    assert recorded_data(GHNConfig(), "untrained") == {}  # records no data: the task's default, as before


# ---- 4: the model card comes from the GHN's config and the run ---------------------------------------------------
def test_release_card_describes_the_ghns_own_data_and_where_it_lives(folder_run, folder, evaluation, tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps(evaluation))
    to = tmp_path / "releases" / "ghn-photos"
    assert release_main([str(folder_run), "--eval", str(tmp_path / "eval.json"), "--to", str(to)]) == 0
    card = (to / "README.md").read_text()
    c = json.loads((to / "config.json").read_text())
    mean = ", ".join(f"{m:.4f}" for m in c["input_mean"])
    std = ", ".join(f"{s:.4f}" for s in c["input_std"])
    assert f"`x = (pixel/255 - [{mean}]) / [{std}]`" in card  # its own statistics, per channel
    assert "3x16x16 image classifiers with 4 classes" in card
    assert f"on the 4 imagefolder:{folder} test images" in card  # the test set it was evaluated on
    assert "tags: [graph-hypernetwork, parameter-prediction, ghn]" in card and "datasets:" not in card
    assert "fashion" not in card.lower()
    assert f'GHN.from_pretrained("{to}")' in card and "checkpoints/ghn-photos" not in card
    # to be pushed to the Hub: the snippet loads the repo id
    assert release_main([str(folder_run), "--to", str(tmp_path / "hub"), "--repo-id", "me/ghn-photos"]) == 0
    assert 'GHN.from_pretrained("me/ghn-photos")' in (tmp_path / "hub" / "README.md").read_text()


@pytest.mark.parametrize("name", ["ghn-fmnist", "ghn-fortunes"])
def test_shipped_cards_read_the_same_from_their_configs(name):
    """The shipped predictors' cards (not re-released) are what the config-driven card writes for them."""
    ghn = GHN.from_pretrained(SHIPPED / name)
    card = model_card(ghn, {"step": 1}, {"ghn_preset": "small"}, {}, None, name, where=f"checkpoints/{name}")
    shipped = (SHIPPED / name / "README.md").read_text()
    assert card.split("## Training")[0] == shipped.split("## Training")[0]


# ---- 11: --init-from a shipped predictor's name ---------------------------------------------------------------------
def test_init_from_takes_a_shipped_predictor_by_name(tmp_path):
    out = tmp_path / "warm"
    assert train_main(["--config", str(TINY), "--init-from", "ghn-fmnist", "--ghn-preset", "small", "--steps", "1",
                       "--ckpt-every", "1", "--lr", "1e-12", "--out", str(out)]) == 0
    shipped = load_file(str(SHIPPED / "ghn-fmnist" / "model.safetensors"))
    started = load_file(str(out / "ckpt-0000001" / "model.safetensors"))
    assert max((started[k] - v).abs().max().item() for k, v in shipped.items()) < 1e-6  # its weights, one tiny step


# ---- 14: messages name what the caller typed -------------------------------------------------------------------------
def test_meta_train_messages_name_keywords_and_the_cli_names_flags(tmp_path, capsys):
    mixed = _folder(tmp_path / "mixed", classes=2, per_class=3, sizes=((16, 16), (16, 16), (12, 20)))
    with pytest.raises(ConfigError, match=r"pass image_size=16 to resize them all to 16x16") as e:
        meta_train(f"imagefolder:{mixed}", tmp_path / "a", config=TINY, steps=1)
    assert "--image-size" not in str(e.value)
    with pytest.raises(ConfigError, match="tokenizer is for language models: add task='lm' "
                                          r"families=\['gpt', 'llama'\]"):
        meta_train(f"imagefolder:{mixed}", tmp_path / "b", config=TINY, tokenizer="tok")
    assert train_main(["--config", str(TINY), "--dataset", f"imagefolder:{mixed}", "--out", str(tmp_path / "c")]) == 2
    assert "pass --image-size 16 to resize them all to 16x16" in capsys.readouterr().err


class MixedSizes(torch.utils.data.Dataset):
    """Python data whose images differ in size: train cannot resize them, the dataset must."""

    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.zeros(3, 16 + 4 * (i % 2), 16, dtype=torch.uint8), i % 2


def test_meta_train_on_python_images_says_to_resize_them_in_the_dataset(tmp_path):
    with pytest.raises(ConfigError, match=r"resize them in the dataset itself.*Resize") as e:
        meta_train(MixedSizes(), tmp_path / "a", config=TINY, steps=1)
    assert "image_size" not in str(e.value) and "--image-size" not in str(e.value)
    with pytest.raises(ConfigError, match="a Python dataset is read as it is"):  # not silently ignored
        meta_train(MixedSizes(), tmp_path / "b", config=TINY, steps=1, image_size=16)


# ---- 17: a typo prints one error line; DDP ranks print no find_unused_parameters warning -----------------------------
def test_ghn_overrides_typo_prints_only_the_error(tmp_path, capsys):
    assert train_main(["--config", str(TINY), "--ghn-overrides", "{num_layer: 2}", "--out", str(tmp_path / "x")]) == 2
    out = capsys.readouterr()
    assert out.out == "" and len(out.err.strip().splitlines()) == 1 and "num_layer" in out.err
    assert not (tmp_path / "x").exists()
    with pytest.raises(ConfigError, match="unknown GHNConfig field"):  # from Python too, before anything runs
        meta_train(torch.arange(600) % 50, tmp_path / "y", config=TINY, ghn_overrides={"num_layer": 2})


def test_ddp_ranks_print_no_find_unused_parameters_warning(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "OMP_NUM_THREADS": "1"}
    r = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "train", "--config", str(TINY),
                        "--out", str(tmp_path / "ddp"), "--steps", "2", "--ckpt-every", "2"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "find_unused_parameters" not in r.stderr


# ---- 19, 20: one import direction between modules; the arch stream is public -----------------------------------------
def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """The project modules ``module`` imports, at any level (function-level imports included)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
    return {m for m in found if m in modules and m != module}


def test_train_and_benchmarks_have_no_import_cycles():
    files = {}
    for package in ("train", "benchmarks"):
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph = {m: _imports(p, m, set(files)) for m, p in files.items()}
    assert graph["train.datasets"] and graph["benchmarks.quality"]  # the walk sees imports at all

    def cycle() -> list[str] | None:
        """A cycle of the import graph (depth-first search: an import of a module still open closes one)."""
        state: dict[str, str] = {}
        stack: list[str] = []

        def visit(m: str) -> list[str] | None:
            state[m] = "open"
            stack.append(m)
            for n in sorted(graph[m]):
                if state.get(n) == "open":
                    return stack[stack.index(n):] + [n]
                if n not in state and (found := visit(n)):
                    return found
            state[m] = "done"
            stack.pop()
            return None

        return next((c for m in sorted(graph) if m not in state and (c := visit(m))), None)

    assert cycle() is None, " -> ".join(cycle())

def test_benchmarks_use_no_private_train_names():
    for path in (ROOT / "benchmarks").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("train"):
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert not private, f"{path.name} imports {private} from {node.module}"
