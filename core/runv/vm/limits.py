"""The container's limits while it runs (``runv update``): its ``linux.resources`` as the
updates left them, and its VM's size, grown and shrunk with them where the hypervisor can
hot-plug (:meth:`runv.api.VM.resize`). Anything refused leaves the old limits and size."""

from __future__ import annotations

from typing import TYPE_CHECKING

from runv.api.errors import AgentError, RunvError

if TYPE_CHECKING:
    from runv.api.hypervisor import VM, Capabilities
    from runv.vm.agentclient import AgentClient


class Limits:
    def __init__(self, container_id: str, resources: dict | None) -> None:
        self.container_id = container_id
        self.resources = resources or {}
        self.boot_size = self.size = (0, 0)  # the VM's memory (MiB) and vCPUs: at boot, and now

    def booted(self, memory_mib: int, vcpus: int) -> None:
        self.boot_size = self.size = (memory_mib, vcpus)

    def update(self, update: dict, vm: VM, agent: AgentClient, caps: Capabilities, hypervisor: str) -> None:
        """The VM resized to what the new limits need (never below its boot size), then the
        container's cgroup in the guest written; the VM grows before and shrinks after it."""
        from runv.oci.resources import merged, parse_resources
        from runv.vm import sizing

        resources = merged(self.resources, update)
        files = parse_resources(resources, "update")
        wanted = sizing.vm_size(files, "update", sizing.settings())
        old, size = self.size, (max(wanted[0], self.boot_size[0]), max(wanted[1], self.boot_size[1]))
        grows = size[0] > old[0] or size[1] > old[1]
        if size != old and not caps.resize:
            if grows:
                raise RunvError(f"container {self.container_id}: the new limits need a VM of {size[0]} MiB and {size[1]} "
                                f"vCPUs, and hypervisor {hypervisor!r} cannot resize its VM of {old[0]} MiB and {old[1]} "
                                f"vCPUs: recreate the container with them")
            size = old
        if grows:
            vm.resize(*size)
        try:
            agent.call("update", resources=files, vcpus=size[1])
        except AgentError as exc:
            if grows:
                vm.resize(*old)
            raise RunvError(f"container {self.container_id}: {exc}") from None
        if not grows and size != old:
            vm.resize(*size)
        self.resources, self.size = resources, size
