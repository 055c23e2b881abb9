"""runv: a hypervisor-based OCI container runtime with runc's command line.

This package is imported by the guest agent inside the VM too, so it must stay
free of imports beyond the standard library.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    """``runv.hookimpl``, the marker plugins decorate their hooks with (pluggy is imported
    only when a plugin asks for it, so ``import runv`` stays cheap and guest-safe)."""
    if name == "hookimpl":
        import pluggy

        return pluggy.HookimplMarker("runv")
    raise AttributeError(f"module 'runv' has no attribute {name!r}")
