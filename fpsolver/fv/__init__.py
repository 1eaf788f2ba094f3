"""Finite-volume Fokker-Planck operator: numba kernels, numpy twins, sparse assembly."""

from .assemble import jacobian_matrix, marginal_matrix, pinned
from .operator import FPOperator

__all__ = ["FPOperator", "jacobian_matrix", "marginal_matrix", "pinned"]
