"""runv hypervisor plugin ``qemu``: QEMU with KVM acceleration.

The same driver as ``tcg`` (:mod:`runv_qemu.driver`), with ``accel=kvm`` and the host's
CPU model. ``--hypervisor auto`` prefers it (``PRIORITY`` above tcg's) whenever the KVM
probe (:mod:`runv_qemu.kvm`) finds hardware virtualization that can boot a stock kernel.

``RUNV_QEMU_CPU`` overrides the ``-cpu`` model (default ``host``).
"""

import os

from runv import hookimpl
from runv.errors import RunvError
from runv_qemu import driver, kvm

PRIORITY = 20  # above tcg (10): KVM when it works, TCG otherwise
CPU_ENV = "RUNV_QEMU_CPU"


def cpu() -> str:
    return os.environ.get(CPU_ENV, "host")


@hookimpl
def probe():
    return driver.missing_binary() or kvm.verdict()["reason"]


@hookimpl
def boot(vm):
    handle = driver.start(vm, plugin="qemu", accel="kvm", cpu=cpu())
    try:  # QMP answers only once QEMU has set up its vCPUs with KVM (where -cpu host can abort)
        driver.qmp(handle, "query-status")
    except RunvError:
        driver.stop(handle, force=True)
        raise RunvError(f"{driver.BINARY} with KVM exited at start: {driver._last_words(vm.console_log)}") from None
    return handle


@hookimpl
def stop_vm(handle, force):
    return driver.stop(handle, force)


@hookimpl
def pause_vm(handle):
    driver.qmp(handle, "stop")
    return True


@hookimpl
def resume_vm(handle):
    driver.qmp(handle, "cont")
    return True


@hookimpl
def attach_nic(handle, nic):
    return driver.attach_nic(handle, nic)


@hookimpl
def template_shape(vm):
    from runv_qemu import template

    return template.shape(vm, accel="kvm", cpu=cpu())


@hookimpl
def save_template(vm, directory, compress, ready):
    from runv_qemu import template

    return template.save(vm, directory, compress, ready, plugin="qemu", accel="kvm", cpu=cpu())


@hookimpl
def restore_template(vm, directory, record):
    from runv_qemu import template

    return template.restore(vm, directory, record, plugin="qemu", accel="kvm", cpu=cpu())
