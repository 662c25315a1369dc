"""The one exception type that the CLI turns into a one-line message."""


class LatentQAError(Exception):
    """A problem with the user's input or environment, worded so the user can fix it.

    The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback.
    """
