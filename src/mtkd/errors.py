"""The one exception type for problems caused by the user's input.

The CLI prints an MtkdError as a single line and exits with status 2; anything else
is a bug and keeps its traceback (shown with --debug).
"""


class MtkdError(Exception):
    """A problem with the user's input (config, data, model name, file) worth one clear line."""

    exit_code = 2


class Interrupted(MtkdError):
    """SIGINT or SIGTERM stopped the work after saving it; the exit status is 128 + the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
