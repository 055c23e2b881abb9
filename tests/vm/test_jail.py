"""QEMU's jail, seen from outside (docs/security.md): seccomp, no_new_privs, the capability
bounding set, its own mount namespace with a root of its own, its own cgroup, death with
its shim, QEMU's sandbox killing it when it tries to spawn; and what the VM's file server
may do in the pod directory. (What a guest root gets through a share: tests/vm/test_sharefs.py.)"""

import errno
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from runv.api import vmmcgroup
from runv.testing import vm_processes_in
from runv_qemu import command, qmp

pytestmark = pytest.mark.usefixtures("guest_image")

CAPS_KEPT = 0xF  # chown, dac_override, dac_read_search, fowner


def status_fields(pid):
    fields = {}
    for line in open(f"/proc/{pid}/status"):
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return fields


def gone(pid):
    """The process ``pid`` has exited (reaped, or a zombie); it may vanish while it is read."""
    try:
        return "Z" in status_fields(pid)["State"]
    except FileNotFoundError:
        return True


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
        # the shim's PID namespace, whose init the shim is: no host process has a PID QEMU could signal
        assert os.readlink(f"/proc/{qemu}/ns/pid") == os.readlink(f"/proc/{shim}/ns/pid") != os.readlink("/proc/self/ns/pid")
        assert status_fields(shim)["NSpid"].split()[1:] == ["1"] and len(fields["NSpid"].split()) == 2
        os.kill(shim, signal.SIGKILL)
        begin = time.monotonic()
        assert wait_for(lambda: gone(qemu), 2.0)
        assert time.monotonic() - begin < 2.0
    finally:
        assert runv("delete", "--force", "j1").returncode == 0
    assert vm_processes_in(root) == []


def mounts_of(pid):
    """The process's mount points and their per-mount options, as it sees them."""
    with open(f"/proc/{pid}/mountinfo") as f:
        return {line.split()[4]: line.split()[5].split(",") for line in f}


def qemu_option(pid, name):
    argv = open(f"/proc/{pid}/cmdline").read().split("\0")
    return argv[argv.index(name) + 1]


def test_qemus_root_is_its_jail(runv, make_bundle, root, tmp_path):
    """/ is a read-only tmpfs of its own: /usr, the kernel, initrd and userland image read-only, its console
    log writable, no /etc, /home, /run, no share (the VM's file server serves them: in its
    view a rw volume is writable, a ro volume read-only), no other container's state
    directory and nothing of its own but what it opens."""
    from runv.settings import Settings
    from runv.testing.host import INITRD, KERNEL

    userland = Settings(kernel=KERNEL, initrd=INITRD).userland()  # (the image, the lean initrd QEMU's VMs boot)
    guest_files = (str(KERNEL), *(userland or (str(INITRD),)))
    assert runv("create", "--bundle", make_bundle(["true"], name="other-bundle"), "other").returncode == 0
    ro, rw = tmp_path / "ro", tmp_path / "rw"
    ro.mkdir()
    rw.mkdir()
    bundle = make_bundle(["sleep", "1000"], mounts=[
        {"destination": "/ro", "type": "bind", "source": str(ro), "options": ["bind", "ro"]},
        {"destination": "/rw", "type": "bind", "source": str(rw), "options": ["bind"]}])
    assert runv("create", "--bundle", bundle, "j0").returncode == 0
    try:
        [qemu] = vm_processes_in(root / "j0")
        top = set(os.listdir(f"/proc/{qemu}/root"))
        wanted = {"bin", "lib", "lib64", "sbin", "usr", "dev", "proc", Path(KERNEL).parts[1], root.parts[1]}
        assert top <= wanted | {tmp_path.parts[1]}, top
        assert not top & {"etc", "home", "root", "sys", "tmp" if root.parts[1] != "tmp" else "run"}, top
        assert sorted(os.listdir(f"/proc/{qemu}/root/dev")) == ["full", "null", "random", "urandom", "zero"]
        # its own descriptors (a template's clone: its RAM is the memfd the host filled, which it opens as
        # /proc/self/fd/N) and, read-only, the overcommit mode (its hot-plug memory's reserve=off)
        assert sorted(os.listdir(f"/proc/{qemu}/root/proc")) == ["self", "sys"]
        assert os.listdir(f"/proc/{qemu}/root/proc/sys/vm") == ["overcommit_memory"]
        assert not os.path.exists(f"/proc/{qemu}/root{root}/other")  # another container's state: not there
        mine = set(os.listdir(f"/proc/{qemu}/root{root}/j0"))
        assert "console.log" in mine and not mine & {"state.json", "qmp.sock", "agent.sock", "jail"}, mine
        mounts = mounts_of(qemu)
        for point in ("/", "/usr", *guest_files, "/proc/self/fd", "/proc/sys/vm/overcommit_memory"):
            assert "ro" in mounts[point] and "nosuid" in mounts[point], (point, mounts[point])
        assert "rw" in mounts[f"{root}/j0/console.log"]
        assert not any(point.startswith(f"{root}/j0/pod") for point in mounts)
        [server] = [pid for pid in vmmcgroup.for_vm(root / "j0").members() if open(f"/proc/{pid}/comm").read() == "virtiofsd\n"]
        staged = {point: options for point, options in mounts_of(server).items() if point.startswith("/j0/vol")}
        assert sorted("ro" in options for options in staged.values()) == [False, True], staged
        assert all("nodev" in options for point, options in mounts.items() if not point.startswith("/dev/"))
        outside = [p for p in mounts if not p.startswith(("/usr", "/dev/", "/proc/self/fd", "/proc/sys/vm/overcommit_memory", str(root), str(tmp_path)))
                   and p not in ("/", *guest_files) and not p.startswith(os.environ.get("RUNV_TEMPLATE_DIR", "//"))]
        assert outside == [], outside
    finally:
        assert runv("delete", "--force", "j0").returncode == 0
        assert runv("delete", "--force", "other").returncode == 0
    assert vm_processes_in(root) == []


def test_qemu_has_its_own_cgroup_with_limits_and_a_template_start_is_jailed(runv, make_bundle, root):
    """The cgroup is named from the state directory, QEMU entered it before it ran, its
    limits come from the VM; the container started from the test template (jailed too);
    delete removes the cgroup."""
    assert runv("create", "--bundle", make_bundle(["sleep", "1000"]), "j1").returncode == 0
    group = vmmcgroup.for_vm(root / "j1")
    try:
        [qemu] = vm_processes_in(root / "j1")
        lines = open(f"/proc/{qemu}/cgroup").read().splitlines()
        if group.v2:
            assert f"0::/runv/{group.name}" in lines
        else:
            assert {f"memory:/runv/{group.name}", f"pids:/runv/{group.name}"} <= {line.split(":", 1)[1] for line in lines}
        accel = qemu_option(qemu, "-accel").split(",")[0]
        assert qemu_option(qemu, "-accel") == command.accel_option(accel)  # TCG's code cache is bounded: the cgroup counts it
        boot_memory, vcpus = int(qemu_option(qemu, "-m").split("M")[0]), int(qemu_option(qemu, "-smp").split(",")[0])
        memory, pids = vmmcgroup.limits(boot_memory, vcpus, command.code_cache_mib(accel))  # at boot: nothing hot-plugged
        limit_file = "memory.max" if group.v2 else "memory.limit_in_bytes"
        assert int((group.dirs()[0] / limit_file).read_text()) == memory
        assert int((group.dirs()[-1] / "pids.max").read_text()) == pids
        assert qemu in group.members()
        note = root / "j1/template.json"  # no template when the guest image changed meanwhile
        used = note.exists() and json.loads(note.read_text()).get("template")
        if used:  # restored jailed; the session's template is private: nothing of it is in the jail (the host reads its
            # stream), while a shared template's memory file would be bound in (tests/vm/test_templates.py has both)
            assert not any(p.startswith(os.environ["RUNV_TEMPLATE_DIR"]) for p in mounts_of(qemu))
        assert runv("start", "j1").returncode == 0
        assert json.loads(runv("state", "j1", check=True).stdout)["status"] == "running"
    finally:
        assert runv("delete", "--force", "j1").returncode == 0
    assert all(not d.exists() for d in group.dirs())
    assert vm_processes_in(root) == []


@pytest.mark.parametrize("record", ["kept", "damaged"])
def test_delete_force_kills_what_is_left_in_the_vms_cgroup(runv, make_bundle, root, record):
    """A process nobody recorded (a host sleep moved into the VM's cgroup) dies with the
    container's delete --force, and the cgroup is removed; also when state.json is
    unreadable (the shim killed first: QEMU goes with it)."""
    assert runv("create", "--bundle", make_bundle(["sleep", "1000"]), "j4").returncode == 0
    group = vmmcgroup.for_vm(root / "j4")
    stray = subprocess.Popen(["sleep", "1000"])
    try:
        for procs in group.procs():
            Path(procs).write_text(str(stray.pid))
        assert stray.pid in group.members()
        assert str(stray.pid) not in (root / "j4/state.json").read_text()
        if record == "damaged":
            [qemu] = vm_processes_in(root / "j4")
            os.kill(json.loads((root / "j4/state.json").read_text())["shim_pid"], signal.SIGKILL)
            assert wait_for(lambda: gone(qemu), 2.0)
            (root / "j4/state.json").write_text("{not json")
        assert runv("delete", "--force", "j4").returncode == 0
        assert stray.wait(5) == -signal.SIGKILL
        assert all(not d.exists() for d in group.dirs())
    finally:
        stray.kill()
        stray.wait()
    assert vm_processes_in(root) == []


def test_qemus_sandbox_kills_it_when_it_tries_to_spawn(runv, make_bundle, root):
    """QMP ``netdev_add`` of a bridge makes QEMU fork its helper: its -sandbox (spawn=deny)
    kills it with SIGSYS (the kernel's audit line names clone, syscall 56); nothing is run.
    (``migrate`` to ``exec:`` would fork too, but QEMU refuses to migrate a guest with a 9p
    share mounted before it gets there.)"""
    marker = root.parent / "spawned"
    assert runv("create", "--bundle", make_bundle(["sleep", "1000"]), "j5").returncode == 0
    try:
        [qemu] = vm_processes_in(root / "j5")
        helper = {"type": "bridge", "id": "b0", "br": "runvbr0", "helper": f"/usr/bin/touch {marker}"}
        with pytest.raises(qmp.QmpError, match="closed the connection"):  # it hung up: killed
            qmp.execute(str(root / "j5/qmp.sock"), [("netdev_add", helper)])
        assert wait_for(lambda: gone(qemu), 5.0)
        assert not marker.exists()
        dmesg = subprocess.run(["dmesg"], capture_output=True, text=True)
        if dmesg.returncode == 0:  # the kernel says which call was refused
            lines = [line for line in dmesg.stdout.splitlines() if f" pid={qemu} " in line and "type=1326" in line]
            assert lines and "sig=31" in lines[-1] and "syscall=56" in lines[-1], lines  # the last: pids are reused
    finally:
        assert runv("delete", "--force", "j5").returncode == 0
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


def test_the_file_server_cannot_rename_or_plant_entries_in_the_pod_directory(runv, make_bundle, root):
    """What the VM's file server (virtiofsd, chrooted in the pod directory inside its jail)
    may do there, its view of which is all a guest reaches through the VM's one share (tried
    through /proc/<server>/root): the directory's own entries are read-only (the host unmounts
    by them: a symlink planted there must not lead it astray), the container's writable rootfs
    mounted below stays writable. QEMU itself has no pod directory at all in its jail."""
    assert runv("create", "--bundle", make_bundle(["sleep", "1000"]), "j6").returncode == 0
    try:
        [qemu] = vm_processes_in(root / "j6")
        assert not Path(f"/proc/{qemu}/root{root}/j6/pod").exists()
        [server] = [pid for pid in vmmcgroup.for_vm(root / "j6").members() if open(f"/proc/{pid}/comm").read() == "virtiofsd\n"]
        pod = Path(f"/proc/{server}/root")
        for attempt in (lambda: (pod / "j6").rename(pod / "moved"), lambda: (pod / "planted").symlink_to("/run"),
                        lambda: (pod / "j6/made").mkdir(), lambda: (pod / "j6/rootfs").rename(pod / "j6/moved")):
            with pytest.raises(OSError) as refused:
                attempt()
            assert refused.value.errno in (errno.EROFS, errno.EBUSY), refused.value
        (pod / "j6/rootfs/through-the-pod").write_text("x")
        assert (root.parent / "bundle/rootfs/through-the-pod").exists()
        assert "ro" in mounts_of(server)["/"] and "rw" in mounts_of(server)["/j6/rootfs"]
    finally:
        assert runv("delete", "--force", "j6").returncode == 0
    assert not any(point.startswith(str(root)) for point in mounts_of(os.getpid()))
