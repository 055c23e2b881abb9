"""The global options every command shares (runc's plus runv's guest and plugin choices).

Paths are kept as strings, spelled as pathlib spells them (a Path given is turned into
one): the hot commands read ``--root`` without importing pathlib, which costs ``runv
state`` a sixth of its start, and both ways through the CLI give the same settings.
"""

from __future__ import annotations

import os

from runv.api.frozen import Frozen

DEFAULT_ROOT = "/run/runv"
DEFAULT_KERNEL = "/var/lib/runv/kernel"
DEFAULT_INITRD = "/var/lib/runv/initrd.img"
LOG_FORMATS = ("text", "json")
_PATHS = ("root", "log", "kernel", "initrd")


class Settings(Frozen):
    root: str = DEFAULT_ROOT
    log: str | None = None
    log_format: str = "text"  # one of LOG_FORMATS (ValueError otherwise: the CLI names --log-format)
    debug: bool = False
    kernel: str = DEFAULT_KERNEL
    initrd: str = DEFAULT_INITRD
    hypervisor: str = "auto"
    storage: str = "bundle"
    template: str = "auto"  # VM template to start from: auto, off or a name (runv.templates.store)

    def __init__(self, **values: object) -> None:
        for name in _PATHS:
            if values.get(name) is not None:
                values[name] = _normal(os.fspath(values[name]))
        super().__init__(**values)
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"must be text or json, not {self.log_format!r}")

    def userland(self) -> tuple[str, str] | None:
        """The read-only image of the guest's /usr and the lean initrd that boots on it, beside
        the initrd (runv.guest.userland), where ``runv guest build`` made them."""
        paths = userland_paths(self.initrd)
        return paths if all(os.path.isfile(path) for path in paths) else None

    def check_guest(self) -> None:
        """Refuses a kernel or initrd that is not there (before anything is made for a VM)."""
        from runv.api.errors import RunvError

        for what, path in (("kernel", self.kernel), ("initrd", self.initrd)):
            if not os.path.isfile(path):
                raise RunvError(f"guest {what} {path} does not exist: run `runv guest build` (or pass --{what})")


def userland_paths(initrd: str) -> tuple[str, str]:
    """Where the userland image of the initrd ``initrd`` is, and the lean initrd without it."""
    return initrd + ".userland", initrd + ".lean"


def _normal(path: str) -> str:
    """``path`` as ``str(PurePosixPath(path))`` spells it: no empty or ``.`` parts, no
    trailing slash, ``//`` kept at the start (POSIX leaves its meaning open), ``.`` for nothing."""
    head = "//" if path.startswith("//") and not path.startswith("///") else "/" if path.startswith("/") else ""
    return head + "/".join(part for part in path.split("/") if part not in ("", ".")) or "."
