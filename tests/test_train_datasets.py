"""train on your own data: --dataset specs (image folders, torchvision on disk, text, tokenizers), their errors, the
CLI and Python entry points, and what the trained GHN records about its data. All data is made here; CPU, quick."""
import gzip
import json
import struct
import warnings
from pathlib import Path

import pytest
import timm
import torch
from PIL import Image

from ghn import GHN
from ghn.errors import ConfigError, DomainWarning
from train.api import meta_train
from train.cli import main as train_main, resolve_config
from train.config import TrainConfig, load_yaml
from train.datasets import ImageSource, TextSource, open_dataset, parse_dataset
from train.evaluate import main as evaluate_main
from train.text import encode, load_tokenizer

TINY = Path(__file__).resolve().parents[1] / "train" / "configs" / "tiny_cpu.yaml"
COLOURS = {"cat": (200, 40, 40), "dog": (40, 200, 40), "fox": (40, 40, 200)}


def _png(path, size=(16, 16), colour=(0, 0, 0), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(path)


def _folder(root, per_class=10, size=(16, 16)):
    for name, colour in COLOURS.items():
        for i in range(per_class):
            _png(root / name / f"{i}.png", size, tuple(min(255, c + 3 * i) for c in colour))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """3 classes x 10 PNGs of 3x16x16."""
    return _folder(tmp_path_factory.mktemp("imgs"))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    p = tmp_path_factory.mktemp("text") / "corpus.txt"
    p.write_text("\n".join(f"line {i}: the fox and the dog and the cat" for i in range(60)))
    return p


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, corpus):
    """A word-level tokenizer trained here on the corpus (offline) and saved in Hugging Face layout."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train([str(corpus)], trainers.WordLevelTrainer(special_tokens=["[UNK]"]))
    d = tmp_path_factory.mktemp("tok")
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]").save_pretrained(d)
    return d


# ---- opening data ----------------------------------------------------------------------------------------------------
def test_image_folder_shapes_classes_holdout_and_computed_stats(folder):
    src = open_dataset(f"imagefolder:{folder}", "image")
    assert isinstance(src, ImageSource) and src.input_shape == (3, 16, 16) and src.classes == ["cat", "dog", "fox"]
    assert len(src.train) == 27 and len(src.test) == 3  # one image of each class held out
    assert sorted(src.load("test", torch.arange(3))[1].tolist()) == [0, 1, 2]
    x, y = src.load("train", torch.arange(len(src.train)))
    assert x.shape == (27, 3, 16, 16)
    # the statistics come from the training split: normalised training values have mean 0 and std 1 per channel
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(x.std((0, 2, 3), correction=0), torch.ones(3), atol=1e-2)


def test_image_folder_with_train_and_test_folders_uses_them(tmp_path):
    _folder(tmp_path / "train", per_class=3)
    _folder(tmp_path / "test", per_class=2)
    src = open_dataset(f"imagefolder:{tmp_path}", "image")
    assert len(src.train) == 9 and len(src.test) == 6 and "test/" in src.test_note


def test_greyscale_images_give_one_channel_and_image_size_resizes(tmp_path):
    for c in ("a", "b"):
        for i, size in enumerate([(10, 10), (12, 8)]):
            _png(tmp_path / c / f"{i}.png", size, (90 * i + 10,) * 3, mode="L")
    with pytest.raises(ConfigError, match=r"2 different sizes.*--image-size 12 to resize them all to 12x12"):
        open_dataset(f"imagefolder:{tmp_path}", "image")
    src = open_dataset(f"imagefolder:{tmp_path}", "image", image_size=8)
    assert src.input_shape == (1, 8, 8)


def _unreadable(root):
    _folder(root, per_class=2)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")


@pytest.mark.parametrize("make, match", [
    (lambda root: None, r"does not exist"),
    (lambda root: root.mkdir(), r"no class subfolders with images \(it holds no images\)"),
    (lambda root: _png(root / "only" / "1.png"), r"one class folder \('only'\).*at least two"),
    (_unreadable, r"broken.png is not a readable image.*move it out"),
])
def test_bad_image_folders_name_the_path_and_the_fix(tmp_path, make, match):
    root = tmp_path / "data"
    make(root)
    with pytest.raises(ConfigError, match=match):
        open_dataset(f"imagefolder:{root}", "image")


def _write_idx(path, data: bytes, dims):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes([0, 0, 0x08, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + data)


def test_torchvision_dataset_on_disk_uses_its_test_split_and_known_stats(tmp_path):
    raw = tmp_path / "MNIST" / "raw"  # what torchvision.datasets.MNIST(root, download=True) leaves behind
    g = torch.Generator().manual_seed(0)
    for prefix, n in (("train", 40), ("t10k", 12)):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", torch.randint(0, 256, (n * 784,), generator=g,
                                                                      dtype=torch.uint8).numpy().tobytes(), (n, 28, 28))
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", bytes(i % 10 for i in range(n)), (n,))
    src = open_dataset(f"torchvision:mnist:{tmp_path}", "image")
    assert src.input_shape == (1, 28, 28) and src.num_classes == 10 and len(src.train) == 40 and len(src.test) == 12
    assert src.mean == [0.1307] and src.std == [0.3081]
    assert open_dataset(f"torchvision:MNIST:{tmp_path}", "image", image_size=14).input_shape == (1, 14, 14)


def test_torchvision_errors_suggest_close_names_and_how_to_download(tmp_path):
    with pytest.raises(ConfigError, match=r"no dataset 'CIFAR11'; did you mean CIFAR10, CIFAR100"):
        open_dataset(f"torchvision:CIFAR11:{tmp_path}", "image")
    with pytest.raises(ConfigError, match=r"cannot read it.*CIFAR10\('.*', download=True\)"):
        open_dataset(f"torchvision:CIFAR10:{tmp_path}", "image")


def test_text_corpus_is_bytes_or_tokenizer_ids(corpus, tokenizer_dir, tmp_path):
    src = open_dataset(f"text:{corpus}", "lm", seq_len=16)
    assert isinstance(src, TextSource) and src.vocab_size == 256
    assert torch.equal(torch.cat([src.train, src.val]), torch.tensor(list(corpus.read_bytes())))
    tok = load_tokenizer(tokenizer_dir)
    src = open_dataset(f"text:{corpus.parent}", "lm", seq_len=16, tokenizer=str(tokenizer_dir))  # a directory
    assert src.vocab_size == len(tok) < 256 and src.tokenizer == str(tokenizer_dir)
    assert torch.equal(torch.cat([src.train, src.val]), encode(corpus.read_bytes(), tok))


@pytest.mark.parametrize("make, spec, kw, match", [
    (lambda d: (d / "empty.txt").write_text(""), "text:{d}/empty.txt", {}, r"empty.txt is empty"),
    (lambda d: (d / "short.txt").write_text("tiny"), "text:{d}/short.txt", {}, r"holds 4 tokens.*lower --seq-len"),
    (lambda d: (d / "tok").mkdir(), "text:{corpus}", {"tokenizer": "{d}/tok"}, r"not a Hugging Face tokenizer"),
    (lambda d: None, "text:{d}/missing", {}, r"missing does not exist"),
])
def test_bad_text_data_names_the_path_and_the_fix(tmp_path, corpus, make, spec, kw, match):
    make(tmp_path)
    fill = dict(d=tmp_path, corpus=corpus)
    with pytest.raises(ConfigError, match=match):
        open_dataset(spec.format(**fill), "lm", seq_len=16, **{k: v.format(**fill) for k, v in kw.items()})


def test_dataset_specs_are_checked_in_the_config():
    assert parse_dataset("torchvision:CIFAR10:/data/c") == ("torchvision", "CIFAR10:/data/c")
    with pytest.raises(ConfigError, match="did you mean 'imagefolder'"):
        TrainConfig(dataset="imgfolder:/x")
    with pytest.raises(ConfigError, match="add --task lm --families gpt llama"):
        TrainConfig(dataset="text:/x.txt")
    with pytest.raises(ConfigError, match="torchvision:NAME:ROOT"):
        TrainConfig(dataset="torchvision:CIFAR10")
    with pytest.raises(ConfigError, match="--tokenizer is for language models"):
        TrainConfig(tokenizer="/tok")


def test_the_task_follows_the_dataset_and_lm_runs_sample_lm_families(corpus):
    cfg, _ = resolve_config(["--dataset", f"text:{corpus}"])
    assert cfg.task == "lm" and cfg.families == ["gpt", "llama"]
    cfg, _ = resolve_config(["--task", "lm"])
    assert cfg.dataset is None and cfg.families == ["gpt", "llama"]
    with pytest.raises(ConfigError, match="do not fit task 'lm'"):  # the YAML's image families are kept, not replaced
        resolve_config(["--config", str(TINY), "--task", "lm"])


# ---- training on it --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, folder):
    """The issue's command: python -m train --config tiny_cpu.yaml --dataset imagefolder:DIR (fewer steps)."""
    out = tmp_path_factory.mktemp("run") / "out"
    assert train_main(["--config", str(TINY), "--dataset", f"imagefolder:{folder}", "--steps", "2",
                       "--ckpt-every", "2", "--out", str(out)]) == 0
    return out / "ckpt-0000002"


def test_cli_run_on_an_image_folder_records_its_data_and_predicts_without_inputs(folder_run):
    cfg = json.loads((folder_run / "config.json").read_text())
    assert cfg["input_shape"] == [3, 16, 16] and cfg["num_classes"] == 3 and cfg["task"] == "image"
    assert len(cfg["input_mean"]) == 3 and cfg["notes"]["classes"] == ["cat", "dog", "fox"]
    ghn = GHN.from_pretrained(folder_run)
    model = timm.create_model("resnet18", in_chans=3, num_classes=3)
    before = model.conv1.weight.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DomainWarning)
        ghn.predict(model)  # no example inputs: traced at the GHN's 3x16x16
    assert not torch.equal(model.conv1.weight, before) and model(torch.randn(2, 3, 16, 16)).shape == (2, 3)


def test_evaluate_on_the_same_folder(folder_run, folder, tmp_path):
    out = tmp_path / "eval.json"
    assert evaluate_main(["--ghn", str(folder_run), "--config", str(TINY), "--dataset", f"imagefolder:{folder}",
                          "--archs", "2", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["test_images"] == 3 and result["dataset"] == f"imagefolder:{folder}"
    assert result["constraints"]["cnn"]["input_shape"] == [3, 16, 16] and len(result["rows"]) == 2


def test_cli_language_model_run_on_a_text_file_with_a_tokenizer(corpus, tokenizer_dir, tmp_path):
    out = tmp_path / "lm"
    assert train_main(["--config", str(TINY), "--task", "lm", "--families", "gpt", "llama", "--dataset",
                       f"text:{corpus}", "--tokenizer", str(tokenizer_dir), "--seq-len", "16", "--steps", "1",
                       "--ckpt-every", "1", "--max-params", "60000", "--zoo-constraints", "{}", "--out", str(out)]) == 0
    cfg = json.loads((out / "ckpt-0000001" / "config.json").read_text())
    assert cfg["task"] == "lm" and cfg["vocab_size"] == len(load_tokenizer(tokenizer_dir)) and cfg["input_shape"] == [16]


class Pictures(torch.utils.data.Dataset):
    """(uint8 (3, 16, 16), label) pairs, 3 classes."""

    classes = ["r", "g", "b"]

    def __len__(self):
        return 30

    def __getitem__(self, i):
        x = torch.zeros(3, 16, 16, dtype=torch.uint8)
        x[i % 3] = 100 + 5 * i
        return x, i % 3


def test_meta_train_takes_a_python_dataset_and_returns_the_ghn_dir(tmp_path, capsys):
    d = meta_train(Pictures(), tmp_path / "py", config=TINY, steps=1, ckpt_every=1)
    cfg = GHN.from_pretrained(d).config
    assert cfg.input_shape == [3, 16, 16] and cfg.num_classes == 3 and cfg.notes["classes"] == ["r", "g", "b"]
    assert cfg.notes["dataset"] == "python:Pictures"
    # resuming from the command line cannot reopen Python data, and says how to continue instead
    assert train_main(["--resume", str(tmp_path / "py"), "--steps", "2"]) == 2
    assert "train.meta_train(dataset, out, resume=...)" in capsys.readouterr().err


def test_meta_train_on_token_ids_switches_to_the_lm_task(tmp_path):
    tokens = torch.arange(600) % 50
    d = meta_train(tokens, tmp_path / "lm", config=load_yaml(TINY), steps=1, ckpt_every=1, seq_len=16,
                   max_params=60000, vocab_size=50)
    cfg = GHN.from_pretrained(d).config
    assert cfg.task == "lm" and cfg.vocab_size == 50
