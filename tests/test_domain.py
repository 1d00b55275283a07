"""ghn.domain: a GHN knows what it was trained on and warns (DomainWarning) when it predicts outside of it."""
import warnings

import pytest
import timm
import torch
from torch import nn

from ghn import GHN, GHNConfig
from ghn.domain import ghn_task, model_task
from ghn.errors import DomainWarning, ExampleInputError

from conftest import tiny_gpt2


def _ghn(**meta) -> GHN:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return GHN(GHNConfig.preset("tiny", trained=True, **meta)).eval()


IMAGE = dict(task="image", input_shape=[1, 28, 28], num_classes=10)
LM = dict(task="lm", input_shape=[16], vocab_size=128)


def _cnn(c_in=1, classes=10):
    return nn.Sequential(nn.Conv2d(c_in, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, classes))


class TinyLM(nn.Module):
    """A hand-written LM that declares nothing about its input."""

    def __init__(self, vocab=128):
        super().__init__()
        self.emb, self.mix, self.head = nn.Embedding(vocab, 8), nn.Linear(8, 8), nn.Linear(8, vocab)

    def forward(self, ids):
        return self.head(torch.relu(self.mix(self.emb(ids))))


def _silent(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DomainWarning)
        return fn()


def test_model_task_tells_images_from_language_models():
    assert model_task(timm.create_model("resnet18", num_classes=3)) == "image"
    assert model_task(tiny_gpt2()) == "lm"
    assert model_task(TinyLM()) == "lm"  # nothing declared: its first module is an embedding
    assert model_task(_cnn()) == "image"
    assert model_task(nn.Linear(4, 2)) is None and model_task(nn.Linear(4, 2), torch.randn(2, 4)) is None
    assert model_task(nn.Linear(4, 2), torch.randn(2, 1, 2, 2)) == "image"


def test_ghn_task_reads_the_field_or_legacy_notes():
    assert ghn_task(GHNConfig(task="lm")) == "lm"
    assert ghn_task(GHNConfig(notes={"task": "image"})) == "image"  # checkpoints written before the field
    assert ghn_task(GHNConfig()) is None


def test_image_ghn_warns_on_a_language_model_and_names_the_lm_predictor():
    with pytest.warns(DomainWarning, match=r"language model.*trained on image classification \(1x28x28, 10 "
                                           r"classes\).*ghn-fortunes"):
        _ghn(**IMAGE).predict_params(tiny_gpt2())


def test_lm_ghn_warns_on_an_image_classifier_and_names_the_image_predictor():
    with pytest.warns(DomainWarning, match=r"image model.*trained on language modelling.*ghn-fmnist"):
        _ghn(**LM).predict(_cnn(), torch.randn(2, 1, 28, 28))


def test_in_domain_predictions_do_not_warn():
    _silent(lambda: _ghn(**IMAGE).predict(_cnn(), torch.randn(2, 1, 28, 28)))
    _silent(lambda: _ghn(**LM).predict_params(tiny_gpt2()))
    _silent(lambda: _ghn(**LM).predict_params(TinyLM()))  # traced with the GHN's own (2, 16) token ids
    _silent(lambda: _ghn().predict_params(tiny_gpt2()))  # a GHN that records no task checks nothing


@pytest.mark.parametrize("ghn_meta, model, inputs, match", [
    (IMAGE, _cnn(3), torch.randn(2, 3, 16, 16), r"inputs of shape \(3, 16, 16\).*trained on \(1, 28, 28\)"),
    (IMAGE, _cnn(1, 5), torch.randn(2, 1, 28, 28), r"5 outputs.*10 classes.*classifier='reinit'"),
    (LM, TinyLM(300), torch.randint(0, 300, (2, 16)), r"vocabulary of 300 tokens.*trained on 128.*--tokenizer"),
])
def test_shape_class_and_vocabulary_mismatches_warn(ghn_meta, model, inputs, match):
    with pytest.warns(DomainWarning, match=match):
        _ghn(**ghn_meta).predict_params(model, inputs)


def test_reinit_classifier_silences_the_class_count_warning():
    _silent(lambda: _ghn(**IMAGE).predict(_cnn(1, 5), torch.randn(2, 1, 28, 28), classifier="reinit"))


def test_predict_without_inputs_uses_the_ghns_training_shape():
    model = _cnn(3, 3)  # a plain nn.Module: declares no input
    with pytest.raises(ExampleInputError):
        _ghn().predict(model)
    before = model[0].weight.clone()
    _silent(lambda: _ghn(task="image", input_shape=[3, 16, 16], num_classes=3).predict(model))
    assert not torch.equal(model[0].weight, before)
    # a timm model declares 3x224x224 but runs on the GHN's 3x16x16: traced at the training shape, no warning
    _silent(lambda: _ghn(task="image", input_shape=[3, 16, 16], num_classes=3).predict(
        timm.create_model("resnet18", in_chans=3, num_classes=3)))


def test_the_shipped_predictors_know_their_domains():
    """The two shipped predictors: each warns on the other's kind of model, naming the other; in domain, silent."""
    from model_zoo import sample_arch
    image, lm = GHN.from_pretrained("ghn-fmnist"), GHN.from_pretrained("ghn-fortunes")
    assert (image.config.task, lm.config.task, lm.config.vocab_size) == ("image", "lm", 256)
    with pytest.warns(DomainWarning, match=r"language model.*ghn-fortunes"):
        image.predict_params(tiny_gpt2())
    with pytest.warns(DomainWarning, match=r"image model.*ghn-fmnist"):
        lm.predict(_cnn(), torch.randn(2, 1, 28, 28))
    _silent(lambda: lm.predict(sample_arch("nanolm", seed=0, max_params=50_000).build()))
    _silent(lambda: image.predict(_cnn(), torch.randn(2, 1, 28, 28)))
