"""Sphinx configuration for the fpsolver documentation.

Build: ``python -m sphinx -W -b html docs docs/_build/html`` (warnings are errors).
Figures are made beforehand by ``python docs/make_figures.py``; the build only reads them.
"""

import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "_ext"))
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ["COLUMNS"] = "88"  # argparse help width on the CLI pages

import fpsolver  # noqa: E402

project = "fpsolver"
author = "the fpsolver developers"
copyright = "2026, the fpsolver developers"
release = version = fpsolver.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "cli_help",
    "plain_docstrings",
]
autodoc_mock_imports = ["torch", "torchvision", "sklearn", "dask", "distributed", "pandas",
                        "pyarrow"]
autodoc_default_options = {"members": True, "member-order": "bysource"}
autodoc_typehints = "none"
napoleon_google_docstring = False
exclude_patterns = ["_build", "figures/*.txt"]
templates_path = []
html_static_path = []
html_theme = "sphinx_rtd_theme"
html_title = f"fpsolver {release}"
