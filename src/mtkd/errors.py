"""The one exception type for problems caused by the user's input.

The CLI prints an MtkdError as a single line and exits with status 2; anything else
is a bug and keeps its traceback (shown with --debug).
"""


class MtkdError(Exception):
    """A problem with the user's input (config, data, model name, file) worth one clear line."""
