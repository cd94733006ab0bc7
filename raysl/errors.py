"""The one error type the CLI turns into a clear message (no traceback)."""


class UserError(Exception):
    """A problem with the user's input: a file, a config field, a dataset.

    The message must name what is wrong and where (file path, config field), and say how to fix it
    where that is known. The CLI prints it and exits non-zero without a traceback.
    """
