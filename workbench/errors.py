"""The one exception type users see: a short message naming the file or field and the problem."""


class WorkbenchError(Exception):
    """A user-facing error: bad input, unsupported model, invalid recipe. One line, no traceback."""
