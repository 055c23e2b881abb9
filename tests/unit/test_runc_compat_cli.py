"""runc behaviours that Podman (conmon) and containerd (go-runc) rely on, answered by runv's
command line before any VM (with VMs: tests/vm/test_runc_compat.py)."""

from __future__ import annotations

import pytest

from runv.api.errors import RunvError
from runv.testing import vm_processes_in
from runv.verbs.lookpath import check_program


def test_delete_force_of_an_unknown_container_succeeds_silently(runv):
    result = runv("delete", "--force", "ghost")
    assert result.returncode == 0 and result.stderr == ""  # runc's answer: Podman and containerd retry deletes
    result = runv("delete", "ghost")
    assert result.returncode == 1 and "does not exist" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["/no/such"], 'exec: "/no/such": stat /no/such: no such file or directory'),
        (["no-such"], 'exec: "no-such": executable file not found in $PATH'),
        (["/etc/passwd"], 'exec: "/etc/passwd": permission denied'),
        (["/bin"], 'exec: "/bin": permission denied'),
    ],
)
def test_missing_program_is_refused_at_create_before_a_vm_boots(runv, make_bundle, root, args, message):
    result = runv("create", "--bundle", make_bundle(args), "c1")
    assert result.returncode == 1
    assert result.stderr == f"runv: {message}\n"  # runc's words: podman maps them to exit status 127/126
    assert not (root / "c1").exists() and not vm_processes_in(root)


def test_program_lookup_follows_the_rootfs_and_its_path(tmp_path):
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr/bin").mkdir(parents=True)
    (rootfs / "usr/bin/tool").write_text("#!/bin/sh\n")
    (rootfs / "usr/bin/tool").chmod(0o755)
    (rootfs / "bin").symlink_to("/usr/bin")  # absolute: resolved inside the rootfs, not on the host
    (rootfs / "usr/bin/loop").symlink_to("loop")
    env = ["PATH=/bin"]
    check_program(str(rootfs), ["tool"], env, "/", [])
    check_program(str(rootfs), ["/bin/tool"], env, "/", [])
    check_program(str(rootfs), ["./bin/tool"], env, "/", [])
    check_program(str(rootfs), ["tool"], [], "/", [])  # no PATH: the usual default
    check_program(str(rootfs), ["/opt/app/run"], env, "/", ["/opt/app"])  # under a mount: the guest decides
    check_program(str(rootfs), ["run"], ["PATH=/opt/app"], "/", ["/opt/app"])
    for args in (["/bin/loop"], ["sh"]):
        with pytest.raises(RunvError):
            check_program(str(rootfs), args, env, "/", [])
