"""Shared test configuration: strict floating point, one seeded rng, figures closed."""

import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _strict_floats():
    """Every floating-point error raises inside a test."""
    old = np.seterr(all="raise")
    yield
    np.seterr(**old)


@pytest.fixture
def rng():
    """The one seeded random generator for tests."""
    return np.random.default_rng(20240107)


@pytest.fixture
def interrupt_at():
    """Tracker factory: ``interrupt_at(n)`` raises KeyboardInterrupt (a Ctrl-C) at step n."""
    from fpsolver.solve import Tracker

    class Interrupt(Tracker):
        def __init__(self, at):
            super().__init__(1)
            self.at = at

        def handle(self, state):
            if state.step == self.at:
                raise KeyboardInterrupt

    return Interrupt


@pytest.fixture(autouse=True)
def _close_figures():
    """Close every matplotlib figure a test opened (only if matplotlib was imported)."""
    yield
    import sys

    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close("all")
