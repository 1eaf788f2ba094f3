"""``fpsolver simulate``: placeholder until its issue lands (says so and exits 2)."""

from ..errors import UserError


def add_parser(subparsers):
    return subparsers.add_parser("simulate", help="(not available yet)")


def run(args):
    raise UserError("fpsolver simulate is not available in this version")
