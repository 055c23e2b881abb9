"""The hooks of a QEMU-backed hypervisor plugin, parameterised by accelerator.

``tcg`` and ``qemu`` (KVM) are instances of :class:`QemuHypervisor`; their entry points
name the instance, which pluggy registers like a module.
"""

from __future__ import annotations

from runv.api import AgentChannel, Capabilities, GuestModules, HypervisorInfo, hookimpl
from runv_qemu import command, driver
from runv_qemu.template import QemuTemplates, TemplatedQemuVM

CAPABILITIES = Capabilities(
    # shares (their tag the share's tag): virtio-fs, a virtiofsd each, or 9p, QEMU's own server
    # (capabilities()); a VM says which it got (QemuVM.shared_fs): a clone sharing its template's RAM has 9p
    agent=AgentChannel(),  # a virtserialport named org.runv.agent, served at vm.agent_socket
    disk_formats=("raw", "qcow2"),  # virtio-blk with serial=Disk.serial
    nics=True,  # -netdev tap,fd=N
    nic_hotplug=True,  # device_add on a free pcie-root-port (VMSpec.hotplug_slots of them)
    pause=True,  # QMP stop / cont
    resize=True,  # virtio-mem and vCPU hot-plug (QemuVM.resize)
    userland=True,  # virtio-pmem on a read-only shared file (runv_qemu.command)
)

GUEST_MODULES = GuestModules(
    # the drivers of the devices every QEMU VM has: the agent's virtio-serial port, disks, NICs,
    # entropy (virtio-rng), 9p shares, virtio-mem, which must be bound before the host plugs
    # memory (`runv update`), the balloon that reports free memory to the host, and virtio-pmem
    # with its namespace driver for the userland image; the kernel loads the modules they depend on first
    at_boot=("virtio_pci", "virtio_console", "virtio_blk", "virtio_net", "virtio_rng", "9pnet_virtio", "9p", "virtio_mem",
             "virtio_balloon", "virtio_pmem", "nd_pmem"),
    # loaded by the first mount of a virtio-fs share (which binds its device) and of the userland image
    on_demand=("virtiofs", "erofs"),
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
        capabilities = CAPABILITIES.evolve(shared_fs=command.SERVED[command.shares_over()])
        return HypervisorInfo(capabilities=capabilities, vm=TemplatedQemuVM, priority=self.priority,
                              templates=QemuTemplates(self.name, self.accel, self.cpu),
                              programs=(command.BINARY,))  # (a VM's virtiofsd works in its state directory too: tests' leftovers)

    @hookimpl
    def guest_modules(self):
        return GUEST_MODULES

    @hookimpl
    def probe(self):
        return command.missing_binary()

    @hookimpl
    def boot(self, vm):
        return driver.start(vm, plugin=self.name, accel=self.accel, cpu=self.cpu(), cls=TemplatedQemuVM)
