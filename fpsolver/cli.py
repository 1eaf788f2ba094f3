"""The ``fpsolver`` command line: one entry point, one module per subcommand.

Each subcommand lives in ``fpsolver/commands/<name>.py`` with ``add_parser(subparsers)``
and ``run(args) -> int``; heavy imports stay inside ``run`` so ``--help`` is fast. User
errors (:class:`~fpsolver.errors.UserError`) become one line on stderr and exit status 2.
"""

import argparse
import importlib
import sys

from . import __version__
from .errors import UserError

COMMANDS = ("run", "theory", "simulate", "validate", "animate", "sweep", "net")


def build_parser():
    """The argparse parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="fpsolver",
        description="Fokker-Planck solver, exact theory and Monte-Carlo SGD for the "
                    "limiting dynamics of SGD with momentum.")
    parser.add_argument("--version", action="version", version=f"fpsolver {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"fpsolver.commands.{name}")
        module.add_parser(sub).set_defaults(handler=module.run)
    return parser


def main(argv=None, full_width_vectors=False):
    """Entry point; returns the process exit status. ``full_width_vectors``: compile the
    kernels with 512-bit vectors where the CPU has them (:func:`console`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not hasattr(args, "handler"):
        parser.print_help()
        return 2
    if full_width_vectors:
        from .cpu_target import prefer_full_width_vectors
        prefer_full_width_vectors()
    try:
        return int(args.handler(args) or 0)
    except UserError as exc:
        print(f"fpsolver: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # an unwritable --out, a full disk: one line, not a traceback
        where = f" {exc.filename}" if exc.filename else ""
        print(f"fpsolver: error: cannot access{where}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except MemoryError as exc:
        print(f"fpsolver: error: out of memory ({exc or 'no detail'}): use a smaller problem",
              file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fpsolver: interrupted", file=sys.stderr)
        return 130


def console():
    """The ``fpsolver`` command (and ``python -m fpsolver``): :func:`main` in a process of
    its own, so it may set numba's CPU features for the whole process
    (:func:`fpsolver.cpu_target.prefer_full_width_vectors`)."""
    return main(full_width_vectors=True)


if __name__ == "__main__":
    sys.exit(console())
