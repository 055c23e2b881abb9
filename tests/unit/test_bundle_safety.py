"""An untrusted bundle and odd ids on the fake VMM: each refused in one line, nothing left
(the ``fake`` fixture checks: no process, no mount, every container deleted)."""

from __future__ import annotations

import json
import os

import pytest

from runv.api.errors import RunvError
from runv.api.process import process_start_time
from runv.templates.store import check_name
from runv.vm import mountpoints


def one_line_error(result, words):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("cid, words", [("abc\n", "invalid container id"), ("a" * 300, "at most 100"),
                                        ("x y", "invalid container id"), ("a/b", "invalid container id")])
def test_bad_ids_are_one_line_errors(fake, make_bundle, cid, words):
    bundle = make_bundle(["true"])
    one_line_error(fake("create", "--bundle", bundle, cid), words)
    assert fake("list", "-q").stdout.strip() == ""


def test_a_root_path_resolving_to_the_hosts_root_is_refused(fake, make_bundle, tmp_path):
    bundle = make_bundle(["true"])
    config = json.loads((bundle / "config.json").read_text())
    (bundle / "up").symlink_to("/")
    for path in ("/", "up", "rootfs" + "/.." * 40):
        config["root"]["path"] = path
        (bundle / "config.json").write_text(json.dumps(config))
        one_line_error(fake("create", "--bundle", bundle, "box"), "resolves to the host's /")
    assert fake("list", "-q").stdout.strip() == ""


@pytest.mark.parametrize("kind", ["file", "dir", "parent"])
def test_a_symlinked_volume_source_is_refused_not_followed(fake, make_bundle, tmp_path, kind):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("host secret\n")
    links = tmp_path / "links"
    links.mkdir()
    if kind == "file":
        (links / "vol").symlink_to(outside / "secret")
        source = links / "vol"
    elif kind == "dir":
        (links / "vol").symlink_to(outside)
        source = links / "vol"
    else:
        (links / "up").symlink_to(outside)
        source = links / "up" / "secret"
    bundle = make_bundle(["cat", "/data"], mounts=[{"destination": "/data", "type": "bind", "source": str(source),
                                                     "options": ["bind"]}])
    result = fake("run", "--bundle", bundle, "box")
    one_line_error(result, "is a symbolic link")
    assert "host secret" not in result.stdout
    assert fake("list", "-q").stdout.strip() == ""


def test_a_real_volume_directory_still_works(fake, make_bundle, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d/f").write_text("from the host\n")
    bundle = make_bundle(["cat", "/data/f"], mounts=[{"destination": "/data", "type": "bind", "source": str(tmp_path / "d"),
                                                       "options": ["bind", "ro"]}])
    result = fake("run", "--bundle", bundle, "box")
    assert (result.returncode, result.stdout) == (0, "from the host\n"), result.stderr


def test_delete_refuses_a_container_still_being_created(fake, root):
    state = root / "box"
    state.mkdir(parents=True)
    record = {"id": "box", "bundle": "/nonexistent", "rootfs": "/nonexistent/rootfs", "created": "now", "status": "creating",
              "shim_pid": os.getpid(), "shim_start": 0,  # no shim yet; its create (this process) runs:
              "creator_pid": os.getpid(), "creator_start": process_start_time(os.getpid())}
    (state / "state.json").write_text(json.dumps(record))
    one_line_error(fake("delete", "box"), "being created")
    assert fake("delete", "--force", "box").returncode == 0
    assert not state.exists()


@pytest.mark.parametrize("name", ["", ".x", "a/b", "auto", "off", "a" * 65, "x\n", "a;rm -rf /", "a..b"])
def test_template_names_are_restricted(name):
    with pytest.raises(RunvError, match="invalid template name"):
        check_name(name)


def test_a_read_only_rootfs_gets_its_mount_points_inside_itself_whatever_its_symlinks(tmp_path):
    """The host makes a read-only rootfs's missing mount points (the guest cannot): the
    image's symlinks, absolute, relative or dangling, resolve inside the rootfs."""
    outside = tmp_path / "outside"
    outside.mkdir()
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "etc").symlink_to(f"/../../../../..{outside}")  # an escape as an absolute link
    (rootfs / "run").symlink_to("../../../..")  # and as a relative one
    (rootfs / "var").mkdir()
    (rootfs / "var/hosts").symlink_to("/srv/x/hosts")  # dangling: what it names is made, in the rootfs
    source = tmp_path / "resolv.conf"
    source.write_text("nameserver 10.0.0.1\n")
    mounts = [{"destination": "/etc/resolv.conf", "type": "bind", "source": str(source), "options": ["rbind", "ro"]},
              {"destination": "/run/secrets", "type": "tmpfs", "source": "tmpfs"},
              {"destination": "/var/hosts", "type": "bind", "source": str(source), "options": ["bind"]},
              {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"}]
    mountpoints.make(rootfs, mounts)
    assert os.listdir(outside) == []
    assert (rootfs / tmp_path.relative_to("/") / "outside/resolv.conf").is_file()  # the link's target, under the rootfs
    assert (rootfs / "secrets").is_dir()  # ../../../.. from / is /
    assert (rootfs / "srv/x/hosts").is_file()
    assert sorted(p.name for p in (rootfs / "dev").iterdir()) == [] and (rootfs / "proc").is_dir()  # /dev/shm: the guest's


def test_dotdot_after_a_symlink_is_the_kernels_not_a_string_operation(tmp_path):
    """``d/../c`` with ``d`` a symlink to ``x/y``: ``..`` leaves ``x/y``, so the mount point is
    ``x/c`` (where the container will look), not ``c``; ``/dev/null`` bound on a file makes a file."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "x/y").mkdir(parents=True)
    (rootfs / "d").symlink_to("x/y")
    (rootfs / "a").symlink_to("d/../c")
    mountpoints.make(rootfs, [{"destination": "/a/m", "type": "tmpfs", "source": "tmpfs"},
                              {"destination": "/etc/null", "type": "bind", "source": "/dev/null", "options": ["bind"]}])
    assert (rootfs / "x/c/m").is_dir() and not (rootfs / "c").exists()
    assert (rootfs / "etc/null").is_file()


@pytest.mark.parametrize("first, second", [("b", "a"), ("/s/../b", "/s/../a")])
def test_a_symlink_loop_in_a_read_only_rootfs_is_one_line(tmp_path, first, second):
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    (rootfs / "a").symlink_to(first)
    (rootfs / "b").symlink_to(second)
    with pytest.raises(RunvError, match=r"^cannot make the mount point /a/f in the read-only rootfs .*: Too many levels of symbolic links$"):
        mountpoints.make(rootfs, [{"destination": "/a/f", "type": "tmpfs", "source": "tmpfs"}])
