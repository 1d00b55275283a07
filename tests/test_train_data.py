"""train: idx parsing, the Fashion-MNIST / fortunes streams and the prefetcher."""
import copy
import gzip
import struct

import pytest
import torch

from ghn.errors import ConfigError
from train.data import FMNIST_MEAN, FMNIST_STD, fashion_mnist, fortunes_bytes, normalize, read_idx
from train.datasets import ImageSource, ImageTensors
from train.streams import ImageStream, TextStream
from train.prefetch import Prefetcher


def _write_idx(path, data: bytes, dims, dtype_byte=0x08):
    header = bytes([0, 0, dtype_byte, len(dims)]) + b"".join(struct.pack(">I", d) for d in dims)
    with gzip.open(path, "wb") as f:
        f.write(header + data)


def test_read_idx_parses_shape_and_values(tmp_path):
    values = bytes(range(24))
    _write_idx(tmp_path / "a.gz", values, (2, 3, 4))
    t = read_idx(tmp_path / "a.gz")
    assert t.dtype == torch.uint8 and t.shape == (2, 3, 4)
    assert t[1, 2, 3].item() == 23 and t.flatten().tolist() == list(range(24))


@pytest.mark.parametrize("data, dims, dtype_byte, match", [
    (bytes(10), (2, 3, 4), 0x08, "declares shape"),  # truncated
    (bytes(24), (2, 3, 4), 0x0D, "not an idx file of uint8"),  # float idx
])
def test_read_idx_rejects_bad_files(tmp_path, data, dims, dtype_byte, match):
    _write_idx(tmp_path / "a.gz", data, dims, dtype_byte)
    with pytest.raises(ConfigError, match=match):
        read_idx(tmp_path / "a.gz")


def test_missing_data_dir_says_how_to_install(tmp_path):
    with pytest.raises(ConfigError, match="dataset-fashion-mnist"):
        fashion_mnist("train", data_dir=tmp_path)
    with pytest.raises(ConfigError, match="apt-get install fortunes"):
        fortunes_bytes(tmp_path / "nope")


def test_fashion_mnist_real_files():
    x, y = fashion_mnist("test")
    assert x.shape == (10_000, 1, 28, 28) and x.dtype == torch.uint8
    assert y.min().item() == 0 and y.max().item() == 9 and torch.bincount(y).tolist() == [1000] * 10
    # the normalisation constants are the training set's mean and std
    xtr, _ = fashion_mnist("train", limit=20_000)
    z = normalize(xtr)
    assert abs(z.mean().item()) < 0.02 and abs(z.std().item() - 1) < 0.02
    assert normalize(torch.tensor([0], dtype=torch.uint8)).item() == pytest.approx(-FMNIST_MEAN / FMNIST_STD)


def test_image_stream_is_a_function_of_seed_rank_step_and_covers_epochs():
    s = ImageStream(batch_size=40, seed=0, rank=0)
    x0, y0 = s.batch(0)
    assert x0.shape == (40, 1, 28, 28) and x0.dtype == torch.float32 and y0.dtype == torch.int64
    pixels = (x0 * FMNIST_STD + FMNIST_MEAN) * 255  # undo the normalisation: whole numbers in [0, 255]
    assert torch.allclose(pixels, pixels.round(), atol=1e-3) and pixels.min() > -0.01 and pixels.max() < 255.01
    # Epoch logic on a 100-image subset: steps 0-2 cover positions 0..119, so step 2 crosses into epoch 1.
    src = s.source
    s.source = ImageSource("subset", ImageTensors(src.train.x[:100], torch.arange(100)), src.test, src.classes,
                           mean=src.mean, std=src.std)
    s._epoch = -1
    seen = torch.cat([s.batch(0)[1], s.batch(1)[1], s.batch(2)[1][:20]])
    assert sorted(seen.tolist()) == list(range(100))  # one full epoch: every image exactly once
    again = copy.copy(s)
    again._epoch = -1
    assert torch.equal(again.batch(2)[1], s.batch(2)[1]) and torch.equal(again.batch(0)[0], s.batch(0)[0])
    other_rank = copy.copy(again)
    other_rank.rank, other_rank._epoch = 1, -1
    assert not torch.equal(other_rank.batch(0)[1], s.batch(0)[1])


def test_text_stream_windows_are_shifted_bytes():
    s = TextStream(batch_size=4, seq_len=16, seed=0)
    x, y = s.batch(3)
    assert x.shape == y.shape == (4, 16) and x.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1]) and 0 <= int(x.min()) and int(x.max()) < 256
    assert torch.equal(TextStream(4, 16, seed=0).batch(3)[0], x)
    assert not torch.equal(s.batch(4)[0], x)


def test_prefetcher_yields_in_order_and_reraises_errors():
    def make(step):
        if step == 5:
            raise ValueError("boom at 5")
        return step * 10

    with Prefetcher(make, start=3, end=9, depth=2) as pf:
        assert pf.get(3) == 30 and pf.get(4) == 40
        with pytest.raises(ValueError, match="boom at 5"):
            pf.get(5)
    with Prefetcher(make, start=0) as pf, pytest.raises(RuntimeError, match="next prepared step is 0"):
        pf.get(1)
    made = []
    with Prefetcher(lambda s: made.append(s) or s, start=0, end=2, depth=4) as pf:
        assert pf.get(0) == 0 and pf.get(1) == 1
        pf._thread.join(timeout=10)
    assert made == [0, 1]  # nothing is prepared past the last step
