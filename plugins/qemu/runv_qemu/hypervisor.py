"""The hooks of a QEMU-backed hypervisor plugin, parameterised by accelerator.

``tcg`` and ``qemu`` (KVM) are instances of these classes; their entry points name the
instance, which pluggy registers like a module.
"""

from __future__ import annotations

from runv import hookimpl
from runv_qemu import driver


class QemuHypervisor:
    """QEMU with accelerator ``accel`` (and CPU model ``cpu()``, None for QEMU's default)."""

    def __init__(self, name: str, accel: str, priority: int) -> None:
        self.name = name
        self.accel = accel
        self.PRIORITY = priority  # what `--hypervisor auto` ranks plugins by

    def cpu(self) -> str | None:
        return None

    @hookimpl
    def probe(self):
        return driver.missing_binary()

    @hookimpl
    def boot(self, vm):
        return driver.start(vm, plugin=self.name, accel=self.accel, cpu=self.cpu())

    @hookimpl
    def stop_vm(self, handle, force):
        return driver.stop(handle, force)

    @hookimpl
    def pause_vm(self, handle):
        driver.qmp(handle, "stop")
        return True

    @hookimpl
    def resume_vm(self, handle):
        driver.qmp(handle, "cont")
        return True

    @hookimpl
    def attach_nic(self, handle, nic):
        return driver.attach_nic(handle, nic)

    @hookimpl
    def template_shape(self, vm):
        from runv_qemu import template

        return template.shape(vm, accel=self.accel, cpu=self.cpu())

    @hookimpl
    def save_template(self, vm, directory, compress, ready):
        from runv_qemu import template

        return template.save(vm, directory, compress, ready, plugin=self.name, accel=self.accel, cpu=self.cpu())

    @hookimpl
    def restore_template(self, vm, directory, record):
        from runv_qemu import template

        return template.restore(vm, directory, record, plugin=self.name, accel=self.accel, cpu=self.cpu())
