"""The one exception a request handler raises to refuse a request."""


class AgentError(Exception):
    """A request that cannot be served; the message goes back to the host as ``error``."""
