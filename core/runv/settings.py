"""The global options every command shares (runc's plus runv's guest and plugin choices)."""

from pathlib import Path

import attrs

DEFAULT_ROOT = Path("/run/runv")
DEFAULT_KERNEL = Path("/var/lib/runv/kernel")
DEFAULT_INITRD = Path("/var/lib/runv/initrd.img")


@attrs.frozen
class Settings:
    root: Path = DEFAULT_ROOT
    log: Path | None = None
    log_format: str = "text"
    debug: bool = False
    kernel: Path = DEFAULT_KERNEL
    initrd: Path = DEFAULT_INITRD
    hypervisor: str = "auto"
    storage: str = "overlay"
    template: str = "auto"  # VM template to start from: auto, off or a name (runv.templates.store)
