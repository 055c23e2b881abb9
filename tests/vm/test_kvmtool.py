"""The kvmtool hypervisor plugin without kvmtool (no Debian package): its command line,
probe and pty parsing, the agent relay over a real pty, and its real boot path, jailed, up
to a fake lkvm; a real lkvm only where one is installed."""

from __future__ import annotations

import os
import pty
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from test_hypervisors import HAS_KVM, fake_tool, spec

from runv.api.errors import RunvError
from runv.api.vm import Disk, GuestMount, Share
from runv.vm.bringup import check_vm, guest_mount, kernel_args


def test_kvmtool_command_line(tmp_path):
    import runv_kvmtool

    caps = runv_kvmtool.CAPABILITIES
    vm = spec(tmp_path, memory_mib=512, vcpus=2, kernel_args=caps.agent.kernel_args() + ("quiet",),
              shares=(Share("rootfs", Path("/b/rootfs")),), disks=(Disk("d0", Path("/img/a.raw"), readonly=True),))
    check_vm(vm, caps, "kvmtool")
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
        check_vm(spec(tmp_path, disks=(Disk("d0", Path("/a.qcow2"), format="qcow2"),)), caps, "kvmtool")
    assert "\n" not in str(err.value)
    # the agent channel is the second UART; kvmtool's disks have no serial: the guest finds them by order
    assert "runv.agent=/dev/ttyS1" in kernel_args(False, caps)
    assert guest_mount(GuestMount.of_disk("d0", "ext4"), vm, caps)["source"] == "/dev/vda"


def test_kvmtool_pty_line_is_parsed():
    import runv_kvmtool

    match = runv_kvmtool.PTY_LINE.search("  Info: Assigned terminal 1 to pty /dev/pts/7\n")
    assert match.groups() == ("1", "/dev/pts/7")


def test_kvmtool_probe_names_the_missing_lkvm(monkeypatch, tmp_path):
    import runv_kvmtool

    monkeypatch.setenv("RUNV_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv(runv_kvmtool.PATH_ENV, str(tmp_path / "lkvm"))
    assert "lkvm not found" in runv_kvmtool.probe()
    config = tmp_path / "config.toml"
    fake = tmp_path / "bin-lkvm"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    config.write_text(f'[kvmtool]\npath = "{fake}"\n')
    monkeypatch.delenv(runv_kvmtool.PATH_ENV)
    monkeypatch.setenv("RUNV_CONFIG", str(config))
    assert runv_kvmtool.lkvm() == str(fake)


def test_agent_over_a_serial_tty_through_the_relay(tmp_path):
    """The kvmtool agent path without kvmtool: the guest agent on one end of a pty (as on
    ttyS1), the relay serving the other end at a unix socket, a host client pinging."""
    from runv.agent.channel import serial_channel
    from runv.agent.loop import Agent
    from runv.vm.agentclient import AgentClient

    assert serial_channel(["quiet", "runv.agent=/dev/ttyS1"]) == "/dev/ttyS1"
    master, slave = pty.openpty()
    slave_path = os.ttyname(slave)
    agent = Agent(master, rootfs="/", is_port=True)
    threading.Thread(target=agent.run, daemon=True).start()
    sock = tmp_path / "agent.sock"
    relay = subprocess.Popen([os.sys.executable, "-m", "runv_kvmtool.relay", slave_path, str(sock)])
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        client = AgentClient.connect(str(sock), lambda *a: None, lambda m: None, timeout=10, alive=lambda: None)
        assert client.ready_info["pid"] == os.getpid()
        assert client.call("ping") is not None
        client.close()
    finally:
        relay.kill()
        relay.wait()
        agent.running = False


FAKE_LKVM = """#!/usr/bin/python3 -I
# a fake lkvm: `run` makes its agent pty (in the jail's devpts), records its pid in $HOME/.lkvm as
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
    stop takes the relay, the cgroup and the jail's mount point down."""
    import runv_kvmtool
    from runv.api import vmmcgroup

    fake = tmp_path / "bin/lkvm"
    fake.parent.mkdir()
    fake_tool(fake, "").write_text(FAKE_LKVM)
    monkeypatch.setenv(runv_kvmtool.PATH_ENV, str(fake))
    state = tmp_path / "state"
    state.mkdir()
    (tmp_path / "secret").write_text("host\n")
    vm_spec = spec(state, kernel_args=runv_kvmtool.CAPABILITIES.agent.kernel_args(),
                   shares=(Share("rootfs", tmp_path / "rootfs", readonly=True),)).evolve(**image(tmp_path))
    (tmp_path / "rootfs").mkdir()
    group = vmmcgroup.for_vm(state)
    vm = runv_kvmtool.boot(vm=vm_spec)
    try:
        assert isinstance(vm, runv_kvmtool.KvmtoolVM) and vm.alive()
        # the jail exec'd lkvm (same pid) with its own command line, unchanged (here behind the fake's interpreter)
        argv = open(f"/proc/{vm.pid}/cmdline").read().split("\0")[:-1]
        assert argv == ["/usr/bin/python3", "-I", *runv_kvmtool.command(vm_spec, str(fake))]
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
        assert "/dev/pts" in mounts and (not HAS_KVM or "/dev/kvm" in mounts)
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
        from runv.api import connect_unix

        with connect_unix(state / "agent.sock") as sock:
            sock.settimeout(5)
            sock.sendall(b"through the jail")
            assert sock.recv(64) == b"through the jail"
        again.stop()
        assert (state / "lkvm/.lkvm/calls").read_text().splitlines()[-1] == "stop --name runv-c1"
        assert not vm.alive() and not runv_kvmtool.KvmtoolVM("kvmtool", vm.data["relay"], vm.data["relay_start_time"]).alive()
        assert all(not d.exists() for d in group.dirs()) and not (state / "jail").exists()
    finally:
        vm.stop(force=True)


def test_kvmtool_boot_fails_with_lkvms_own_words(tmp_path, monkeypatch):
    import runv_kvmtool
    from runv.api import vmmcgroup

    (tmp_path / "bin").mkdir()
    fake = fake_tool(tmp_path / "bin/lkvm", "echo '  Error: /dev/kvm: KVM_CREATE_VM failed' >&2; exit 1\n")
    monkeypatch.setenv(runv_kvmtool.PATH_ENV, str(fake))
    with pytest.raises(RunvError) as err:
        runv_kvmtool.boot(vm=spec(tmp_path).evolve(**image(tmp_path)))
    assert str(err.value) == "lkvm failed to start (exit 1): Error: /dev/kvm: KVM_CREATE_VM failed"
    assert all(not d.exists() for d in vmmcgroup.for_vm(tmp_path).dirs()) and not (tmp_path / "jail").exists()


@pytest.mark.skipif(shutil.which("lkvm") is None, reason="lkvm is not installed (kvmtool has no Debian package)")
def test_real_lkvm_lists():
    assert subprocess.run(["lkvm", "list"], capture_output=True, timeout=10).returncode == 0
