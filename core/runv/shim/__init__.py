"""The per-container shim: bring-up of the VM (``bringup``), the long-lived server whose
PID is the container's (``server``), the exec relay (``execrelay``), the one teardown
(``teardown``), the host side of the agent channel (``agentclient``), the control socket's
client (``control``) and the spec's volumes (``volumes``)."""
