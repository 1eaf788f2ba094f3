"""Finite-volume Fokker-Planck operator: numba kernels, numpy twins, sparse assembly."""

from .assemble import jacobian_matrix
from .operator import FPOperator, hybrid_weight

__all__ = ["FPOperator", "hybrid_weight", "jacobian_matrix"]
