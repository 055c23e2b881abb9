"""The VMM's jail and cgroup without a VMM: the bind list built from a VM spec, the cgroup
paths and limits on fake v1 and v2 trees, a real jailed program's view of ``/``, and the
teardown killing what is left in a VM's real cgroup whatever the record says."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from runv.api import RunvError, jail, vmmcgroup
from runv.api.vm import Disk, Share, VMSpec
from runv.testing import container
from runv.testing.host import emptied, fake_cgroup_v1, fake_cgroup_v2

ROOT = os.geteuid() == 0


def spec(state: Path, **fields) -> VMSpec:
    return VMSpec(name="c1", state_dir=state, kernel=Path("/boot/k"), initrd=Path("/boot/i"),
                  agent_socket=state / "agent.sock", console_log=state / "console.log", **fields)


# ---------------------------------------------------------------- the bind list


def qcow2(path: Path, backing: str | None) -> None:
    """A qcow2 header naming ``backing`` (all the jail reads of it)."""
    name = os.fsencode(backing or "")
    header = b"QFI\xfb" + (3).to_bytes(4, "big") + (104 if backing else 0).to_bytes(8, "big") + len(name).to_bytes(4, "big")
    path.write_bytes(header.ljust(104, b"\0") + name)


def test_the_bind_list_is_the_vms_files_each_with_its_mode(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "images").mkdir()
    qcow2(tmp_path / "images/base.qcow2", None)
    qcow2(state / "disk.qcow2", "../images/base.qcow2")  # relative to the overlay's directory, as qemu-img writes it
    vm = spec(state, shares=(Share("rootfs", tmp_path / "rootfs", readonly=True), Share("vol0", state / "volumes/vol0")),
              disks=(Disk("d0", Path("disk.qcow2"), format="qcow2"),))
    binds = jail.vm_binds(vm, "/usr/bin/qemu-system-x86_64", writable=(str(state / "lkvm"),))
    by_path = {b.path: b for b in binds}
    assert by_path["/usr"] == jail.Bind("/usr")  # read-only
    for link in ("/lib", "/lib64", "/bin", "/sbin"):  # merged /usr: links, as on the host
        if os.path.islink(link):
            assert by_path[link] == jail.Bind(link, "link", target=os.readlink(link))
    assert by_path["/boot/k"] == jail.Bind("/boot/k", "file") and by_path["/boot/i"] == jail.Bind("/boot/i", "file")
    assert by_path[str(tmp_path / "rootfs")] == jail.Bind(str(tmp_path / "rootfs"), "dir", writable=False)
    assert by_path[str(state / "volumes/vol0")].writable
    # a relative disk is the state directory's; its qcow2 backing file is read-only
    assert by_path[str(state / "disk.qcow2")] == jail.Bind(str(state / "disk.qcow2"), "file", writable=True)
    assert by_path[str(tmp_path / "images/base.qcow2")] == jail.Bind(str(tmp_path / "images/base.qcow2"), "file")
    assert by_path[str(state / "console.log")].writable
    assert by_path[str(state / "lkvm")].writable
    # nothing else of the state directory: not state.json, not the sockets
    assert {p for p in by_path if p.startswith(str(state))} == {
        str(state / "volumes/vol0"), str(state / "disk.qcow2"), str(state / "console.log"), str(state / "lkvm")}


def test_a_binary_outside_usr_is_bound_alone(tmp_path):
    binary = tmp_path / "lkvm"
    binary.write_text("")
    binds = jail.system_binds(str(binary))
    assert binds[-1] == jail.Bind(str(binary), "file")
    assert str(tmp_path) not in {b.path for b in binds[:-1]}


def test_the_jail_command_carries_its_spec(tmp_path):
    argv = jail.command(["/usr/bin/true", "-x"], root=tmp_path / "jail", cwd=tmp_path, binds=[jail.Bind("/usr")],
                        cgroups=["/sys/fs/cgroup/pids/runv/x/cgroup.procs"], kvm=True)
    assert argv[-3:] == ["--", "/usr/bin/true", "-x"] and argv[1:3] == ["-S", "-I"]
    spec = json.loads(argv[-4])
    assert spec["root"] == str(tmp_path / "jail") and spec["parent"] == os.getpid()
    assert spec["binds"] == [["/usr", "dir", False, ""]] and spec["devices"][-1] == "/dev/kvm"
    assert "/dev/null" in spec["devices"] and not spec["devpts"]


@pytest.mark.skipif(not ROOT, reason="namespaces and mounts need root")
def test_a_jailed_program_sees_only_its_binds(tmp_path):
    """A real jail around ls/stat: its / holds the binds and /dev, a read-only bind refuses
    writes, a writable one takes them, the host's other files are not there."""
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    (tmp_path / "jail").mkdir()
    (tmp_path / "secret").write_text("host\n")
    script = f"ls -a /; ls /dev; touch {ro}/x && echo ro-written; touch {rw}/y && echo rw-written; cat {tmp_path}/secret"
    argv = jail.command(["/usr/bin/sh", "-c", script], root=tmp_path / "jail", cwd=tmp_path,
                        binds=jail.system_binds("/usr/bin/sh") + [jail.Bind(str(ro)), jail.Bind(str(rw), writable=True)])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    lines = result.stdout.split()
    top = lines[: lines.index("full")]
    assert set(top) - {".", ".."} == {"bin", "dev", "lib", "lib64", "sbin", "usr", tmp_path.parts[1]}, result
    assert {"null", "zero", "full", "random", "urandom"} <= set(lines) and "kvm" not in lines
    assert "ro-written" not in lines and "rw-written" in lines and "host" not in lines
    assert (rw / "y").exists() and not (ro / "x").exists()
    assert os.listdir(tmp_path / "jail") == []  # the tmpfs was the jail's own: nothing on the host


@pytest.mark.skipif(not ROOT, reason="namespaces and mounts need root")
def test_a_jail_failure_is_one_line(tmp_path):
    (tmp_path / "jail").mkdir()
    argv = jail.command(["/usr/bin/true"], root=tmp_path / "jail", cwd=tmp_path, binds=[jail.Bind(str(tmp_path / "gone"))])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert result.returncode == 126
    assert result.stderr.startswith(f"runv jail: mounting {tmp_path / 'gone'} on ") and result.stderr.count("\n") == 1


# ---------------------------------------------------------------- cgroups on fake trees


def test_the_name_is_the_state_directorys_and_unique_per_root(tmp_path):
    a, b = tmp_path / "root-a/c1", tmp_path / "root-b/c1"
    assert vmmcgroup.name(a) == vmmcgroup.name(a) != vmmcgroup.name(b)
    assert vmmcgroup.name(a).startswith("c1-") and vmmcgroup.name(tmp_path / ".making-7").startswith("making-7-")
    assert vmmcgroup.name(tmp_path / "x/../c1") == vmmcgroup.name(tmp_path / "c1")


def test_v2_layout_limits_and_removal(tmp_path):
    base = fake_cgroup_v2(tmp_path / "cg")
    group = vmmcgroup.for_vm(tmp_path / "state/c1", base)
    memory, pids = vmmcgroup.limits(256, 2)
    assert (memory, pids) == ((256 + vmmcgroup.OVERHEAD_MIB) << 20, vmmcgroup.PIDS_BASE + 4)
    group.create(memory, pids)
    directory = base / "runv" / group.name
    assert group.dirs() == [directory] and group.procs() == [str(directory / "cgroup.procs")]
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert (base / "runv/cgroup.subtree_control").read_text() == "+memory +pids"
    assert (directory / "memory.max").read_text() == str(memory) and (directory / "pids.max").read_text() == str(pids)
    for directory in group.dirs():
        emptied(directory)
    (base / "runv/cgroup.subtree_control").unlink()
    group.remove()
    assert not (base / "runv").exists()
    group.remove()  # converges


def test_v1_layout_one_directory_per_controller(tmp_path):
    base = fake_cgroup_v1(tmp_path / "cg")
    group = vmmcgroup.for_vm(tmp_path / "c1", base)
    group.create(1 << 30, 200)
    memory, pids = base / "memory/runv" / group.name, base / "pids/runv" / group.name
    assert group.dirs() == [memory, pids]
    assert (memory / "memory.limit_in_bytes").read_text() == str(1 << 30) and (pids / "pids.max").read_text() == "200"
    assert not (base / "cpu/runv").exists()
    for directory in group.dirs():
        emptied(directory)
    group.remove()
    assert not (base / "memory/runv").exists() and not (base / "pids/runv").exists()


def test_a_missing_controller_is_one_line_and_leaves_nothing(tmp_path):
    base = tmp_path / "cg"
    (base / "memory").mkdir(parents=True)
    with pytest.raises(RunvError, match=f"^no cgroup v1 pids hierarchy at {base / 'pids'}") as err:
        vmmcgroup.for_vm(tmp_path / "c1", base).create(1 << 30, 10)
    assert "\n" not in str(err.value) and list((base / "memory").iterdir()) == []
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu io\n")
    with pytest.raises(RunvError, match="lacks the memory, pids controller"):
        vmmcgroup.for_vm(tmp_path / "c1", v2).create(1 << 30, 10)


# ---------------------------------------------------------------- a real cgroup, the real teardown


@pytest.mark.skipif(not ROOT or not (vmmcgroup.BASE / "pids").is_dir() and not (vmmcgroup.BASE / "cgroup.controllers").exists(),
                    reason="needs root and a writable cgroupfs")
def test_teardown_kills_what_is_left_in_the_vms_cgroup_without_a_record(tmp_path):
    from runv.hooks import Hooks
    from runv.vm.teardown import teardown

    box = container(tmp_path)
    box.state_dir.mkdir()
    group = vmmcgroup.for_vm(box.state_dir)
    group.create(64 << 20, 16)
    stray = subprocess.Popen(["sleep", "1000"])
    try:
        for procs in group.procs():
            Path(procs).write_text(str(stray.pid))
        assert group.members() == {stray.pid}
        teardown(box, Hooks(), None, None, force=True)  # no VM, no attachment: the record names nothing
        assert stray.wait(5) == -9
        assert all(not d.exists() for d in group.dirs())
    finally:
        stray.kill()
        stray.wait()
        group.remove()
    started = time.monotonic()
    teardown(box, Hooks(), None, None, force=True)  # converges at once when nothing is there
    assert time.monotonic() - started < 1
