"""The validation suite behind ``fpsolver validate``: solver vs exact theory vs FiPy vs
Monte-Carlo SGD, written up as ``report.md`` + ``results.json`` + figures.

Sections (one module each): :mod:`.convergence`, :mod:`.fipy_compare`,
:mod:`.modified_loss`, :mod:`.current`, :mod:`.montecarlo`, :mod:`.diffusion`; the checked
headline numbers and their bounds are in :mod:`.checks`; :mod:`.report` assembles them.
"""
