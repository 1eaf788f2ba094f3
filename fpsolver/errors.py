"""User-facing errors: one line that names the offending key or bound.

The CLI catches :class:`UserError` and prints ``fpsolver: error: <message>`` with exit
status 2 and no traceback; anything else is a bug and keeps its traceback.
"""


class UserError(ValueError):
    """Bad user input; the message is one line naming the key or the bound."""


class CaseError(UserError):
    """A malformed case file or case dictionary."""


class UnstableError(UserError):
    """Hyperparameters for which discrete SGD (or a forced time step) is unstable."""


class GridError(UserError):
    """A grid that is too coarse or cuts off probability mass."""


class SolverError(UserError):
    """A run that cannot continue (NaN appearing, no convergence)."""
