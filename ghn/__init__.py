"""ghn: predict the parameters of any PyTorch model with a low-rank graph hypernetwork.

>>> from ghn import GHN
>>> ghn = GHN.from_pretrained("checkpoints/ghn-fmnist")
>>> model = ghn.predict(model)          # in place; returns the model
>>> pred = ghn.predict_params(model)    # Mapping[str, Tensor] + pred.coverage
"""
from . import errors as errors
from .binding import CoverageReport as CoverageReport
from .config import GHNConfig as GHNConfig
from .domain import model_task as model_task
from .errors import DomainWarning as DomainWarning
from .graph import Graph as Graph, build_graph as build_graph
from .hypernet import GHN as GHN, CoverageWarning as CoverageWarning
from .ops import register_op as register_op
from .prediction import Prediction as Prediction, init_empty_weights as init_empty_weights

__version__ = "0.1.0"
__all__ = ["GHN", "GHNConfig", "Graph", "build_graph", "CoverageReport", "CoverageWarning", "DomainWarning",
           "Prediction", "model_task", "register_op", "init_empty_weights", "errors"]
