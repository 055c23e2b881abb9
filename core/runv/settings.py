"""The global options every command shares (runc's plus runv's guest and plugin choices)."""

from __future__ import annotations

from pathlib import Path

from runv.frozen import Frozen

DEFAULT_ROOT = Path("/run/runv")
DEFAULT_KERNEL = Path("/var/lib/runv/kernel")
DEFAULT_INITRD = Path("/var/lib/runv/initrd.img")
LOG_FORMATS = ("text", "json")


class Settings(Frozen):
    root: Path = DEFAULT_ROOT
    log: Path | None = None
    log_format: str = "text"  # one of LOG_FORMATS (ValueError otherwise: the CLI names --log-format)
    debug: bool = False
    kernel: Path = DEFAULT_KERNEL
    initrd: Path = DEFAULT_INITRD
    hypervisor: str = "auto"
    storage: str = "overlay"
    template: str = "auto"  # VM template to start from: auto, off or a name (runv.templates.store)

    def __init__(self, **values: object) -> None:
        super().__init__(**values)
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"must be text or json, not {self.log_format!r}")
