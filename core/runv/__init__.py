"""runv: a hypervisor-based OCI container runtime with runc's command line.

This package is imported by the guest agent inside the VM too, so it must stay
free of imports beyond the standard library. Plugins import from :mod:`runv.api`.
"""

__version__ = "0.1.0"
