r"""Matrix-element method: per-event likelihoods, normalisation and the VEGAS baseline."""

from unfoldmem.mem.integrand import (
    FLAGS,
    ExactTransfer,
    LearnedTransfer,
    MEMIntegrand,
    RecoEvents,
    build_assignments,
)
from unfoldmem.mem.likelihood import (
    MEMConfig,
    MEMLikelihood,
    MEMResult,
    chunk_generator,
    theta_grid_points,
)
from unfoldmem.mem.normalisation import GridNormalisation, ReweightNormalisation
from unfoldmem.mem.sampling import CINNChannel, RecoChannel, diagnose, importance_sample
from unfoldmem.mem.vegas_baseline import vegas_log_integral

__all__ = [
    "FLAGS",
    "CINNChannel",
    "ExactTransfer",
    "GridNormalisation",
    "LearnedTransfer",
    "MEMConfig",
    "MEMIntegrand",
    "MEMLikelihood",
    "MEMResult",
    "RecoChannel",
    "RecoEvents",
    "ReweightNormalisation",
    "build_assignments",
    "chunk_generator",
    "diagnose",
    "importance_sample",
    "theta_grid_points",
    "vegas_log_integral",
]
