"""The one exception a request handler raises to refuse a request."""


class RequestError(Exception):
    """A request that cannot be served; the message goes back to the host as ``error``
    (where the host raises it as :class:`runv.api.AgentError`)."""
