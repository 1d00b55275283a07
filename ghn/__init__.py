"""ghn: predict the parameters of any PyTorch model with a low-rank graph hypernetwork."""
from .binding import CoverageReport as CoverageReport
from .graph import Graph as Graph, build_graph as build_graph
from .ops import register_op as register_op
from . import errors as errors

__version__ = "0.1.0"
