"""runv hypervisor plugin ``tcg``: QEMU's software CPU emulation, no KVM needed.

Slow compared with KVM, but it boots the same guest on any x86-64 host with QEMU, so it
is the fallback ``--hypervisor auto`` takes when KVM is not usable. Its hooks are
runv-qemu's (:class:`runv_qemu.hypervisor.QemuHypervisor`) with ``accel=tcg``.
"""

from runv_qemu.hypervisor import QemuHypervisor

hypervisor = QemuHypervisor(name="tcg", accel="tcg", priority=10)  # below KVM-backed hypervisors
