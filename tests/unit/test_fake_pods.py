"""Pods on the fake VMM (the real CLI, shims and agent, no QEMU): a container that CRI
annotations name as a pod member joins its sandbox's VM; and the pod directory the host
fills holds against what a hostile guest leaves in it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_fake_lifecycle import status, wait_for

from runv.api.errors import RunvError
from runv.api.vm import Share
from runv.testing import mounts_under as all_mounts_under
from runv.testing import vm_processes_in
from runv.vm import podshare

MEMBER = {"io.kubernetes.cri.container-type": "container", "io.kubernetes.cri.sandbox-id": "sandbox"}


def mounts_under(path) -> list[tuple[str, str]]:
    """(mount point, its options) under ``path``."""
    with open("/proc/self/mountinfo") as f:
        fields = [line.split() for line in f]
    return [(f[4], f[5]) for f in fields if f[4].startswith(str(path))]


def test_an_annotated_member_joins_the_sandboxes_vm(fake, make_bundle, root):
    sandbox = make_bundle(["sleep", "1000"], name="sandbox", annotations={"io.kubernetes.cri.container-type": "sandbox"})
    member = make_bundle(["sh", "-c", "cat /marker; exec sleep 1000"], name="member", annotations=MEMBER)
    (member / "rootfs/marker").write_text("the member's rootfs\n")
    assert fake("run", "-d", "--bundle", sandbox, "sandbox").returncode == 0
    created = fake("create", "--bundle", member, "member")
    assert created.returncode == 0, created.stderr
    assert json.loads((root / "member/state.json").read_text())["sandbox"] == "sandbox"
    assert len(vm_processes_in(root)) == 1  # the sandbox's agent serves both
    assert fake("start", "member").returncode == 0
    assert fake("exec", "member", "cat", "/marker").stdout == "the member's rootfs\n"
    assert fake("exec", "sandbox", "cat", "/marker").returncode != 0
    shim = json.loads((root / "sandbox/state.json").read_text())["shim_pid"]
    # the member's rootfs is mounted in the pod directory in the sandbox shim's mount namespace, never the host's
    assert not mounts_under(root / "sandbox/pod/member")
    assert all_mounts_under(root / "sandbox/pod/member", [shim]) == [str(root / "sandbox/pod/member/rootfs")]

    fake("kill", "member", "KILL", check=True)
    wait_for(lambda: status(fake, "member") == "stopped", what="the member to stop")
    assert status(fake, "sandbox") == "running"
    assert fake("delete", "member").returncode == 0
    assert not all_mounts_under(root / "sandbox/pod/member")
    assert fake("delete", "--force", "sandbox").returncode == 0
    assert not vm_processes_in(root) and not all_mounts_under(root)


def test_a_member_of_a_missing_sandbox_fails_in_one_line(fake, make_bundle, root):
    member = make_bundle(["true"], name="member", annotations=MEMBER)
    result = fake("create", "--bundle", member, "member")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"runv: container member belongs in the VM of container sandbox (its annotation io.kubernetes.cri.sandbox-id), "
        f"which does not exist under {root}: create that container with runv first"]
    assert not (root / "member").exists()


@pytest.fixture
def pod_dir(tmp_path):
    """A sandbox's pod directory as its shim makes it (a shared tmpfs), unmounted after."""
    state = tmp_path / "sandbox"
    state.mkdir()
    podshare.make_dir(state)
    yield state
    podshare.detach(state, "m1")
    os.system(f"umount -l {state / podshare.TAG}")


def attach(pod_dir, member, shares):
    """What a shim does: each share's mount tree copied, then mounted in the pod directory."""
    trees = podshare.copies([Share(tag, Path(source), readonly) for tag, source, readonly in shares])
    try:
        podshare.attach(pod_dir, member, trees)
    finally:
        for _, tree in trees:
            os.close(tree)


def test_shares_reach_the_pod_directory_nodev_nosuid(pod_dir, tmp_path):
    source = tmp_path / "rootfs"
    source.mkdir()
    (source / "file").write_text("hi")
    attach(pod_dir, "m1", [["rootfs", str(source), False], ["vol0", str(source), True]])
    options = dict(mounts_under(pod_dir / "pod/m1"))
    assert set(options) == {str(pod_dir / "pod/m1/rootfs"), str(pod_dir / "pod/m1/vol0")}
    assert {"nodev", "nosuid", "rw"} <= set(options[str(pod_dir / "pod/m1/rootfs")].split(","))
    assert {"nodev", "nosuid", "ro"} <= set(options[str(pod_dir / "pod/m1/vol0")].split(","))
    assert (pod_dir / "pod/m1/rootfs/file").read_text() == "hi"
    podshare.detach(pod_dir, "m1")
    assert not mounts_under(pod_dir / "pod/m1") and not (pod_dir / "pod/m1").exists()


def test_a_symlink_the_guest_left_in_the_pod_directory_is_not_followed(pod_dir, tmp_path):
    target = tmp_path / "host-dir"  # where a hostile guest would have the host mount the member's rootfs
    target.mkdir()
    source = tmp_path / "rootfs"
    source.mkdir()
    (pod_dir / "pod/m1").symlink_to(target)
    with pytest.raises(RunvError, match="already holds 'm1'"):
        attach(pod_dir, "m1", [["rootfs", str(source), False]])
    assert not mounts_under(target) and not mounts_under(pod_dir / "pod")[1:]
    assert Path(pod_dir / "pod/m1").is_symlink()  # left as it was, to the pod's own harm only
    os.unlink(pod_dir / "pod/m1")
