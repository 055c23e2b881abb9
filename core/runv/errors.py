"""The one error type the CLI turns into a one-line message and a non-zero exit."""


class RunvError(Exception):
    """A failure the user can act on; ``str()`` is the whole message, one line."""
