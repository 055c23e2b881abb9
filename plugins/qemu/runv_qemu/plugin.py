"""runv hypervisor plugin ``qemu``: QEMU with KVM acceleration.

The same driver and hooks as ``tcg`` (:mod:`runv_qemu.hypervisor`), with ``accel=kvm``
and the host's CPU model. ``--hypervisor auto`` prefers it (priority above tcg's)
whenever the KVM probe (:func:`runv.api.kvm_verdict`) finds hardware virtualization that
can boot a stock kernel.

``RUNV_QEMU_CPU`` overrides the ``-cpu`` model (default ``host``).
"""

import os

from runv.api import RunvError, hookimpl, kvm_verdict
from runv_qemu import driver
from runv_qemu.hypervisor import QemuHypervisor

CPU_ENV = "RUNV_QEMU_CPU"


class KvmHypervisor(QemuHypervisor):
    def cpu(self) -> str:
        return os.environ.get(CPU_ENV, "host")

    @hookimpl
    def probe(self):
        return driver.missing_binary() or kvm_verdict()["reason"]

    @hookimpl
    def boot(self, vm):
        booted = super().boot(vm)
        try:  # QMP answers only once QEMU has set up its vCPUs with KVM (where -cpu host can abort)
            booted.qmp("query-status")
        except RunvError:
            booted.stop(force=True)
            raise RunvError(f"{driver.BINARY} with KVM exited at start: {vm.last_words()}") from None
        return booted


hypervisor = KvmHypervisor(name="qemu", accel="kvm", priority=20)  # above tcg: KVM when it works
