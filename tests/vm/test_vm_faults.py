"""Every crash and race in a container's life converges to nothing left, with QEMU: the VMM
or the shim killed -9, the ``runv create`` CLI killed -9 at each moment a caller can see
(runv.testing.faults), ``delete --force`` racing a create at those moments, two ``delete
--force`` at once, ``delete`` of a creating container refused. Each test ends with no QEMU,
shim, mount, loop or dm device, or state directory left (:func:`nothing_left`); these
containers have no network, so no tap or namespace is made."""

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from runv.api import vmmcgroup
from runv.testing import alive, leftovers_in, mounts_under, process_tree, vm_processes_in
from runv.testing.faults import MOMENTS, hold_in_hooks, record, unrecorded_vms, wait_for_moment, wait_status
from runv.testing.host import RUNV

pytestmark = pytest.mark.usefixtures("guest_image")

BOUND = 60.0  # seconds any create or delete here may take (TCG on a loaded 2-core host)
KILL_MOMENTS = [m for m in MOMENTS if m != "unrecorded"]  # under a second with a template: tested on the fake VMM


@pytest.fixture
def background(root, tmp_path):
    """``background(*args)``: ``runv --root ROOT ARGS`` started, not waited for; its stderr
    goes to a file (a shim keeps its create's stderr open: a pipe would never end)."""
    count = iter(range(1000))

    def start(*args):
        with open(tmp_path / f"stderr.{next(count)}", "w+") as err:
            process = subprocess.Popen([RUNV, "--root", str(root), *map(str, args)], stdin=subprocess.DEVNULL,
                                       stdout=subprocess.DEVNULL, stderr=err)
        process.stderr_path = err.name
        return process

    return start


def finished(process, timeout=BOUND):
    """Waits for a background command (within the bound: no hang); returns (code, stderr)."""
    process.wait(timeout=timeout)
    with open(process.stderr_path) as err:
        return process.returncode, err.read()


def nothing_left(runv, root, tmp_path):
    assert leftovers_in(tmp_path) == []  # QEMU, shims, hooks, mounts under the test's directories
    with open("/proc/self/mountinfo") as f:
        assert [line for line in f if str(root) in line] == []
    assert not root.exists() or os.listdir(root) == []
    loops = subprocess.run(["losetup", "--list", "--noheadings", "--output", "BACK-FILE"], capture_output=True, text=True)
    assert str(root) not in loops.stdout
    dm = subprocess.run(["dmsetup", "ls"], capture_output=True, text=True)
    assert "runv-ct-box" not in dm.stdout
    assert json.loads(runv("list", "--format", "json", check=True).stdout) == []


def started(runv, make_bundle):
    assert runv("create", "--bundle", make_bundle(["sleep", "1000"]), "box").returncode == 0
    assert runv("start", "box").returncode == 0


def test_the_vmm_killed_leaves_a_stopped_container_with_137(runv, make_bundle, root, tmp_path):
    started(runv, make_bundle)
    [qemu] = vm_processes_in(root / "box")
    os.kill(qemu, signal.SIGKILL)
    wait_status(runv, "box", "stopped", BOUND)
    deadline = time.monotonic() + BOUND
    while record(root / "box").get("exit_code") is None:  # the shim writes it as it stops
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert record(root / "box")["exit_code"] == 137
    assert runv("delete", "box").returncode == 0
    nothing_left(runv, root, tmp_path)


def test_the_shim_killed_takes_its_vm_and_delete_needs_no_force(runv, make_bundle, root, tmp_path):
    started(runv, make_bundle)
    [qemu] = vm_processes_in(root / "box")
    os.kill(record(root / "box")["shim_pid"], signal.SIGKILL)
    wait_status(runv, "box", "stopped", timeout=5)
    deadline = time.monotonic() + 2
    while vm_processes_in(root / "box"):  # the parent-death signal
        assert time.monotonic() < deadline, "QEMU outlived its shim by 2 s"
        time.sleep(0.05)
    assert runv("delete", "box").returncode == 0
    nothing_left(runv, root, tmp_path)


def kill_create_at(moment, background, bundle, root) -> None:
    """``runv create`` of container ``box`` from ``bundle``, killed -9 at ``moment``."""
    create = background("create", "--bundle", bundle, "box")
    wait_for_moment(moment, root / "box", bundle, create, BOUND)
    create.kill()
    create.wait()


@pytest.mark.parametrize("moment", KILL_MOMENTS)
def test_create_killed_at_each_moment_is_deleted_with_nothing_left(runv, background, make_bundle, root, tmp_path, moment):
    kill_create_at(moment, background, hold_in_hooks(make_bundle(["sleep", "1000"])), root)
    state = runv("state", "box")
    if state.returncode == 0:  # a create that died leaves a container that state and list show
        assert json.loads(state.stdout)["status"] in ("creating", "created", "stopped")
        assert [s["id"] for s in json.loads(runv("list", "--format", "json", check=True).stdout)] == ["box"]
    else:
        assert state.stderr == "runv: container box does not exist\n"
    assert runv("delete", "--force", "box", timeout=BOUND).returncode == 0
    nothing_left(runv, root, tmp_path)


def test_a_create_killed_while_booting_stops_its_container_by_itself(runv, background, make_bundle, root, tmp_path):
    """Its caller never got the container's pid: the shim stops the VM (137); `delete`
    without --force then removes the stopped container."""
    kill_create_at("booting", background, make_bundle(["sleep", "1000"]), root)
    wait_status(runv, "box", "stopped", BOUND)
    assert vm_processes_in(root / "box") == []
    assert record(root / "box")["exit_code"] == 137
    assert runv("delete", "box").returncode == 0
    nothing_left(runv, root, tmp_path)


@pytest.mark.parametrize("moment", KILL_MOMENTS)
def test_delete_force_racing_create_converges(runv, background, make_bundle, root, tmp_path, moment):
    bundle = hold_in_hooks(make_bundle(["sleep", "1000"]))
    create = background("create", "--bundle", bundle, "box")
    wait_for_moment(moment, root / "box", bundle, create, BOUND)
    delete = background("delete", "--force", "box")
    assert finished(delete) == (0, "")
    assert unrecorded_vms(root) == []  # no VM without a state directory pointing at it
    code, err = finished(create)
    assert code == 0 or err == "runv: container box was deleted while it was being created\n", err
    assert unrecorded_vms(root) == []
    assert runv("delete", "--force", "box", timeout=BOUND).returncode == 0
    nothing_left(runv, root, tmp_path)


def test_delete_of_a_creating_container_is_refused_in_one_line(runv, background, make_bundle, root, tmp_path):
    bundle = hold_in_hooks(make_bundle(["sleep", "1000"]))
    create = background("create", "--bundle", bundle, "box")
    wait_for_moment("hooks", root / "box", bundle, create, BOUND)
    refused = runv("delete", "box")
    assert (refused.returncode, refused.stderr) == (1, "runv: cannot delete container box that is being created (use --force)\n")
    assert vm_processes_in(root / "box")  # refused means untouched
    assert finished(create) == (0, "")
    assert runv("delete", "--force", "box").returncode == 0
    nothing_left(runv, root, tmp_path)


def test_two_delete_force_at_once_both_succeed(runv, background, make_bundle, root, tmp_path):
    started(runv, make_bundle)
    deletes = [background("delete", "--force", "box") for _ in range(2)]
    assert [finished(delete) for delete in deletes] == [(0, ""), (0, "")]
    nothing_left(runv, root, tmp_path)


def test_every_process_of_a_container_killed_leaves_no_mount_and_spares_another_root(runv, make_bundle, root, tmp_path):
    """kill -9 of a container's shim, VMM and file server at once (the host's OOM killer, a
    `pkill -9`): no mount of its rootfs or volume is left in any namespace (they were only
    ever in its shim's); with its state root emptied, runv starts afresh there and the next
    container that keeps files on disk reclaims the dead one's; a container of another root
    runs on untouched."""
    other = [RUNV, "--root", str(tmp_path / "other-root")]
    with open(tmp_path / "other.out", "w") as out:  # a shim keeps its create's stdio: files, not pipes
        subprocess.run([*other, "run", "-d", "--bundle", make_bundle(["sleep", "1000"], name="other"), "other"],
                       stdout=out, stderr=out, check=True)
    try:
        volume = tmp_path / "volume"
        volume.mkdir()
        (volume / "file").write_text("kept\n")
        mounts = [{"destination": "/data", "type": "bind", "source": str(volume), "options": ["rbind", "rw"]}]
        on_disk = {"io.runv.storage.mode": "overlay"}  # an upper layer on disk, in the container's own directory
        bundle = make_bundle(["sleep", "1000"], mounts=mounts, annotations=on_disk)
        runv("run", "-d", "--bundle", bundle, "box", check=True)
        shim, files = record(root / "box")["shim_pid"], Path(record(root / "box")["attachment"]["data"]["dir"])
        assert (files / "upper.img").is_file()
        assert len(mounts_under(root, [shim])) >= 3  # the pod directory, the rootfs and the volume in it, ...
        assert mounts_under(root, [os.getpid()]) == []  # ... in the shim's mount namespace, never the host's
        victims = process_tree(shim)
        assert len(victims) >= 3  # the shim, QEMU, virtiofsd (and the jails' helpers)
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):  # gone with its parent already
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + BOUND
        while any(map(alive, victims)):
            assert time.monotonic() < deadline, "a killed process still runs"
            time.sleep(0.05)
        assert mounts_under(root) == [] and mounts_under(bundle) == [] and mounts_under(volume) == []
        shutil.rmtree(root)  # what a reboot or an admin does to /run/runv
        assert runv("list", "-q", check=True).stdout == ""
        again = make_bundle(["cat", "/data/file"], name="again", mounts=mounts)
        orphans = [d for d in vmmcgroup.Cgroup(vmmcgroup.name(root / "box")).dirs() if d.exists()]
        assert orphans  # the VMM's cgroup is what the kill left: the next VM of that name takes it over
        assert runv("run", "--bundle", again, "box").stdout == "kept\n"  # the same id, the same volume, afresh
        assert not [d for d in orphans if os.path.exists(d)]  # and removes it (others, a minute old: vmmcgroup.sweep)
        assert files.is_dir()  # the dead container's upper layer, named for a state directory now gone
        assert runv("run", "--bundle", make_bundle(["true"], name="next", annotations=on_disk), "next").returncode == 0
        assert not files.exists()  # the next container that keeps files on disk reclaimed it
        assert subprocess.run([*other, "exec", "other", "true"], capture_output=True).returncode == 0
    finally:
        subprocess.run([*other, "delete", "--force", "other"], capture_output=True)
