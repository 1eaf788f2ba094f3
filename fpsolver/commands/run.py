"""``fpsolver run``: placeholder until its issue lands (says so and exits 2)."""

from ..errors import UserError


def add_parser(subparsers):
    return subparsers.add_parser("run", help="(not available yet)")


def run(args):
    raise UserError("fpsolver run is not available in this version")
