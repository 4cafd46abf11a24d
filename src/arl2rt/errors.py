"""The one exception type for errors a user can cause (bad files, shapes, options)."""


class Arl2rtError(Exception):
    """A user-facing error: the message names the file or tensor, what was expected and what was found.

    The CLI prints it without a traceback and exits with status 1.
    """
