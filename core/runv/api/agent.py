"""The guest agent as the hooks hand it to plugins (``exec``, ``sync_net``)."""

from __future__ import annotations

from typing import Any, Protocol


class Agent(Protocol):
    """The one connection to a VM's guest agent, shared by everyone in the shim (thread-safe).
    Requests and their replies are JSON objects: docs/agent-protocol.md lists the operations."""

    def call(self, op: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
        """Sends one request and waits for its reply; raises :class:`~runv.api.AgentError`
        when the agent refuses it, does not answer within ``timeout`` seconds, or goes away."""
        ...
