"""The errors runv and its plugins raise; the CLI turns each into one line and a non-zero exit."""


class RunvError(Exception):
    """A failure the user can act on; ``str()`` is the whole message, one line."""


class Unsupported(RunvError):
    """The hypervisor cannot do what was asked (pause, hot-plug, templates...); the
    message names the hypervisor and the operation."""


class AgentError(RunvError):
    """The guest agent refused a request (its message is in the exception) or went away."""
