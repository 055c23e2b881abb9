"""Volumes (the spec's mounts): the plan that shares each directory or file with the guest,
their staging on the host, and what is refused, in one line, before any VM."""

from __future__ import annotations

import os

import pytest

from runv.api import NINEP_VIRTIO, VIRTIOFS, Capabilities, GuestMount
from runv.api.errors import RunvError
from runv.api.frozen import to_json as vm_json
from runv.testing import vm_processes_in, vm_spec
from runv.vm import bringup, volumes


def test_volume_plan_shares_dirs_and_files_alone(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "f").write_text("x")
    staging = tmp_path / "state/volumes"
    shares, mounts, host_binds = volumes.plan([
        {"destination": "/data", "type": "bind", "source": str(tmp_path / "d"), "options": ["rbind", "ro", "rprivate"]},
        {"destination": "/etc/f", "type": "none", "source": str(tmp_path / "f"), "options": ["bind", "nosuid"]},
        {"destination": "/proc/kcore", "type": "bind", "source": "/dev/null", "options": ["bind", "ro"]},
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["mode=755"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "size=65536k", "tmpcopyup"]},
    ], staging)
    # each is shared from its staging place (bound there by descriptor); a file from a directory of its own
    assert [(s.tag, s.path, s.readonly) for s in shares] == [("vol0", staging / "vol0", True), ("vol1", staging / "vol1", False)]
    assert host_binds == ((tmp_path / "d", staging / "vol0"), (tmp_path / "f", staging / "vol1/f"))
    by_target = {m.target: m for m in mounts}
    assert by_target["/data"] == GuestMount.of_share("vol0", options="", readonly=True, target="/data", in_rootfs=True)
    # the core serves the share as the hypervisor's capabilities say (9p for QEMU, virtio-fs, ...)
    vm = vm_spec(tmp_path / "state", shares=shares)
    assert bringup.guest_mount(by_target["/data"], vm, Capabilities(shared_fs=NINEP_VIRTIO)) == {
        **vm_json(by_target["/data"]), "source": "vol0", "fstype": "9p", "options": NINEP_VIRTIO.options}
    assert bringup.guest_mount(by_target["/data"], vm, Capabilities(shared_fs=VIRTIOFS))["fstype"] == "virtiofs"
    assert by_target["/run/runv/volumes/vol1"].in_rootfs is False
    assert by_target["/etc/f"].fstype == "bind" and by_target["/etc/f"].source == "/run/runv/volumes/vol1/f"
    assert by_target["/etc/f"].options == "nosuid"
    # the host's /dev is never shared: masked paths get the guest's own /dev/null
    assert by_target["/proc/kcore"].source == "/dev/null" and by_target["/proc/kcore"].fstype == "bind"
    assert all("/dev" != str(s.path) for s in shares)
    assert "/proc" not in by_target and "/dev" not in by_target  # the agent mounts those itself
    assert by_target["/dev/shm"].options == "nosuid,size=65536k"


def test_volume_files_are_staged_and_released(tmp_path):
    (tmp_path / "f").write_text("host\n")
    state = tmp_path / "state"
    _, _, host_binds = volumes.plan([{"destination": "/f", "type": "bind", "source": str(tmp_path / "f")}], state / "volumes")
    volumes.stage(host_binds)
    try:
        assert (state / "volumes/vol0/f").read_text() == "host\n"
        assert os.listdir(state / "volumes/vol0") == ["f"]
    finally:
        volumes.release(state)
    assert (state / "volumes/vol0/f").read_text() == ""  # unmounted: the empty mount point is left
    assert str(state) not in open("/proc/self/mountinfo").read()


@pytest.mark.parametrize(
    "entry, words",
    [
        ({"destination": "/x", "type": "nfs", "source": "srv:/x"}, "mount type 'nfs' at /x is not supported"),
        ({"destination": "/x", "type": "bind", "source": "/does/not/exist", "options": ["bind"]}, "does not exist"),
        ({"destination": "x", "type": "tmpfs"}, "destination must be an absolute path"),
        ({"destination": "/x", "type": "bind", "source": "rel", "options": ["bind"]}, "absolute host path"),
        ({"destination": "/x", "type": "bind", "source": "/dev/kvm", "options": ["bind"]}, "a VM has only its own devices"),
    ],
)
def test_volume_plan_refuses_what_it_cannot_honour(entry, words, tmp_path):
    with pytest.raises(RunvError, match=words) as info:
        volumes.plan([entry], tmp_path)
    assert "\n" not in str(info.value) and "mounts[0]" in str(info.value)


def test_unsupported_mount_type_refused_at_create(fake, make_bundle, root):
    mounts = [{"destination": "/x", "type": "nfs", "source": "server:/export", "options": []}]
    result = fake("create", "--bundle", make_bundle(["true"], mounts=mounts), "nfs")
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert "mounts[0]: mount type 'nfs' at /x is not supported" in result.stderr
    assert not (root / "nfs").exists()
    assert not vm_processes_in(root)
