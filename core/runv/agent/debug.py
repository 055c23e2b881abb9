"""The agent's debug log: one line a message on the console, only when asked for."""

import os

ENABLED = False  # set by __main__: ``runv.debug`` on the kernel command line, or --debug


def log(message: str) -> None:
    """One line on stderr (the guest console), in debug mode only."""
    if ENABLED:
        os.write(2, f"runv-agent: {message}\n".encode())
