"""train: meta-train a GHN on real data (``python -m train`` / ``ghn-train``).

Modules: ``config`` (TrainConfig), ``cli`` (flags + YAML presets in ``configs/``), ``data`` (Fashion-MNIST,
fortunes), ``tasks`` (losses of archs run with predicted parameters), ``loop`` (the meta-training step),
``distributed`` (torchrun/DDP), ``checkpoint`` (atomic safetensors + JSON), ``metrics`` / ``plot`` (JSONL, PNG),
``prefetch`` (background data preparation), ``evaluate`` (zero-shot accuracy on held-out archs).

Example:
    >>> from train import TrainConfig, train
    >>> train(TrainConfig.from_dict(load_yaml("train/configs/tiny_cpu.yaml"), base=None))
"""
from .config import TrainConfig as TrainConfig, load_yaml as load_yaml
from .evaluate import zero_shot_accuracy as zero_shot_accuracy
from .loop import train as train

__all__ = ["TrainConfig", "load_yaml", "train", "zero_shot_accuracy"]
