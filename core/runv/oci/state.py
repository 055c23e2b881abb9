"""The OCI state of a container, as ``runv state`` prints it and hooks receive it."""

from __future__ import annotations

from runv.api.frozen import Frozen

OCI_VERSION = "1.0.2"


class State(Frozen):
    id: str
    status: str
    pid: int
    bundle: str
    rootfs: str
    created: str
    owner: str = ""
    annotations: dict[str, str] = {}

    def to_json(self) -> dict:
        """The runc-shaped document: OCI fields plus runc's rootfs, created and owner."""
        return {
            "ociVersion": OCI_VERSION,
            "id": self.id,
            "pid": self.pid if self.status in ("created", "running", "paused") else 0,
            "status": self.status,
            "bundle": self.bundle,
            "rootfs": self.rootfs,
            "created": self.created,
            "annotations": self.annotations,
            "owner": self.owner,
        }
