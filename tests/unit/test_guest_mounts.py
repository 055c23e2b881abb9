"""The guest's mounts come from the hypervisor's capabilities (runv.vm.bringup): a
storage plugin names shares by tag and disks by serial, the core turns them into 9p,
virtio-fs, a bind of the host path, or a device node; what a hypervisor cannot honour is
refused before boot, in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from runv.api import NINEP_VIRTIO, VIRTIOFS, AgentChannel, Capabilities, Disk, GuestMount, Nic, RunvError, Share, SharedFs, StorageAttachment
from runv.api.vm import SERIAL
from runv.testing import container, fakevmm, vm_spec
from runv.vm import podshare, volumes
from runv.vm.bringup import check_vm, confinement, guest_mount, kernel_args, vm_prepare_request

ROOTFS = Path("/bundles/box/rootfs")


@pytest.fixture
def vm(tmp_path):
    return vm_spec(tmp_path, shares=(Share("rootfs", ROOTFS), Share("vol0", Path("/data"), readonly=True)),
                   disks=(Disk("scratch", tmp_path / "scratch.img"), Disk("upper", tmp_path / "upper.img")))


def mount_of(entry, vm, caps):
    found = guest_mount(entry, vm, caps)
    return found["source"], found["fstype"], found["options"]


def test_a_share_over_9p_is_mounted_by_tag_with_the_transport_options(vm):
    entry = GuestMount.of_share("rootfs", options="noatime")
    assert mount_of(entry, vm, Capabilities(shared_fs=NINEP_VIRTIO)) == (
        "rootfs", "9p", "trans=virtio,version=9p2000.L,msize=262144,noatime")


def test_a_share_over_virtiofs_is_mounted_by_tag(vm):
    assert mount_of(GuestMount.of_share("vol0"), vm, Capabilities(shared_fs=VIRTIOFS)) == ("vol0", "virtiofs", "")


def test_a_share_of_a_vmm_on_the_host_kernel_is_a_bind_of_its_host_path(vm):
    assert mount_of(GuestMount.of_share("rootfs"), vm, fakevmm.CAPABILITIES) == (str(ROOTFS), "bind", "rbind")
    assert mount_of(GuestMount.of_share("vol0"), vm, Capabilities(shared_fs=SharedFs("bind", source="path"))) == (
        "/data", "bind", "")


def test_the_rest_of_the_entry_is_kept(vm):
    entry = GuestMount.of_share("vol0", readonly=True, target="/mnt/data", in_rootfs=True)
    found = guest_mount(entry, vm, Capabilities(shared_fs=VIRTIOFS))
    assert found == {"source": "vol0", "fstype": "virtiofs", "options": "", "readonly": True, "target": "/mnt/data",
                     "in_rootfs": True}


def test_a_disk_is_found_by_serial_unless_the_hypervisor_names_disks_by_order(vm):
    entry = GuestMount.of_disk("upper", "ext4", target="/run/runv/upper")
    assert mount_of(entry, vm, Capabilities()) == (SERIAL + "upper", "ext4", "")
    assert mount_of(entry, vm, Capabilities(disk_prefix="/dev/vd")) == ("/dev/vdb", "ext4", "")
    assert Capabilities(disk_prefix="/dev/xvd").disk_device(0) == "/dev/xvda"


def test_other_mounts_pass_through(vm):
    entry = GuestMount(source="overlay", fstype="overlay", options="lowerdir=/a,upperdir=/b,workdir=/c")
    assert mount_of(entry, vm, Capabilities()) == ("overlay", "overlay", "lowerdir=/a,upperdir=/b,workdir=/c")


@pytest.mark.parametrize(("entry", "caps", "message"), [
    (GuestMount.of_share("nope"), Capabilities(), "the mount of share 'nope' names no share of the VM"),
    (GuestMount.of_share("rootfs"), Capabilities(shared_fs=None), "the mount of share 'rootfs' names no share"),
    (GuestMount.of_disk("nope", "ext4"), Capabilities(disk_prefix="/dev/vd"), "the mount of disk 'nope' names no disk"),
])
def test_a_mount_of_something_the_vm_lacks_is_refused(vm, entry, caps, message):
    with pytest.raises(RunvError, match=message):
        guest_mount(entry, vm, caps)


def test_check_vm_accepts_what_the_hypervisor_can_do(vm):
    check_vm(vm, Capabilities(), "qemu")
    check_vm(vm_spec(vm.state_dir, shares=vm.shares), fakevmm.CAPABILITIES, "fake")


def test_shares_are_refused_without_a_shared_filesystem(vm):
    with pytest.raises(RunvError, match=r"^hypervisor 'xen' cannot share host directories with a VM, and container test "
                                        r"needs /bundles/box/rootfs as share 'rootfs': use .*mode=block"):
        check_vm(vm, Capabilities(shared_fs=None), "xen")


def test_disk_formats_are_checked(vm):
    with pytest.raises(RunvError, match=r"cannot attach raw disks \(.*scratch.img\); it takes qcow2$"):
        check_vm(vm, Capabilities(disk_formats=("qcow2",)), "odd")
    with pytest.raises(RunvError, match="it takes no disks: use a storage mode that shares the rootfs$"):
        check_vm(vm, fakevmm.CAPABILITIES, "fake")


def test_disks_named_by_letter_stop_at_26(tmp_path):
    many = vm_spec(tmp_path, disks=tuple(Disk(f"d{i}", tmp_path / f"{i}.img") for i in range(27)))
    check_vm(many, Capabilities(), "qemu")
    with pytest.raises(RunvError, match="names disks by letter: at most 26, not 27"):
        check_vm(many, Capabilities(disk_prefix="/dev/vd"), "kvmtool")


def test_nics_are_refused_by_a_hypervisor_without_them(tmp_path):
    with_nic = vm_spec(tmp_path, nics=(Nic("net0", 99, "02:00:00:00:00:01"),))
    check_vm(with_nic, Capabilities(), "qemu")
    with pytest.raises(RunvError, match=r"^hypervisor 'kvmtool' cannot give a VM network interfaces, and the network "
                                        r"namespace of container test has 1: "):
        check_vm(with_nic, Capabilities(nics=False), "kvmtool")


def test_the_agent_channel_reaches_the_kernel_command_line():
    assert kernel_args(False, Capabilities()) == ("panic=-1", "rdinit=/init", "quiet")
    tty = Capabilities(agent=AgentChannel.tty("/dev/hvc1"))
    assert kernel_args(True, tty) == ("panic=-1", "rdinit=/init", "runv.agent=/dev/hvc1", "runv.debug")
    assert "runv.agent=vsock:1024" in kernel_args(False, Capabilities(agent=AgentChannel.vsock(1024)))


def test_vm_prepare_request_is_built_from_the_capabilities(tmp_path):
    box = container(tmp_path, annotations={"io.runv.guest-devices": "true"})
    attachment = StorageAttachment(rootfs=GuestMount.of_share("rootfs", readonly=True),
                                   shares=(Share("rootfs", box.rootfs, readonly=True),),
                                   mounts=(GuestMount(source="tmpfs", fstype="tmpfs", target="/tmp", in_rootfs=True),))
    vm = vm_spec(tmp_path, shares=attachment.shares)  # no pod share: each share is the VM's own
    request = vm_prepare_request(box, attachment, vm, fakevmm.CAPABILITIES, confinement(box))
    assert request["rootfs"] == {"source": str(box.rootfs), "fstype": "bind", "options": "rbind", "readonly": True}
    assert request["mounts"] == [{"source": "tmpfs", "fstype": "tmpfs", "options": "", "readonly": False,
                                  "target": "/tmp", "in_rootfs": True}]
    assert request["guest_devices"] is True
    assert vm_prepare_request(box, attachment, vm, Capabilities(), confinement(box))["rootfs"]["fstype"] == "9p"


def test_a_vms_own_container_reaches_its_shares_through_the_pod_directory(tmp_path):
    """With the pod share, the rootfs and every volume are binds from /run/runv/pod/<id>/<tag>
    (the host mounts them there): the VM's devices do not depend on the volumes."""
    box = container(tmp_path, cid="box")
    staged = f"{volumes.STAGING}/vol1"
    attachment = StorageAttachment(
        rootfs=GuestMount.of_share("rootfs", readonly=True),
        mounts=(GuestMount.of_share("vol0", target="/data", in_rootfs=True),
                GuestMount.of_share("vol1", target=staged),
                GuestMount(source=f"{staged}/f", fstype="bind", target="/etc/f", in_rootfs=True),
                GuestMount.of_disk("upper", "ext4", target="/run/runv/upper")))
    vm = vm_spec(tmp_path, shares=(podshare.share(tmp_path),), disks=(Disk("upper", tmp_path / "upper.img"),))
    request = vm_prepare_request(box, attachment, vm, Capabilities(), confinement(box))
    assert request["rootfs"] == {"source": "/run/runv/pod/box/rootfs", "fstype": "bind", "options": "", "readonly": True}
    assert [(m["source"], m["fstype"], m["target"]) for m in request["mounts"]] == [
        ("pod", "9p", "/run/runv/pod"), ("/run/runv/pod/box/vol0", "bind", "/data"),
        ("/run/runv/pod/box/vol1/f", "bind", "/etc/f"), (SERIAL + "upper", "ext4", "/run/runv/upper")]
