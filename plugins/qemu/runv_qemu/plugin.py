"""runv hypervisor plugin ``qemu``: QEMU with KVM acceleration.

The same driver and hooks as ``tcg`` (:mod:`runv_qemu.hypervisor`), with ``accel=kvm``
and the host's CPU model. ``--hypervisor auto`` prefers it (priority above tcg's)
whenever the KVM probe (:func:`runv.api.kvm_verdict`) finds hardware virtualization that
can boot a stock kernel.

``RUNV_QEMU_CPU`` overrides the ``-cpu`` model (default ``host``).
"""

import os
import time

from runv.api import RunvError, hookimpl, kvm_verdict
from runv_qemu import command, driver
from runv_qemu.hypervisor import QemuHypervisor

CPU_ENV = "RUNV_QEMU_CPU"
QMP_RETRY = 0.05  # seconds between looks at a QEMU whose QMP did not answer yet


class KvmHypervisor(QemuHypervisor):
    def cpu(self) -> str:
        return os.environ.get(CPU_ENV, "host")

    @hookimpl
    def probe(self):
        return command.missing_binary() or kvm_verdict()["reason"]

    @hookimpl
    def boot(self, vm):
        """QEMU's start, and then its first QMP answer: QMP answers only once QEMU has set
        up its vCPUs with KVM, where KVM can refuse the CPU model and QEMU exits. A QMP
        failure alone proves nothing (QEMU may be between bind and listen, or still writing
        its error as it exits): look again until QEMU answers or is gone, and quote it then."""
        booted = super().boot(vm)
        deadline = time.monotonic() + driver.START_TIMEOUT
        while True:
            try:
                booted.qmp("query-status")
                return booted
            except RunvError as exc:
                if not booted.alive():
                    booted.stop(force=True)  # gone already: this removes its cgroup and jail mount point
                    raise RunvError(f"{command.BINARY} with KVM exited at start: {vm.last_words()}") from None
                if time.monotonic() > deadline:
                    booted.stop(force=True)
                    raise RunvError(f"{command.BINARY} with KVM did not answer QMP within {driver.START_TIMEOUT:.0f} s "
                                    f"({exc}): {vm.last_words()}") from None
            time.sleep(QMP_RETRY)


hypervisor = KvmHypervisor(name="qemu", accel="kvm", priority=20)  # above tcg: KVM when it works
