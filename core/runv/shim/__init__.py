"""The per-container shim, the process whose PID is the container's: the server (``server``),
the exec relay it serves (``execrelay``), and its clients: the control socket's (``control``)."""
