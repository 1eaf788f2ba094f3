"""fpsolver: the statistical physics of SGD with momentum, computable and checkable.

Case files -> phase-space Ornstein-Uhlenbeck model -> exact theory, a finite-volume
Fokker-Planck solver and Monte-Carlo SGD, compared with each other.
"""

__version__ = "0.1.0"
