"""The container as the hooks see it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import attrs

if TYPE_CHECKING:
    from runv.oci.config import Spec


@attrs.frozen
class Container:
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
