"""Let plain-text docstrings pass a ``-W`` build.

The package's docstrings are written to be read in a terminal: ``|x|`` is an absolute
value, ``(*shape, 2d)`` a shape, not reStructuredText substitutions or emphasis. Outside
backquoted spans this escapes every ``|`` and every ``*`` that would open emphasis (a lone
``*`` before a non-space; bullets and ``**`` are left alone), so docutils prints them as
written instead of warning.
"""

import re

_SPANS = re.compile(r"(``.*?``|`[^`]*`)")
_LONE_STAR = re.compile(r"(?<![*\\])\*(?=[^*\s])")


def _escape(text):
    return _LONE_STAR.sub(r"\\*", text.replace("|", r"\|"))


def escape_line(line):
    """``line`` with ``|`` and lone ``*`` escaped outside backquoted spans."""
    parts = _SPANS.split(line)
    return "".join(p if i % 2 else _escape(p) for i, p in enumerate(parts))


def _process(app, what, name, obj, options, lines):
    lines[:] = [escape_line(line) for line in lines]


def setup(app):
    app.connect("autodoc-process-docstring", _process)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
