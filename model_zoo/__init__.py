"""model_zoo: seeded, JSON-serialisable architecture specs for meta-training and evaluating a GHN.

Families: ``cnn`` (DeepNets-style cells), ``vit`` (timm ViT / Eva / RelPos), ``gpt`` and
``llama`` (transformers decoders), ``nanolm`` (hand-written decoders), ``neox``, ``phi_gemma`` and ``torchlm``
(``lm_families.py``: GPT-NeoX, Phi / Gemma, ``nn.TransformerEncoder`` LMs), ``timm`` (any timm model that runs on
the input shape), ``mlp``.

Example:
    >>> from model_zoo import sample_arch, create_arch, list_archs
    >>> spec = sample_arch("cnn", seed=0, max_params=200_000, input_shape=(1, 28, 28), num_classes=10)
    >>> model = spec.build(device="meta")
    >>> list_archs("test_*")
"""
from .spec import ArchSpec as ArchSpec, count_params as count_params
from .registry import (create_arch as create_arch, get_family as get_family, list_archs as list_archs,
                       list_families as list_families, register_arch as register_arch,
                       register_family as register_family, sample_arch as sample_arch)
from . import cnn as cnn, vit as vit, decoders as decoders, timm_family as timm_family, mlp as mlp  # register
from . import nanolm as nanolm, realnet as realnet, lm_families as lm_families  # register
from .split import heldout_archs as heldout_archs, split_of as split_of
from .dataset import ArchDataset as ArchDataset, ArchSample as ArchSample, graph_of as graph_of

__all__ = ["ArchSpec", "ArchDataset", "ArchSample", "count_params", "create_arch", "get_family", "graph_of",
           "heldout_archs", "list_archs", "list_families", "register_arch", "register_family", "sample_arch",
           "split_of"]
