"""The container as the hooks see it."""

from pathlib import Path

import attrs

from runv.oci.config import Spec


@attrs.frozen
class Container:
    """One container being created or run: its id, bundle, parsed spec and directories."""

    id: str
    bundle: Path
    rootfs: Path
    spec: Spec
    state_dir: Path

    @property
    def annotations(self) -> dict[str, str]:
        return self.spec.annotations
