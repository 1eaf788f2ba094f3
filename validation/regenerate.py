"""Regenerate the validation report: ``python validation/regenerate.py [--quick] [DIR]``.

Equivalent to ``fpsolver validate [--quick] --out DIR`` (default DIR: validation/report,
or validation/report-quick with --quick); exits with the command's status.
"""

import sys
from pathlib import Path

from fpsolver.cli import main

if __name__ == "__main__":
    args = sys.argv[1:]
    quick = "--quick" in args
    rest = [a for a in args if a != "--quick"]
    here = Path(__file__).resolve().parent
    out = rest[0] if rest else str(here / ("report-quick" if quick else "report"))
    sys.exit(main(["validate", "--out", out] + (["--quick"] if quick else [])))
