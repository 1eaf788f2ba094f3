"""One module per ``fpsolver`` subcommand: ``add_parser(subparsers)`` and ``run(args)``."""

from pathlib import Path

from ..case import default_case, load_case


def add_case_argument(parser, optional=False):
    """The positional CASE.toml argument (optional: the built-in default case)."""
    if optional:
        parser.add_argument("case", nargs="?", default=None,
                            help="case file (TOML); the built-in default case when omitted")
    else:
        parser.add_argument("case", help="case file (TOML)")


def case_from_args(args):
    """The Case named by ``args.case`` (None: the built-in default)."""
    return default_case() if args.case is None else load_case(Path(args.case))
