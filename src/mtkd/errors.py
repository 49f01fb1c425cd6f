"""The one exception type for problems caused by the user's input.

The CLI prints an MtkdError as a single line and exits with status 2; anything else
is a bug and keeps its traceback (shown with --debug).
"""


class MtkdError(Exception):
    """A problem with the user's input (config, data, model name, file) worth one clear line:
    line breaks and other control characters in it (a key or a name given by the user) are
    shown escaped, so the message stays one line whatever it quotes."""

    exit_code = 2

    def __init__(self, *args: object):
        if len(args) == 1 and isinstance(args[0], str):
            args = (_one_line(args[0]),)
        super().__init__(*args)


def _one_line(text: str) -> str:
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def check_type(value: object, kinds: tuple, what: str, expected: str) -> None:
    """A wrong type from Python in one line (a bool is not a number here)."""
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        raise MtkdError(f"{what} must be {expected}, got {type(value).__name__} ({value!r:.60})")


class Interrupted(MtkdError):
    """SIGINT or SIGTERM stopped the work after saving it; the exit status is 128 + the signal."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
