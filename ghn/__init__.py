"""ghn: predict the parameters of any PyTorch model with a low-rank graph hypernetwork.

>>> from ghn import GHN
>>> ghn = GHN.from_pretrained("checkpoints/ghn-fmnist")
>>> model = ghn.predict(model)          # in place; returns the model
>>> pred = ghn.predict_params(model)    # Mapping[str, Tensor] + pred.coverage
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from . import errors as errors
from .errors import DomainWarning as DomainWarning, UnverifiedWeightsWarning as UnverifiedWeightsWarning

# The names below need torch (~1.5 s to import): they are imported on first use (__getattr__), so `import ghn` is
# cheap and ghn-predict (ghn.cli) takes over Ctrl-C and answers --help before torch loads.
_LAZY = {"CoverageReport": "binding", "GHNConfig": "config", "model_task": "domain", "Graph": "graph",
         "build_graph": "build", "GHN": "hypernet", "CoverageWarning": "hypernet", "register_op": "ops",
         "Prediction": "prediction", "init_empty_weights": "prediction"}

if TYPE_CHECKING:  # what type checkers and IDEs see
    from .binding import CoverageReport as CoverageReport
    from .config import GHNConfig as GHNConfig
    from .domain import model_task as model_task
    from .build import build_graph as build_graph
    from .graph import Graph as Graph
    from .hypernet import GHN as GHN, CoverageWarning as CoverageWarning
    from .ops import register_op as register_op
    from .prediction import Prediction as Prediction, init_empty_weights as init_empty_weights


def __getattr__(name: str) -> Any:
    """A public name of ``_LAZY`` (imported now), or a submodule (``ghn.hypernet`` after a bare ``import ghn``)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__version__ = "0.1.0"
__all__ = ["GHN", "GHNConfig", "Graph", "build_graph", "CoverageReport", "CoverageWarning", "DomainWarning",
           "UnverifiedWeightsWarning", "Prediction", "model_task", "register_op", "init_empty_weights", "errors"]
