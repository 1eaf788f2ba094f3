"""``fpsolver validate``: placeholder until its issue lands (says so and exits 2)."""

from ..errors import UserError


def add_parser(subparsers):
    return subparsers.add_parser("validate", help="(not available yet)")


def run(args):
    raise UserError("fpsolver validate is not available in this version")
