"""User-facing errors.

Every mistake a user can make (missing file, unsupported architecture, bad ratio, empty data, corrupt
checkpoint, NaN loss, ...) is raised as :class:`PrunelabError` with one sentence that says what is wrong and
what to do. The CLI prints that sentence on one line and exits with status 2; library users catch it.
"""


class PrunelabError(Exception):
    """A problem with the user's input or environment, explained in one line."""


def require(condition: bool, message: str) -> None:
    """Raise :class:`PrunelabError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise PrunelabError(message)
