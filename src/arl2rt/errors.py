"""The one exception type for errors a user can cause (bad files, shapes, options)."""

from __future__ import annotations

import re

# A setting named in a message, as ``\x1e<cli>\x1f<python>\x1e``: control characters no path, prompt or name holds.
_SETTING = re.compile("\x1e([^\x1e\x1f]*)\x1f([^\x1e]*)\x1e")


def setting(cli: str, python: str) -> str:
    """Name a setting inside an :class:`Arl2rtError` message in the words of both ways in, e.g.
    ``setting("--overwrite", "overwrite=True")``: ``str()`` of the error reads ``overwrite=True / --overwrite``, and
    the CLI, which prints :meth:`Arl2rtError.cli_message`, ``--overwrite`` alone."""
    return f"\x1e{cli}\x1f{python}\x1e"


class Arl2rtError(Exception):
    """A user-facing error: the message names the file or tensor, what was expected and what was found.

    The CLI prints it without a traceback and exits with status 1.
    """

    def __str__(self) -> str:
        return _SETTING.sub(r"\2 / \1", super().__str__())

    def cli_message(self) -> str:
        """The message in the CLI's words: every :func:`setting` as its option."""
        return _SETTING.sub(r"\1", super().__str__())
