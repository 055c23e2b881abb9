"""The container as the hooks see it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from runv.api.errors import RunvError
from runv.api.frozen import Frozen

if TYPE_CHECKING:
    from runv.api.spec import Spec


class Container(Frozen):
    """One container being created or torn down: its id, bundle, parsed spec (``None``
    during a teardown whose bundle is gone) and state directory."""

    id: str
    bundle: Path
    rootfs: Path
    spec: Spec | None
    state_dir: Path

    @property
    def annotations(self) -> dict[str, str]:
        return self.spec.annotations if self.spec else {}


def netns_path(linux: dict) -> str | None:
    """The ``path`` of the ``network`` entry of ``linux.namespaces``, or None (no entry, or
    an entry asking for a new namespace: either way the shim makes its own)."""
    entries = linux.get("namespaces") or []
    if not isinstance(entries, list):
        raise RunvError("config.json: linux.namespaces must be a list")
    for index, entry in enumerate(entries):
        if isinstance(entry, dict) and entry.get("type") == "network":
            path = entry.get("path")
            if path in (None, ""):
                return None
            if not isinstance(path, str) or not path.startswith("/"):
                raise RunvError(f"config.json: linux.namespaces[{index}].path must be an absolute path, not {path!r}")
            return path
    return None
