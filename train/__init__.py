"""train: meta-train a GHN on real data (``python -m train`` / ``ghn-train``).

Modules: ``config`` (TrainConfig), ``cli`` (flags + YAML presets in ``configs/``), ``options`` (messages name
flags or keywords, as the caller wrote them), ``data`` (Fashion-MNIST and fortunes readers), ``datasets``
(``--dataset`` specs), ``streams`` (seeded batch streams), ``images`` / ``text`` (image folders, torchvision
datasets, text corpora, tokenizers), ``api`` (``meta_train``: a Python dataset in, a trained GHN out), ``tasks``
(losses of archs run with predicted parameters), ``loop`` (the meta-training step),
``distributed`` (torchrun/DDP), ``checkpoint`` (atomic safetensors + JSON), ``metrics`` / ``plot`` (JSONL, PNG),
``prefetch`` (background data preparation), ``evaluate`` (zero-shot accuracy on held-out archs), ``release``
(checkpoint → Hub layout + model card).

Example:
    >>> from train import TrainConfig, load_yaml, train
    >>> train(TrainConfig.from_dict({**load_yaml("train/configs/tiny_cpu.yaml"), "out": "runs/tiny"}))
    >>> from train import meta_train
    >>> ghn_dir = meta_train(my_dataset, "runs/mine", config="train/configs/tiny_cpu.yaml", steps=200)
"""
from typing import Any

from .config import TrainConfig as TrainConfig, load_yaml as load_yaml

__all__ = ["TrainConfig", "load_yaml", "train", "meta_train", "zero_shot_accuracy"]


def __getattr__(name: str) -> Any:
    # Lazy, so `python -m train.evaluate` does not import train.evaluate twice (runpy warns about that).
    if name == "train":
        from .loop import train
        return train
    if name == "meta_train":
        from .api import meta_train
        return meta_train
    if name == "zero_shot_accuracy":
        from .evaluate import zero_shot_accuracy
        return zero_shot_accuracy
    raise AttributeError(f"module 'train' has no attribute {name!r}")
