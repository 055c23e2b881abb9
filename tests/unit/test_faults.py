"""Every crash and race in a container's life converges to nothing left, on the fake VMM
(tests/vm/test_vm_faults.py does the same with QEMU): the VMM or the shim killed -9, the
``runv create`` CLI killed -9 at each observable moment, ``delete --force`` racing a create
at those moments, two ``delete --force`` at once. Each test ends with no process, mount or
state directory left (the ``fake`` fixture's own check, plus :func:`nothing_left`)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time

import pytest

from runv.records import Store
from runv.testing import fake_distribution, leftovers_in, mounts_under, process_tree, with_path
from runv.testing.faults import MOMENTS, hold_in_hooks, unrecorded_vms, wait_for_moment, wait_status
from runv.testing.host import RUNV

SLOW = '''
"""The fake VMM, holding its boot for a while once the agent runs (the window in which a
shim has a VMM it has not recorded yet)."""
import time

from runv.api import hookimpl
from runv.testing import fakevmm
from runv.testing.fakevmm import hypervisor_info, probe  # noqa: F401 - the plugin's hooks


@hookimpl
def boot(vm):
    booted = fakevmm.boot(vm)
    time.sleep(3)
    return booted
'''
BOUND = 20.0  # seconds any create or delete here may take


@pytest.fixture
def slow(fake, tmp_path):
    """``fake`` with the hypervisor ``slow`` installed too (pass ``--hypervisor slow``)."""
    site = fake_distribution(tmp_path / "slow", "runv-slowvmm", {"runv.hypervisors": {"slow": "slowvmm"}},
                             {"slowvmm.py": SLOW})
    fake.env = with_path(fake.env, site)
    return fake


@pytest.fixture
def background(root, guest_files, tmp_path):
    """``background(fake, *args)``: ``fake(*args)`` started, not waited for; its stderr goes
    to a file, read by :func:`stderr` (a shim keeps its create's stderr open: a pipe would
    never end)."""
    kernel, initrd = guest_files
    count = iter(range(1000))

    def start(fake, *args):
        argv = [RUNV, "--root", str(root), "--kernel", str(kernel), "--initrd", str(initrd), "--hypervisor", "fake",
                *map(str, args)]
        with open(tmp_path / f"stderr.{next(count)}", "w+") as err:
            process = subprocess.Popen(argv, env=fake.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
        process.stderr_path = err.name
        return process

    return start


def stderr(process):
    with open(process.stderr_path) as err:
        return err.read()


def nothing_left(fake, root, tmp_path):
    assert leftovers_in(tmp_path) == []
    assert not root.exists() or os.listdir(root) == []
    assert json.loads(fake("list", "--format", "json", check=True).stdout or "[]") == []


def timed(process, bound=BOUND):
    begin = time.monotonic()
    process.wait(timeout=bound)
    return time.monotonic() - begin


@pytest.mark.parametrize("moment", MOMENTS)
def test_create_killed_at_each_moment_is_deleted_with_nothing_left(slow, background, make_bundle, root, tmp_path, moment):
    bundle = hold_in_hooks(make_bundle(["sleep", "1000"]))
    create = background(slow, "--hypervisor", "slow", "create", "--bundle", bundle, "box")
    wait_for_moment(moment, root / "box", bundle, create, BOUND)
    create.kill()
    create.wait()
    state = slow("state", "box")
    if state.returncode == 0:  # a create that died leaves a container that `state` shows
        assert json.loads(state.stdout)["status"] in ("creating", "created", "stopped")
    else:
        assert state.stderr == "runv: container box does not exist\n"
    assert slow("list", check=True).returncode == 0
    assert slow("delete", "--force", "box").returncode == 0
    nothing_left(slow, root, tmp_path)


def test_a_create_killed_while_booting_stops_its_container_by_itself(slow, background, make_bundle, root, tmp_path):
    """Nobody got the container's pid: the shim, finding its create gone, stops the
    container (137) and `delete` without --force removes it."""
    bundle = make_bundle(["sleep", "1000"])
    create = background(slow, "--hypervisor", "slow", "create", "--bundle", bundle, "box")
    wait_for_moment("unrecorded", root / "box", bundle, create, BOUND)
    create.kill()
    create.wait()
    assert json.loads(slow("state", "box", check=True).stdout)["status"] == "creating"
    wait_status(slow, "box", "stopped", BOUND)
    assert Store(root).read("box").exit_code == 137
    assert slow("delete", "box").returncode == 0
    nothing_left(slow, root, tmp_path)


@pytest.mark.parametrize("moment", MOMENTS)
def test_delete_force_racing_create_converges(slow, background, make_bundle, root, tmp_path, moment):
    bundle = hold_in_hooks(make_bundle(["sleep", "1000"]))
    create = background(slow, "--hypervisor", "slow", "create", "--bundle", bundle, "box")
    wait_for_moment(moment, root / "box", bundle, create, BOUND)
    delete = background(slow, "delete", "--force", "box")
    assert timed(delete) < BOUND and delete.returncode == 0, stderr(delete)
    assert unrecorded_vms(root) == []
    timed(create)
    if create.returncode != 0:  # the delete won: one line saying so
        assert stderr(create) == "runv: container box was deleted while it was being created\n"
    assert unrecorded_vms(root) == []
    assert slow("delete", "--force", "box").returncode == 0
    nothing_left(slow, root, tmp_path)


def test_delete_of_a_creating_container_is_refused_in_one_line(fake, background, make_bundle, root, tmp_path):
    bundle = hold_in_hooks(make_bundle(["sleep", "1000"]))
    create = background(fake, "create", "--bundle", bundle, "box")
    wait_for_moment("hooks", root / "box", bundle, create, BOUND)
    refused = fake("delete", "box")
    assert (refused.returncode, refused.stderr) == (1, "runv: cannot delete container box that is being created (use --force)\n")
    assert timed(create) < BOUND and create.returncode == 0, stderr(create)
    assert fake("delete", "--force", "box").returncode == 0
    nothing_left(fake, root, tmp_path)


def test_two_delete_force_at_once_both_succeed(fake, background, make_bundle, root, tmp_path):
    assert fake("create", "--bundle", make_bundle(["sleep", "1000"]), "box").returncode == 0
    assert fake("start", "box").returncode == 0
    deletes = [background(fake, "delete", "--force", "box") for _ in range(2)]
    for delete in deletes:
        assert timed(delete) < BOUND and delete.returncode == 0, stderr(delete)
    nothing_left(fake, root, tmp_path)


def test_the_vmm_killed_leaves_a_stopped_container_with_137(fake, make_bundle, root, tmp_path):
    assert fake("create", "--bundle", make_bundle(["sleep", "1000"]), "box").returncode == 0
    assert fake("start", "box").returncode == 0
    os.kill(Store(root).read("box").vm["pid"], signal.SIGKILL)
    wait_status(fake, "box", "stopped", BOUND)
    assert Store(root).read("box").exit_code == 137
    assert fake("delete", "box").returncode == 0
    nothing_left(fake, root, tmp_path)


def test_the_shim_killed_leaves_a_stopped_container_delete_removes(fake, make_bundle, root, tmp_path):
    """The fake VMM has no parent-death signal: its VM outlives the shim until `delete`."""
    assert fake("create", "--bundle", make_bundle(["sleep", "1000"]), "box").returncode == 0
    assert fake("start", "box").returncode == 0
    os.kill(Store(root).read("box").shim_pid, signal.SIGKILL)
    wait_status(fake, "box", "stopped", BOUND)
    assert fake("delete", "box").returncode == 0
    nothing_left(fake, root, tmp_path)


def test_a_containers_mounts_live_in_its_shims_namespace_and_go_with_its_processes(fake, make_bundle, root, tmp_path):
    volume = tmp_path / "volume"
    volume.mkdir()
    mounts = [{"destination": "/data", "type": "bind", "source": str(volume), "options": ["rbind", "rw"]}]
    assert fake("run", "-d", "--bundle", make_bundle(["sleep", "1000"], mounts=mounts), "box").returncode == 0
    shim = Store(root).read("box").shim_pid
    assert mounts_under(root, [shim]) and mounts_under(root, [os.getpid()]) == []  # the shim's, not the host's
    for pid in {*process_tree(shim), *process_tree(Store(root).read("box").vm["pid"])}:
        with contextlib.suppress(ProcessLookupError):  # gone with its parent already
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + BOUND
    while mounts_under(root):  # in no namespace once the processes are gone
        assert time.monotonic() < deadline, mounts_under(root)
        time.sleep(0.05)
    assert fake("delete", "box").returncode == 0
    nothing_left(fake, root, tmp_path)
