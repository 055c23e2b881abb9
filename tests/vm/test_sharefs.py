"""The VM's shares (the rootfs in the default mode, volumes, pod members' rootfs, all through
the pod directory) over virtio-fs: a virtiofsd per VM, jailed, that serves writes both ways
at once, refuses what 9p refuses a guest root, and takes the VM with it when it dies; and 9p
where runv's config file asks for it (``[qemu] shared_fs``), the same from the attacker's side."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from runv.api import vmmcgroup
from runv.testing.host import RUNV, add_python

pytestmark = pytest.mark.usefixtures("guest_image")

CAP_FSETID, CAP_SYS_ADMIN, CAP_MKNOD, CAP_SETFCAP = 4, 21, 27, 31
CAPABILITY = "0100000200200000000000000000000000000000"  # what `setcap cap_net_raw+ep` writes


def wait_for(predicate, timeout: float = 60.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while not (found := predicate()):
        if time.monotonic() > deadline:
            return found
        time.sleep(every)
    return found


def servers_of(state_dir: Path) -> list[int]:
    """The virtiofsd processes working in a container's state directory."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if open(f"/proc/{entry}/comm").read().strip() == "virtiofsd" and \
                    os.readlink(f"/proc/{entry}/cwd").startswith(str(state_dir)):
                found.append(int(entry))
        except OSError:
            continue
    return found


def status_fields(pid: int) -> dict[str, str]:
    return dict(line.rstrip("\n").split(":\t", 1) for line in open(f"/proc/{pid}/status") if ":\t" in line)


@pytest.fixture
def config_of(tmp_path):
    """``config_of(shared_fs)``: the environment of a runv whose config file asks for that
    transport (and, as the session's, no templates made in the background)."""

    def make(shared_fs: str) -> dict[str, str]:
        path = tmp_path / f"config-{shared_fs}.toml"
        path.write_text(f'[templates]\nbackground = false\n\n[qemu]\nshared_fs = "{shared_fs}"\n')
        return {**os.environ, "RUNV_CONFIG": str(path)}

    return make


def test_shares_go_over_virtio_fs_to_a_jailed_server_of_the_vm(runv, make_bundle, root, tmp_path):
    """The rootfs and a volume are virtio-fs mounts in the container; one virtiofsd serves the
    VM's pod directory, chrooted there, with no_new_privs, a seccomp filter, neither mknod
    nor setfcap nor fsetid nor sys_admin, in the VM's own cgroup; it goes with the VM."""
    volume = tmp_path / "volume"
    volume.mkdir()
    bundle = make_bundle(["sh", "-c", "grep -E ' (/|/vol) ' /proc/mounts; sleep 1000"],
                         mounts=[{"destination": "/vol", "type": "bind", "source": str(volume), "options": ["rbind"]}])
    with open(tmp_path / "out", "w") as out:
        assert runv("run", "-d", "--bundle", bundle, "s1", stdout=out).returncode == 0
    try:
        mounts = wait_for(lambda: (tmp_path / "out").read_text().strip().splitlines() or None, 30.0) or []
        assert sorted(line.split()[1:3] for line in mounts) == [["/", "virtiofs"], ["/vol", "virtiofs"]], mounts
        [server] = servers_of(root / "s1")
        assert os.readlink(f"/proc/{server}/root") == str(root / "s1/pod")
        fields = status_fields(server)
        assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
        bounding = int(fields["CapBnd"], 16)
        assert not bounding & (1 << CAP_MKNOD | 1 << CAP_SETFCAP | 1 << CAP_FSETID | 1 << CAP_SYS_ADMIN), fields["CapBnd"]
        assert server in vmmcgroup.for_vm(root / "s1").members()
    finally:
        assert runv("delete", "--force", "s1").returncode == 0
    assert wait_for(lambda: not servers_of(root), 5.0)


def test_writes_are_seen_both_ways_at_once_in_the_rootfs_and_a_volume(runv, make_bundle, tmp_path):
    """runc's semantics in the default mode: the container's writes are in the bundle and the
    volume while it runs, and the host's in the container within a poll."""
    volume = tmp_path / "volume"
    volume.mkdir()
    script = ("echo guest > /from-guest; echo guest > /vol/from-guest; "
              "i=0; while [ ! -e /vol/from-host ] || [ ! -e /from-host ]; do i=$((i+1)); [ $i -gt 600 ] && exit 9; sleep 0.05; done; "
              "cat /vol/from-host /from-host; echo polls=$i")
    bundle = make_bundle(["sh", "-c", script],
                         mounts=[{"destination": "/vol", "type": "bind", "source": str(volume), "options": ["rbind"]}])
    out = tmp_path / "out"
    with open(out, "w") as stdout:
        container = subprocess.Popen([RUNV, "--root", str(tmp_path / "state"), "run", "--bundle", str(bundle), "s2"],
                                     stdin=subprocess.DEVNULL, stdout=stdout, stderr=subprocess.STDOUT)
    try:
        def written(path):  # the shell's redirection makes the file before echo writes it
            return path.exists() and path.read_text() == "guest\n"

        assert wait_for(lambda: written(volume / "from-guest") and written(bundle / "rootfs/from-guest"), 60.0)
        assert container.poll() is None  # seen while the container runs
        assert (volume / "from-guest").read_text() == "guest\n" == (bundle / "rootfs/from-guest").read_text()
        (volume / "from-host").write_text("host-volume\n")
        (bundle / "rootfs/from-host").write_text("host-rootfs\n")
        assert container.wait(timeout=60) == 0, out.read_text()
    finally:
        if container.poll() is None:
            container.kill()
        subprocess.run([RUNV, "--root", str(tmp_path / "state"), "delete", "--force", "s2"], capture_output=True)
    lines = out.read_text().split()
    assert lines[:2] == ["host-volume", "host-rootfs"], lines
    assert int(lines[2].removeprefix("polls=")) <= 40, lines  # within 2 s (the guest caches attributes for 1 s)


@pytest.mark.parametrize("shared_fs", ["virtiofs", "9p"])
@pytest.mark.parametrize("where", ["", "/vol"])
def test_a_guest_root_cannot_make_devices_setuid_files_or_file_capabilities(runv, make_bundle, tmp_path, config_of,
                                                                           shared_fs, where):
    """From inside the container, in the rootfs and in a volume, over each transport: mknod,
    chmod u+s and g+s, a security.capability attribute are refused; chown lands on the host
    (what Podman's diff and commit read), and the share is the transport asked for."""
    volume = tmp_path / "volume"
    volume.mkdir()
    bundle = make_bundle(["true"], mounts=[{"destination": "/vol", "type": "bind", "source": str(volume), "options": ["rbind"]}])
    python = add_python(bundle / "rootfs")
    setcap = f"import os; os.setxattr('{where}/cap', 'security.capability', bytes.fromhex('{CAPABILITY}'))"
    script = (f"grep -E ' {where or '/'} ' /proc/mounts; touch {where}/suid; chmod 4755 {where}/suid; echo chmod=$?; "
              f"chmod 2755 {where}/suid; echo sgid=$?; mknod {where}/node c 1 3; echo mknod=$?; touch {where}/cap; "
              f"{python} -S -I -c \"{setcap}\" 2>/dev/null; echo setcap=$?; "
              f"touch {where}/owned; chown 1234:1234 {where}/owned; echo chown=$?")
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = ["sh", "-c", script]
    (bundle / "config.json").write_text(json.dumps(config))
    result = runv("run", "--bundle", bundle, "s3", env=config_of(shared_fs))
    assert f" {shared_fs} " in result.stdout.splitlines()[0], result.stdout
    host = volume if where else bundle / "rootfs"
    assert not (host / "node").exists(), result.stdout
    assert not os.stat(host / "suid").st_mode & 0o6000, result.stdout
    assert "security.capability" not in os.listxattr(host / "cap"), result.stdout
    for refused in ("chmod=0", "sgid=0", "mknod=0", "setcap=0"):
        assert refused not in result.stdout, result.stdout
    owned = os.stat(host / "owned")
    assert (owned.st_uid, owned.st_gid) == (1234, 1234), result.stdout


def test_a_dead_file_server_stops_the_container_saying_why_and_leaves_nothing(runv, make_bundle, root, tmp_path):
    """kill -9 of virtiofsd mid-job: the guest's requests would wait forever, so the VM is
    stopped at once, the log says why, and nothing is left after the delete."""
    log = tmp_path / "runv.log"
    bundle = make_bundle(["sh", "-c", "i=0; while true; do echo $i > /f$((i % 50)); i=$((i+1)); done"])
    container = subprocess.Popen([RUNV, "--root", str(root), "--log", str(log), "run", "--bundle", str(bundle), "s4"],
                                 stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: (bundle / "rootfs/f49").exists(), 60.0)
        [server] = servers_of(root / "s4")
        os.kill(server, signal.SIGKILL)
        code = container.wait(timeout=30)
    finally:
        if container.poll() is None:
            container.kill()
    assert code != 0
    assert "virtiofsd of share pod exited (signal 9): stopping the VM of container s4" in log.read_text()
    assert not servers_of(root)


def test_a_template_clone_and_a_pod_member_get_their_shares_over_virtio_fs(runv, make_bundle, root, tmp_path):
    """The session's template: the clone's share is hot-plugged over virtio-fs (the template
    has none: vhost-user-fs cannot be migrated); a container joining its VM gets its rootfs
    through the same server."""
    sandbox = make_bundle(["sh", "-c", "grep ' / ' /proc/mounts; sleep 1000"], name="sandbox")
    with open(tmp_path / "sandbox.out", "w") as out:
        assert runv("run", "-d", "--bundle", sandbox, "p1", stdout=out).returncode == 0
    try:
        assert json.loads((root / "p1/template.json").read_text()).get("template")  # started from the template
        assert wait_for(lambda: " virtiofs " in (tmp_path / "sandbox.out").read_text(), 30.0)
        state = json.loads(runv("state", "p1", check=True).stdout)
        member = make_bundle(["sh", "-c", "grep ' / ' /proc/mounts"], name="member",
                             linux={"namespaces": [{"type": "network", "path": f"/proc/{state['pid']}/ns/net"}]})
        result = runv("run", "--bundle", member, "p2")
        assert result.returncode == 0 and " virtiofs " in result.stdout, result.stdout + result.stderr
        assert len(servers_of(root)) == 1  # one server for the pod's VM
    finally:
        assert runv("delete", "--force", "p1").returncode == 0
