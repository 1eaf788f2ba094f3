"""Networks: Hessian eigen-directions, recorded SGD training and comparison with the theory.

Needs the ``net`` extra (torch, torchvision, scikit-learn). Importing this package does not
import torch; the submodules do, when a function needs them:

- :mod:`~fpsolver.net.hessian`: Hessian-vector products, Lanczos, subspace iteration;
- :mod:`~fpsolver.net.data`: data sets that need no download;
- :mod:`~fpsolver.net.record`: continued SGD training recorded to HDF5 (resumable);
- :mod:`~fpsolver.net.pipeline`: a run directory (config, reference network, eigen, record);
- :mod:`~fpsolver.net.project`, :mod:`~fpsolver.net.figures`, :mod:`~fpsolver.net.files`:
  comparison with theory levels 1 and 2, its figures, the file readers (no torch).
"""

import importlib

from ..errors import UserError

SUBMODULES = ("hessian", "data", "record", "pipeline", "project", "figures", "files")
TORCH_FREE = ("project", "figures", "files")


def require_torch():
    """Import torch, or raise a :class:`UserError` that says how to install the extra."""
    try:
        return importlib.import_module("torch")
    except ImportError:
        raise UserError("this command needs the net extra: pip install 'fpsolver[net]' "
                        "(torch, torchvision, scikit-learn)") from None


def __getattr__(name):
    """Lazy submodule access: ``fpsolver.net.hessian`` imports torch only when touched."""
    if name in SUBMODULES:
        if name not in TORCH_FREE:
            require_torch()
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
