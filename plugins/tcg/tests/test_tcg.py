"""The tcg hypervisor plugin is the qemu plugin's hooks and VM with another accelerator: what
tests/vm boots (QEMU without KVM) is tested there; here, that the two declarations agree."""

import runv_qemu.plugin
import runv_tcg
from runv_qemu.driver import QemuVM
from runv_qemu.hypervisor import QemuHypervisor


def test_tcg_reuses_the_qemu_plugins_hooks():
    assert type(runv_tcg.hypervisor) is QemuHypervisor
    assert isinstance(runv_qemu.plugin.hypervisor, QemuHypervisor)
    qemu, tcg = runv_qemu.plugin.hypervisor.hypervisor_info(), runv_tcg.hypervisor.hypervisor_info()
    assert qemu.priority > tcg.priority
    assert qemu.vm is tcg.vm and issubclass(qemu.vm, QemuVM) and qemu.capabilities == tcg.capabilities
    assert qemu.problems() == [] and tcg.problems() == []
