"""Finite-volume Fokker-Planck operator: numba kernels, numpy twins, sparse assembly."""

from .assemble import (jacobian_matrix, lumps, marginal_matrix, pinned, pinned_jacobian_lu,
                       sparse_lu)
from .operator import FPOperator

__all__ = ["FPOperator", "jacobian_matrix", "lumps", "marginal_matrix", "pinned",
           "pinned_jacobian_lu", "sparse_lu"]
