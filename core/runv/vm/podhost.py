"""The sandbox's side of a pod: the control operations the shims of the containers that
join its VM (:mod:`runv.shim.member`) send to its shim, which alone talks to the guest."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runv.api.errors import RunvError
from runv.log import logger
from runv.vm import podshare
from runv.vm.agentclient import AgentError

if TYPE_CHECKING:
    from runv.api.container import Container

MEMBER_TIMEOUT = 30.0  # seconds the guest has to kill and unmount a member that leaves


class PodHost:
    """Mixed into :class:`runv.shim.server.Shim`: ``members`` are the containers that joined."""

    members: dict[str, Container]

    def member(self, container_id: str | None) -> Container:
        """The container a request names: a member, or (``None``, its own id) the shim's own."""
        if container_id in (None, self.container.id):
            return self.container
        found = self.members.get(container_id)
        if found is None:
            raise RunvError(f"container {container_id} is not in the VM of container {self.container.id}")
        return found

    def scope(self, request: dict) -> dict:
        """The agent's ``container`` field for a request about one container of the VM."""
        return {"container": self.member(request.get("container")).id}

    def op_join(self, request: dict) -> None:
        """A member's shares mounted in the pod directory, then its rootfs prepared in the guest."""
        cid = str(request.get("id"))
        with self.lock:
            if self.agent is None or self.agent.closed or self.killed:
                raise RunvError(f"container {cid} cannot join the VM of container {self.container.id}: it is stopping")
            if cid in self.members:
                raise RunvError(f"container {cid} is already in the VM of container {self.container.id}")
            member = self.store.read(cid).container(self.store.dir(cid))
            podshare.attach(self.container.state_dir, cid, request.get("shares") or [])
            try:
                self.agent.call("prepare", **request.get("prepare", {}), container=cid)
            except AgentError as exc:
                podshare.detach(self.container.state_dir, cid)
                raise RunvError(f"container {cid}: {exc}") from None
            self.members[cid] = member
        logger.debug("container %s joined the VM of %s", cid, self.container.id)

    def op_leave(self, request: dict) -> None:
        """A member's processes killed and its mounts undone in the guest, then in the pod
        directory; converges (a member's teardown may run twice)."""
        cid = str(request.get("id"))
        with self.lock:
            self.members.pop(cid, None)
            if self.agent is not None and not self.agent.closed:
                try:
                    self.agent.call("remove", timeout=MEMBER_TIMEOUT, container=cid)
                except AgentError as exc:
                    logger.warning("container %s: the guest did not remove member %s: %s", self.container.id, cid, exc)
            podshare.detach(self.container.state_dir, cid)

    def op_freeze(self, request: dict) -> None:
        """Freezes or thaws one member's processes (``runv pause`` of a container in a pod)."""
        try:
            self.agent.call("freeze", **self.scope(request), frozen=bool(request.get("frozen")))
        except AgentError as exc:
            raise RunvError(f"container {request.get('container')}: {exc}") from None

    def op_member_update(self, request: dict) -> None:
        """A member's new cgroup files (:func:`runv.oci.resources.parse_resources`): its VM is the sandbox's, not resized."""
        try:
            self.agent.call("update", **self.scope(request), resources=request.get("files") or {})
        except AgentError as exc:
            raise RunvError(f"container {request.get('container')}: {exc}") from None
