"""The kvmtool hypervisor plugin without kvmtool (no Debian package): its command line,
probe and pty parsing, and its real boot path, jailed, up to a fake lkvm (the relay's bytes
included); a real lkvm only where one is installed. The guest agent over a serial tty through
the relay: tests/unit/test_agent.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import runv_kvmtool
from runv.api import Disk, GuestMount, Nic, RunvError, Share, connect_unix, vmmcgroup
from runv.testing import check_vm, guest_mount, kernel_args, vm_processes_in, vm_spec
from runv.testing.host import fake_program

CAPS = runv_kvmtool.CAPABILITIES


def test_kvmtool_command_line(tmp_path):
    vm = vm_spec(tmp_path, name="c1", memory_mib=512, vcpus=2, kernel_args=CAPS.agent.kernel_args() + ("quiet",),
                 shares=(Share("rootfs", Path("/b/rootfs")),), disks=(Disk("d0", Path("/img/a.raw"), readonly=True),))
    check_vm(vm, CAPS, "kvmtool")
    assert runv_kvmtool.command(vm, "/opt/lkvm") == [
        "/opt/lkvm", "run", "--name", "runv-c1", "--cpus", "2", "--mem", "512",
        "--kernel", "/var/lib/runv/kernel", "--initrd", "/var/lib/runv/initrd.img",
        "--params", "console=ttyS0 runv.agent=/dev/ttyS1 quiet",
        "--console", "serial", "--tty", "1", "--network", "mode=none", "--rng",
        "--9p", "/b/rootfs,rootfs", "--disk", "/img/a.raw,ro",
    ]
    assert runv_kvmtool.control("pause", "runv-c1") == ["lkvm", "pause", "--name", "runv-c1"]
    # the core refuses what kvmtool cannot honour before boot, in one line
    with pytest.raises(RunvError, match="cannot attach qcow2 disks") as err:
        check_vm(vm_spec(tmp_path, disks=(Disk("d0", Path("/a.qcow2"), format="qcow2"),)), CAPS, "kvmtool")
    assert "\n" not in str(err.value)
    # the agent channel is the second UART; kvmtool's disks have no serial: the guest finds them by order
    assert "runv.agent=/dev/ttyS1" in kernel_args(False, CAPS)
    assert guest_mount(GuestMount.of_disk("d0", "ext4"), vm, CAPS)["source"] == "/dev/vda"


def test_a_vm_with_a_nic_is_refused_in_one_line(tmp_path):
    """kvmtool cannot take the net plugin's open taps: the core refuses the VM before boot."""
    assert not CAPS.nics and runv_kvmtool.hypervisor_info().problems() == []
    with pytest.raises(RunvError) as err:
        check_vm(vm_spec(tmp_path, name="c1", nics=(Nic(id="eth0", fd=7, mac="02:00:00:00:00:01"),)), CAPS, "kvmtool")
    assert str(err.value).startswith("hypervisor 'kvmtool' cannot give a VM network interfaces, and the network "
                                     "namespace of container c1 has 1") and "\n" not in str(err.value)


def test_kvmtool_pty_line_is_parsed():
    match = runv_kvmtool.PTY_LINE.search("  Info: Assigned terminal 1 to pty /dev/pts/7\n")
    assert match.groups() == ("1", "/dev/pts/7")


def test_kvmtool_probe_names_the_missing_lkvm(monkeypatch, tmp_path):
    monkeypatch.setenv("RUNV_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv(runv_kvmtool.PATH_ENV, str(tmp_path / "lkvm"))
    assert "lkvm not found" in runv_kvmtool.probe()
    config = tmp_path / "config.toml"
    fake = fake_program(tmp_path / "bin-lkvm", "")
    config.write_text(f'[kvmtool]\npath = "{fake}"\n')
    monkeypatch.delenv(runv_kvmtool.PATH_ENV)
    monkeypatch.setenv("RUNV_CONFIG", str(config))
    assert runv_kvmtool.lkvm() == str(fake)


FAKE_LKVM = """# a fake lkvm: `run` makes its agent pty (in the jail's devpts), records its pid in $HOME/.lkvm as
# kvmtool keeps its sockets there, and echoes what arrives on the pty; the others log and act on the host
import fcntl, os, signal, struct, sys  # 0x80045430: TIOCGPTN
home = os.environ["HOME"] + "/.lkvm"
args = sys.argv[1:]
name = args[args.index("--name") + 1]
if args[0] == "run":
    master, slave = os.openpty()
    number = struct.unpack("I", fcntl.ioctl(master, 0x80045430, b"0000"))[0]
    with open(f"{home}/{name}.pid", "w") as f:
        f.write(str(os.getpid()))
    print("run", " ".join(args[1:]), flush=True)
    print(f"  Info: Assigned terminal 1 to pty /dev/pts/{number}", flush=True)
    while True:  # the guest's side of the UART: the relay holds the pty's other end
        os.write(master, os.read(master, 4096))
with open(f"{home}/calls", "a") as f:
    f.write(" ".join(args) + "\\n")
if args[0] == "stop":
    os.kill(int(open(f"{home}/{name}.pid").read()), signal.SIGTERM)
"""


def image(tmp_path: Path) -> dict:
    (tmp_path / "kernel").write_text("k")
    (tmp_path / "initrd").write_text("i")
    return {"kernel": tmp_path / "kernel", "initrd": tmp_path / "initrd"}


def mounts_of(pid: int) -> dict[str, str]:
    """A process's mount points and their options, as it sees them."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return {line.split()[4]: line.split()[5] for line in f}


def test_kvmtool_vm_life_with_a_fake_lkvm(tmp_path, monkeypatch):
    """The real boot path up to the binary, jailed: lkvm's / holds only its binds, each with
    its mode, it runs in its own cgroup, the relay reaches the pty lkvm made in its private
    devpts; re-attach, pause/resume and stop go through lkvm's own commands with its $HOME;
    stop takes the relay, the cgroup and the jail's mount point down. Both processes are what
    the plugin declares (HypervisorInfo.programs), so a test finds them if left behind."""
    fake = fake_program(tmp_path / "bin/lkvm", FAKE_LKVM, interpreter="/usr/bin/python3 -I")
    monkeypatch.setenv(runv_kvmtool.PATH_ENV, str(fake))
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "secret").write_text("host\n")
    spec = vm_spec(state, name="c1", kernel_args=CAPS.agent.kernel_args(),
                   shares=(Share("rootfs", tmp_path / "rootfs", readonly=True),)).evolve(**image(tmp_path))
    (tmp_path / "rootfs").mkdir()
    group = vmmcgroup.for_vm(state)
    monkeypatch.chdir(state)  # where the shim boots it
    vm = runv_kvmtool.boot(vm=spec)
    try:
        assert isinstance(vm, runv_kvmtool.KvmtoolVM) and vm.alive()
        # what the plugin declares its VMs run is what a test finds left behind: lkvm and the relay
        assert sorted(vm_processes_in(state)) == sorted([vm.pid, vm.data["relay"]])
        # the jail exec'd lkvm (same pid) with its own command line, unchanged (here behind the fake's interpreter)
        argv = open(f"/proc/{vm.pid}/cmdline").read().split("\0")[:-1]
        assert argv == ["/usr/bin/python3", "-I", *runv_kvmtool.command(spec, str(fake))]
        assert "run --name runv-c1" in (state / "console.log").read_text()
        # its / is the jail: the binds and nothing else of the host
        top = set(os.listdir(f"/proc/{vm.pid}/root"))
        assert top == {"bin", "lib", "lib64", "sbin", "usr", "dev", tmp_path.parts[1]}, top
        assert not os.path.exists(f"/proc/{vm.pid}/root{tmp_path}/secret")
        assert sorted(os.listdir(f"/proc/{vm.pid}/root{state}")) == ["console.log", "lkvm"]
        mounts = mounts_of(vm.pid)
        assert mounts["/"].startswith("ro,") and mounts["/usr"].startswith("ro,")
        assert mounts[str(tmp_path / "kernel")].startswith("ro,") and mounts[str(tmp_path / "rootfs")].startswith("ro,")
        assert mounts[str(state / "lkvm")].startswith("rw,") and mounts[str(state / "console.log")].startswith("rw,")
        assert "/dev/pts" in mounts and (not os.path.exists("/dev/kvm") or "/dev/kvm" in mounts)
        # its own cgroup, entered before the exec
        assert all(str(vm.pid) in open(procs).read().split() for procs in group.procs())
        # a later CLI call drives it with the same $HOME
        again = runv_kvmtool.hypervisor_info().vm.from_record(vm.record())
        again.pause()
        again.resume()
        assert (state / "lkvm/.lkvm/calls").read_text().splitlines() == ["pause --name runv-c1", "resume --name runv-c1"]
        # the relay serves the pty lkvm made in its private devpts
        deadline = time.monotonic() + 10
        while not (state / "agent.sock").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        with connect_unix(state / "agent.sock") as sock:
            sock.settimeout(5)
            sock.sendall(b"through the jail")
            assert sock.recv(64) == b"through the jail"
        again.stop()
        assert (state / "lkvm/.lkvm/calls").read_text().splitlines()[-1] == "stop --name runv-c1"
        assert not vm.alive() and not runv_kvmtool.KvmtoolVM("kvmtool", vm.data["relay"], vm.data["relay_start_time"]).alive()
        assert vm_processes_in(state) == []
        assert all(not d.exists() for d in group.dirs()) and not (state / "jail").exists()
    finally:
        vm.stop(force=True)


def test_kvmtool_boot_fails_with_lkvms_own_words(tmp_path, monkeypatch):
    fake = fake_program(tmp_path / "bin/lkvm", "echo '  Error: /dev/kvm: KVM_CREATE_VM failed' >&2; exit 1\n")
    monkeypatch.setenv(runv_kvmtool.PATH_ENV, str(fake))
    with pytest.raises(RunvError) as err:
        runv_kvmtool.boot(vm=vm_spec(tmp_path, name="c1").evolve(**image(tmp_path)))
    assert str(err.value) == "lkvm failed to start (exit 1): Error: /dev/kvm: KVM_CREATE_VM failed"
    assert all(not d.exists() for d in vmmcgroup.for_vm(tmp_path).dirs()) and not (tmp_path / "jail").exists()


@pytest.mark.skipif(shutil.which("lkvm") is None, reason="lkvm is not installed (kvmtool has no Debian package)")
def test_real_lkvm_lists():
    assert subprocess.run(["lkvm", "list"], capture_output=True, timeout=10).returncode == 0
