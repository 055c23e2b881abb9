"""Confinement inside the guest, read from inside the container: namespaces and
pivot_root (the agent invisible), capabilities, rlimits, noNewPrivileges, oomScoreAdj,
umask, masked and read-only paths, devices, sysctl, cgroup limits; exec'd processes the
same; an escape suite from a default-spec container; runc's answers for the same bundle."""

import json
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest

from runv.oci.default_spec import default_spec
from runv.testing import vm_processes_in

pytestmark = pytest.mark.usefixtures("guest_image")

REPORT = r"""
grep -E '^(CapInh|CapPrm|CapEff|CapBnd|CapAmb|NoNewPrivs|Seccomp|Groups)' /proc/self/status
echo "limit $(grep 'Max open files' /proc/self/limits | tr -s ' ')"
echo "oom $(cat /proc/self/oom_score_adj)"
echo "umask $(umask)"
echo "id $(id)"
"""


def default_config(script, **process):
    spec = default_spec(terminal=False)
    spec["process"].update({"args": ["sh", "-c", script], "env": ["PATH=/bin:/sbin:/usr/bin"]}, **process)
    spec["hostname"] = "runv-test"
    return spec


def bundle_of(make_bundle, spec, name="bundle"):
    return make_bundle(spec["process"]["args"], name=name, **{k: v for k, v in spec.items() if k not in ("ociVersion",)})


def run_in(runv, make_bundle, spec, name="bundle"):
    bundle = bundle_of(make_bundle, spec, name)
    cid = f"c{uuid.uuid4().hex[:8]}"
    result = runv("run", "--bundle", bundle, cid)
    return result


def lines(text, prefix):
    return [line for line in text.splitlines() if line.startswith(prefix)]


def test_a_default_spec_container_gets_runcs_process_spec(runv, make_bundle):
    spec = default_config(REPORT + "echo pid1 $(tr '\\0' ' ' < /proc/1/cmdline); echo self $$; cat /proc/self/mountinfo",
                          oomScoreAdj=123, user={"uid": 0, "gid": 0, "umask": 0o27, "additionalGids": [7, 9]})
    result = run_in(runv, make_bundle, spec)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    caps = hex((1 << 29) | (1 << 5) | (1 << 10))[2:].rjust(16, "0")  # AUDIT_WRITE, KILL, NET_BIND_SERVICE
    assert f"CapBnd:\t{caps}" in out and f"CapEff:\t{caps}" in out and f"CapPrm:\t{caps}" in out
    assert "CapInh:\t0000000000000000" in out and "CapAmb:\t0000000000000000" in out  # ambient needs inheritable (as in runc)
    assert "NoNewPrivs:\t1" in out
    assert "limit Max open files 1024 1024 files" in out
    assert "oom 123" in out and "umask 0027" in out
    assert "Groups:\t7 9" in out
    assert "pid1 sh -c" in out and "self 1" in out  # its own PID namespace: it is PID 1
    mountinfo = [line.split() for line in out.splitlines() if line[:1].isdigit() and " - " in line]
    by_target = {fields[4]: fields for fields in mountinfo}
    assert by_target["/"][5].startswith("ro")  # root.readonly
    assert "/proc/sys" in by_target and by_target["/proc/sys"][5].startswith("ro")  # readonlyPaths
    assert by_target["/proc/kcore"][-3] in ("devtmpfs", "tmpfs") or "/proc/kcore" in by_target  # maskedPaths
    assert by_target["/sys"][5].startswith("ro")
    assert "/dev/mqueue" in by_target and by_target["/sys/fs/cgroup"][-3] == "cgroup2"
    assert not any("/rootfs" in fields[4] or fields[4].startswith("/usr/lib/runv") for fields in mountinfo)


def mountinfo(text):
    """``(mount point, per-mount options, optional fields, fstype, super options)`` per line."""
    entries = []
    for line in text.splitlines():
        if line[:1].isdigit() and " - " in line:
            mine, theirs = line.split(" - ", 1)
            fields, (fstype, _, options) = mine.split(), theirs.split(" ", 2)
            entries.append((fields[4], fields[5].split(","), fields[6:], fstype, options.split(",")))
    return entries


def test_the_specs_mounts_are_made_in_spec_order_with_their_flags(runv, make_bundle, tmp_path):
    volume, shared, single = tmp_path / "vol", tmp_path / "shared", tmp_path / "single.txt"
    volume.mkdir()
    shared.mkdir()
    (volume / "seen").write_text("volume\n")
    single.write_text("file\n")
    spec = default_config("cat /proc/self/mountinfo; cat /mnt/vol/seen /etc/single.txt; touch /mnt/vol/x 2>&1 || true")
    dev, pts, shm, mqueue, sysfs, cgroup = (next(m for m in spec["mounts"] if m["destination"] == d)
                                           for d in ("/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys", "/sys/fs/cgroup"))
    spec["mounts"] = [  # an unusual order: runc mounts them as listed, so must runv
        dev,
        {"destination": "/run/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "noexec", "size=1m", "mode=700"]},
        {"destination": "/mnt/vol", "type": "bind", "source": str(volume), "options": ["rbind", "ro", "nosuid"]},
        {"destination": "/proc", "type": "proc", "source": "proc"},
        mqueue, sysfs,
        {"destination": "/etc/single.txt", "type": "none", "source": str(single), "options": ["bind", "ro"]},
        cgroup,
        {"destination": "/mnt/shared", "type": "bind", "source": str(shared), "options": ["rbind", "rshared"]},
        pts, shm,
    ]
    bundle = bundle_of(make_bundle, spec)
    for point in ("run/scratch", "mnt/vol", "mnt/shared"):  # the read-only root's share is read-only: no mkdir
        (bundle / "rootfs" / point).mkdir(parents=True)
    (bundle / "rootfs/etc/single.txt").touch()
    result = runv("run", "--bundle", bundle, "order")
    assert result.returncode == 0, result.stderr
    mounts = mountinfo(result.stdout)
    order = ["/", *(m["destination"] for m in spec["mounts"])]
    assert [m[0] for m in mounts[:len(order)]] == order  # the root, then the spec's, in spec order
    at = {m[0]: m for m in mounts}
    assert at["/"][1][0] == "ro"  # root.readonly, applied after the mounts
    assert at["/run/scratch"][3] == "tmpfs" and {"nosuid", "nodev", "noexec"} <= set(at["/run/scratch"][1])
    assert {"size=1024k", "mode=700"} <= set(at["/run/scratch"][4])
    assert {"ro", "nosuid"} <= set(at["/mnt/vol"][1]) and {"ro"} <= set(at["/etc/single.txt"][1])
    assert any(field.startswith("shared:") for field in at["/mnt/shared"][2])  # rshared
    assert not any(field.startswith("shared:") for field in at["/mnt/vol"][2])  # the rest private
    assert at["/proc"][3] == "proc" and at["/dev/mqueue"][3] == "mqueue" and at["/sys"][3] == "sysfs"
    assert at["/sys/fs/cgroup"][3] == "cgroup2" and at["/sys/fs/cgroup"][1][0] == "ro"
    assert at["/dev/pts"][3] == "devpts" and "ptmxmode=666" in at["/dev/pts"][4]
    assert at["/dev"][3] == "tmpfs" and "strictatime" not in at["/dev"][1] and "relatime" not in at["/dev"][1]
    assert "volume\nfile\n" in result.stdout and "Read-only file system" in result.stdout
    assert not (volume / "x").exists()


ESCAPES = r"""
try() { name=$1; shift; if "$@" >/dev/null 2>&1; then echo "ESCAPED $name"; else echo "held $name"; fi; }
try proc1-root ls /proc/1/root/usr/lib/runv-agent
try agent-in-ps sh -c 'ps -o comm | grep -q python'
try vport sh -c 'ls /dev/vport* /dev/vd* /dev/sd* /dev/mem'
try devtmpfs mount -t devtmpfs devtmpfs /dev/shm
try proc-sys sh -c 'echo 1 > /proc/sys/vm/drop_caches'
try sysfs sh -c 'echo x > /sys/kernel/uevent_helper'
try kcore sh -c 'test -s /proc/kcore || head -c1 /proc/kcore | grep -q .'
try insmod insmod /dev/null
try mknod mknod /dev/shm/sda b 8 0
try chroot chroot / true
try hostname hostname other
try remount-root mount -o remount,rw /
echo done
"""


def test_escapes_from_a_default_spec_container_fail(runv, make_bundle):
    result = run_in(runv, make_bundle, default_config(ESCAPES))
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout
    assert "ESCAPED" not in result.stdout, result.stdout
    assert len(lines(result.stdout, "held ")) == 12


def test_exec_joins_the_namespaces_and_gets_its_own_process_spec(runv, make_bundle, tmp_path):
    spec = default_config("echo started; exec sleep 300")
    bundle = bundle_of(make_bundle, spec)
    out = open(tmp_path / "out", "w")
    assert runv("create", "--bundle", bundle, "cx", stdout=out).returncode == 0
    assert runv("start", "cx").returncode == 0
    plain = runv("exec", "cx", "sh", "-c", REPORT + "echo pid1 $(tr '\\0' ' ' < /proc/1/cmdline); ls /dev/vport* || true")
    assert plain.returncode == 0, plain.stderr
    assert "pid1 sleep 300" in plain.stdout and "vport" not in plain.stdout
    assert "NoNewPrivs:\t1" in plain.stdout and "limit Max open files 1024 1024 files" in plain.stdout
    assert "CapEff:\t0000000020000420" in plain.stdout
    more = runv("exec", "--cap", "CAP_SYS_ADMIN", "--user", "1000:1000", "--additional-gids", "5", "--cwd", "/dev",
                "-e", "X=y", "cx", "sh", "-c", REPORT + "pwd; echo X=$X")
    assert more.returncode == 0, more.stderr
    assert "CapBnd:\t0000000020200420" in more.stdout  # --cap adds CAP_SYS_ADMIN (21) to bounding...
    assert "CapEff:\t0000000000000000" in more.stdout  # ...and a non-root user loses it at execve (no ambient), as in runc
    assert "id uid=1000 gid=1000 groups=5" in more.stdout and "/dev\nX=y" in more.stdout
    process = tmp_path / "process.json"
    process.write_text(json.dumps({"args": ["sh", "-c", REPORT], "cwd": "/", "env": ["PATH=/bin"], "user": {"uid": 0, "gid": 0},
                                   "noNewPrivileges": False, "capabilities": {"bounding": ["CAP_KILL"], "effective": ["CAP_KILL"],
                                                                               "permitted": ["CAP_KILL"]}}))
    own = runv("exec", "--process", process, "cx")
    assert own.returncode == 0, own.stderr
    assert "CapEff:\t0000000000000020" in own.stdout and "NoNewPrivs:\t0" in own.stdout
    assert "limit Max open files" in own.stdout and "1024 1024" not in own.stdout  # --process: its own (no) rlimits
    runv("kill", "cx", "KILL")


def test_linux_devices_sysctl_and_cgroup_limits(runv, make_bundle):
    script = ("stat -c '%F %t %T %a' /dev/fuse; cat /proc/sys/kernel/shmmax; "
              "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/pids.max; cat /proc/self/cgroup")
    spec = default_config(script)
    spec["linux"].update({"devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o600}],
                          "sysctl": {"kernel.shmmax": "8192"},
                          "resources": {"memory": {"limit": 64 << 20}, "pids": {"limit": 40}}})
    result = run_in(runv, make_bundle, spec)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:5] == ["character special file a e5 600", "8192", str(64 << 20), "40", "0::/"]


@pytest.mark.parametrize(
    ("process", "message"),
    [({"capabilities": {"bounding": ["CAP_BOGUS"]}}, 'process.capabilities.bounding: unknown capability "CAP_BOGUS"'),
     ({"rlimits": [{"type": "RLIMIT_WHAT", "soft": 1, "hard": 1}]}, "process.rlimits[0].type: wrong rlimit value: RLIMIT_WHAT")],
)
def test_bad_input_fails_create_in_one_line_and_leaves_nothing(runv, make_bundle, root, process, message):
    spec = default_config("true", **process)
    bundle = bundle_of(make_bundle, spec)
    result = runv("create", "--bundle", bundle, "bad")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (root / "bad").exists()


@pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")
def test_runc_and_runv_give_the_same_bundle_the_same_process(runv, make_bundle, tmp_path):
    spec = default_config(REPORT, user={"uid": 1000, "gid": 1000, "umask": 0o22, "additionalGids": [10]},
                          rlimits=[{"type": "RLIMIT_NOFILE", "hard": 2048, "soft": 512},
                                   {"type": "RLIMIT_CORE", "hard": 0, "soft": 0}], oomScoreAdj=50)
    spec["process"]["capabilities"]["inheritable"] = ["CAP_KILL"]  # so that an ambient capability can be raised
    bundle = bundle_of(make_bundle, spec)
    runc = subprocess.run(["runc", "--root", str(tmp_path / "runc"), "run", "--bundle", str(bundle), "diff-runc"],
                          capture_output=True, text=True, timeout=60)
    assert runc.returncode == 0, runc.stderr
    ours = runv("run", "--bundle", bundle, "diff-runv")
    assert ours.returncode == 0, ours.stderr
    # by design, none of these differ; what does (the kernel, the network, the agent's mounts) is not printed
    assert ours.stdout.splitlines() == runc.stdout.splitlines()


def test_seccomp_is_installed_last_and_applies_to_exec(runv, make_bundle, tmp_path):
    spec = default_config("grep Seccomp: /proc/self/status; mkdir /dev/shm/x 2>&1; echo started; exec sleep 300")
    spec["linux"]["seccomp"] = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
                                "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}
    bundle = bundle_of(make_bundle, spec)
    out = open(tmp_path / "out", "w")
    assert runv("run", "-d", "--bundle", bundle, "sc", stdout=out).returncode == 0
    exec_ = runv("exec", "sc", "sh", "-c", "grep Seccomp: /proc/self/status; mkdir /dev/shm/y")
    assert "Seccomp:\t2" in exec_.stdout and "Permission denied" in exec_.stderr
    text = (tmp_path / "out").read_text()
    assert "Seccomp:\t2" in text and "Permission denied" in text and "started" in text
    runv("kill", "sc", "KILL")


def test_start_container_hooks_run_inside_the_container_before_the_process(runv, make_bundle):
    spec = default_config("cat /dev/shm/hook; echo process")
    hook = ("read state; { echo hook ppid=$PPID; test -e /usr/lib/runv-agent && echo agent-visible;"
            " case \"$state\" in *'\"status\": \"created\"'*) echo state-ok;; esac; } > /dev/shm/hook")
    spec["hooks"] = {"startContainer": [{"path": "/bin/sh", "args": ["sh", "-c", hook]}]}
    result = run_in(runv, make_bundle, spec)
    assert result.returncode == 0, result.stderr
    # its parent is the container's PID 1 (the process about to exec), its root the container's
    assert result.stdout.splitlines() == ["hook ppid=1", "state-ok", "process"], result.stdout
    spec["hooks"] = {"startContainer": [{"path": "/bin/false"}]}
    failed = run_in(runv, make_bundle, spec, name="failing")
    assert failed.returncode != 0 and "hooks.startContainer[0] /bin/false: exit status 1" in failed.stderr, failed.stderr


USER_NS = {"uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
           "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]}
IDS = "cat /proc/self/uid_map /proc/self/gid_map; id; stat -c 'owner %u %g' /bin; grep -E '^(Cap|Groups)' /proc/self/status\n"


def userns_config(script, **process):
    spec = default_config(script, **process)
    spec["linux"]["namespaces"].append({"type": "user"})
    spec["linux"].update(json.loads(json.dumps(USER_NS)))
    return spec


def test_a_user_namespace_maps_the_containers_ids_and_exec_joins_it(runv, make_bundle, tmp_path):
    volume = tmp_path / "vol"
    volume.mkdir()
    volume.chmod(0o777)
    spec = userns_config(IDS + "echo ns $(readlink /proc/self/ns/user); touch /vol/made; mkdir /vol/dir; echo started; "
                         "exec sleep 300")
    spec["mounts"].append({"destination": "/vol", "type": "bind", "source": str(volume), "options": ["rbind"]})
    bundle = bundle_of(make_bundle, spec)
    (bundle / "rootfs/vol").mkdir()
    out = tmp_path / "out"
    with open(out, "w") as f:
        assert runv("run", "-d", "--bundle", bundle, "userns", stdout=f).returncode == 0
    try:
        joined = runv("exec", "userns", "sh", "-c", IDS + "echo ns $(readlink /proc/self/ns/user)")
        assert joined.returncode == 0, joined.stderr
        text = out.read_text()
        for report in (text, joined.stdout):
            assert report.splitlines()[:2] == ["         0     100000      65536", "         0     200000      65536"], report
            assert report.splitlines()[2].startswith("uid=0(root) gid=0"), report
            assert "owner 65534 65534" in report  # the image's root (host uid 0) is not mapped: nobody, as under runc
        init_ns = next(line for line in text.splitlines() if line.startswith("ns "))
        assert init_ns.startswith("ns user:[") and init_ns in joined.stdout.splitlines()  # the same user namespace
        made, folder = (volume / "made").stat(), (volume / "dir").stat()
        assert (made.st_uid, made.st_gid) == (100000, 200000) and (folder.st_uid, folder.st_gid) == (100000, 200000)
    finally:
        runv("kill", "userns", "KILL")


def test_escapes_from_a_user_namespace_container_fail(runv, make_bundle):
    result = run_in(runv, make_bundle, userns_config(ESCAPES))  # root of its namespace: the same escapes held
    assert result.returncode == 0, result.stderr
    assert "done" in result.stdout and "ESCAPED" not in result.stdout, result.stdout
    assert len(lines(result.stdout, "held ")) == 12


@pytest.mark.parametrize(
    ("linux", "message"),
    [({"uidMappings": USER_NS["uidMappings"], "gidMappings": USER_NS["gidMappings"]},
      "linux.uidMappings: user namespace mappings specified, but user namespace isn't enabled in the config"),
     ({"namespaces": [{"type": "user"}], "uidMappings": [{"containerID": 0, "hostID": 1000, "size": 10},
                                                        {"containerID": 5, "hostID": 5000, "size": 1}],
       "gidMappings": USER_NS["gidMappings"]}, "linux.uidMappings[1]: containerID range 5-5 overlaps linux.uidMappings[0]"),
     ({"namespaces": [{"type": "user"}]},
      "linux.namespaces: user namespaces enabled, but no namespace path to join nor mappings to apply specified")],
)
def test_bad_user_namespaces_fail_create_in_one_line_and_leave_nothing(runv, make_bundle, root, linux, message):
    spec = default_config("true")
    spec["linux"].update(linux)
    bundle = bundle_of(make_bundle, spec)
    result = runv("create", "--bundle", bundle, "badns")
    assert result.returncode == 1 and result.stderr.count("\n") == 1 and message in result.stderr, result.stderr
    assert not (root / "badns").exists() and not vm_processes_in(root)


def test_mappings_the_guest_kernel_refuses_fail_in_one_line_naming_the_field(runv, make_bundle, root):
    spec = userns_config("true")
    # 341 ranges: valid one by one, more than the kernel takes (UID_GID_MAP_MAX_EXTENTS is 340)
    spec["linux"]["uidMappings"] = [{"containerID": i, "hostID": 100000 + i, "size": 1} for i in range(341)]
    bundle = bundle_of(make_bundle, spec)
    result = runv("run", "--bundle", bundle, "refused")
    assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
    assert ('linux.uidMappings: the guest kernel refuses these 341 ranges [{"containerID": 0, "hostID": 100000, "size": 1}, '
            '{"containerID": 1, "hostID": 100001, "size": 1}, ...]: Invalid argument') in result.stderr, result.stderr
    assert not (root / "refused").exists() and not vm_processes_in(root)  # run removed its failed container


@pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")
def test_runc_and_runv_give_a_user_namespace_the_same_ids(runv, make_bundle, tmp_path):
    spec = userns_config(IDS, user={"uid": 1000, "gid": 1000, "additionalGids": [10]})
    bundle = bundle_of(make_bundle, spec)
    # runc's init runs as the mapped root on the host: the bundle must be reachable for it (tmp_path is 0700)
    with tempfile.TemporaryDirectory(prefix="runv-userns-") as open_dir:
        Path(open_dir).chmod(0o755)
        runc_bundle = Path(open_dir) / "bundle"
        shutil.copytree(bundle, runc_bundle, symlinks=True)
        runc = subprocess.run(["runc", "--root", str(tmp_path / "runc"), "run", "--bundle", str(runc_bundle), "ns-runc"],
                              capture_output=True, text=True, timeout=60)
    assert runc.returncode == 0, runc.stderr
    ours = runv("run", "--bundle", bundle, "ns-runv")
    assert ours.returncode == 0, ours.stderr
    assert "uid=1000 gid=1000 groups=10" in ours.stdout
    assert ours.stdout.splitlines() == runc.stdout.splitlines()
