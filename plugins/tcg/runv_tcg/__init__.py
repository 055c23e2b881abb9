"""runv hypervisor plugin ``tcg``: QEMU's software CPU emulation, no KVM needed.

Slow compared with KVM, but it boots the same guest on any x86-64 host with QEMU, so it
is the fallback ``--hypervisor auto`` takes when KVM is not usable.
"""

from runv import hookimpl
from runv_qemu import driver

PRIORITY = 10  # below KVM-backed hypervisors: chosen by `auto` only when they cannot run


@hookimpl
def probe():
    return driver.missing_binary()


@hookimpl
def boot(vm):
    return driver.start(vm, plugin="tcg", accel="tcg")


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

    return template.shape(vm, accel="tcg", cpu=None)


@hookimpl
def save_template(vm, directory, compress, ready):
    from runv_qemu import template

    return template.save(vm, directory, compress, ready, plugin="tcg", accel="tcg", cpu=None)


@hookimpl
def restore_template(vm, directory, record):
    from runv_qemu import template

    return template.restore(vm, directory, record, plugin="tcg", accel="tcg", cpu=None)
