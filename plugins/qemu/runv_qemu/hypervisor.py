"""The hooks of a QEMU-backed hypervisor plugin, parameterised by accelerator.

``tcg`` and ``qemu`` (KVM) are instances of :class:`QemuHypervisor`; their entry points
name the instance, which pluggy registers like a module.
"""

from __future__ import annotations

from runv.api import NINEP_VIRTIO, AgentChannel, Capabilities, GuestModules, HypervisorInfo, hookimpl
from runv_qemu import driver
from runv_qemu.template import QemuTemplates, TemplatedQemuVM

CAPABILITIES = Capabilities(
    shared_fs=NINEP_VIRTIO,  # -fsdev local + virtio-9p-pci, mount tag = the share's tag
    agent=AgentChannel(),  # a virtserialport named org.runv.agent, served at vm.agent_socket
    disk_formats=("raw", "qcow2"),  # virtio-blk with serial=Disk.serial
    nics=True,  # -netdev tap,fd=N
    nic_hotplug=True,  # device_add on a free pcie-root-port (VMSpec.hotplug_slots of them)
    pause=True,  # QMP stop / cont
    resize=True,  # virtio-mem and vCPU hot-plug (QemuVM.resize)
)

GUEST_MODULES = GuestModules(
    # the drivers of the devices every QEMU VM has: the agent's virtio-serial port, disks, NICs,
    # entropy (virtio-rng), the 9p shares, and virtio-mem, which must be bound before the host
    # plugs memory (`runv update`); the kernel loads the modules they depend on first
    at_boot=("virtio_pci", "virtio_console", "virtio_blk", "virtio_net", "virtio_rng", "9pnet_virtio", "9p", "virtio_mem"),
    on_demand=("virtiofs",),  # QEMU serves it with virtiofsd (bench/sharefs.py compares it with 9p)
)


class QemuHypervisor:
    """QEMU with accelerator ``accel`` (and CPU model ``cpu()``, None for QEMU's default)."""

    def __init__(self, name: str, accel: str, priority: int) -> None:
        self.name = name
        self.accel = accel
        self.priority = priority  # what `--hypervisor auto` ranks plugins by

    def cpu(self) -> str | None:
        return None

    @hookimpl
    def hypervisor_info(self):
        return HypervisorInfo(capabilities=CAPABILITIES, vm=TemplatedQemuVM, priority=self.priority,
                              templates=QemuTemplates(self.name, self.accel, self.cpu), programs=(driver.BINARY,))

    @hookimpl
    def guest_modules(self):
        return GUEST_MODULES

    @hookimpl
    def probe(self):
        return driver.missing_binary()

    @hookimpl
    def boot(self, vm):
        return driver.start(vm, plugin=self.name, accel=self.accel, cpu=self.cpu(), cls=TemplatedQemuVM)
