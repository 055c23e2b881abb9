"""QEMU's jail, seen from outside (docs/security.md): seccomp, no_new_privs, the capability
bounding set, its own mount namespace, death with its shim; and from inside, what the
shared rootfs refuses a guest root (device nodes, setuid bits)."""

import json
import os
import signal
import time

import pytest

from runv.testing import vm_processes_in

pytestmark = [pytest.mark.vm, pytest.mark.usefixtures("guest_image")]

CAPS_KEPT = 0xF  # chown, dac_override, dac_read_search, fowner


def status_fields(pid):
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_qemu_is_jailed_and_dies_with_its_shim(runv, make_bundle, root):
    bundle = make_bundle(["sleep", "1000"])
    assert runv("create", "--bundle", bundle, "j1").returncode == 0
    try:
        [qemu] = vm_processes_in(root / "j1")
        fields = status_fields(qemu)
        assert fields["Seccomp"] == "2" and fields["NoNewPrivs"] == "1"
        assert int(fields["CapEff"], 16) == CAPS_KEPT and int(fields["CapBnd"], 16) == CAPS_KEPT
        assert os.readlink(f"/proc/{qemu}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        shim = json.loads((root / "j1/state.json").read_text())["shim_pid"]
        os.kill(shim, signal.SIGKILL)
        begin = time.monotonic()
        assert wait_for(lambda: not os.path.exists(f"/proc/{qemu}") or "Z" in status_fields(qemu)["State"], 2.0)
        assert time.monotonic() - begin < 2.0
    finally:
        assert runv("delete", "--force", "j1").returncode == 0
    assert vm_processes_in(root) == []


def test_kill_stops_the_vm_from_the_host_with_137(runv, make_bundle, root):
    bundle = make_bundle(["sh", "-c", "trap '' TERM HUP INT; sleep 1000"])
    assert runv("create", "--bundle", bundle, "j2").returncode == 0
    assert runv("start", "j2").returncode == 0
    begin = time.monotonic()
    assert runv("kill", "j2", "KILL").returncode == 0
    assert wait_for(lambda: json.loads(runv("state", "j2", check=True).stdout)["status"] == "stopped", 5.0)
    assert time.monotonic() - begin < 5.0
    assert wait_for(lambda: json.loads((root / "j2/state.json").read_text()).get("exit_code") == 137, 5.0)
    assert runv("delete", "j2").returncode == 0
    assert vm_processes_in(root) == []


@pytest.mark.parametrize("where", ["", "/vol"])
def test_a_guest_root_cannot_make_device_nodes_or_setuid_files_in_a_share(runv, make_bundle, tmp_path, where):
    """In the rootfs share and in a volume: mknod, chmod u+s/g+s refused; chown still lands."""
    script = (f"touch {where}/suid; chmod 4755 {where}/suid; echo chmod=$?; chmod 2755 {where}/suid; echo sgid=$?; "
              f"mknod {where}/node c 1 3; echo mknod=$?; touch {where}/owned; chown 1234:1234 {where}/owned; echo chown=$?")
    volume = tmp_path / "volume"
    volume.mkdir()
    bundle = make_bundle(["sh", "-c", script],
                         mounts=[{"destination": "/vol", "type": "bind", "source": str(volume), "options": ["bind"]}])
    result = runv("run", "--bundle", bundle, "j3")
    host = volume if where else bundle / "rootfs"
    assert not (host / "node").exists(), result.stdout
    assert not os.stat(host / "suid").st_mode & 0o6000, result.stdout
    assert "chmod=0" not in result.stdout and "sgid=0" not in result.stdout and "mknod=0" not in result.stdout
    owned = os.stat(host / "owned")
    assert (owned.st_uid, owned.st_gid) == (1234, 1234)  # ownership still lands on the host (podman diff sees it)
