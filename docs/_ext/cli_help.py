"""``.. cli-help:: run`` inserts the ``--help`` text of ``fpsolver run`` (a literal block).

Several words walk into nested subcommands: ``.. cli-help:: net record``; no argument gives
the top-level help.
"""

import argparse

from docutils import nodes
from docutils.parsers.rst import Directive


def _subparser(parser, name):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise KeyError(f"fpsolver has no subcommand {name!r}")


class CliHelp(Directive):
    optional_arguments = 3
    has_content = False

    def run(self):
        from fpsolver.cli import build_parser

        parser = build_parser()
        try:
            for word in self.arguments:
                parser = _subparser(parser, word)
        except KeyError as exc:
            raise self.error(str(exc)) from None
        text = parser.format_help()
        return [nodes.literal_block(text, text, language="text")]


def setup(app):
    app.add_directive("cli-help", CliHelp)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
