"""The same bundle run once under runc and once under runv, compared from inside: the mount
list (mount point, type, per-mount options, propagation, in order), the device nodes of
``/dev``, the sysctls the spec sets, the ID maps, ``id``, ``umask`` and the cgroup limits
the spec sets. Every difference that is there by design is named in an allow-list below;
anything else fails the test, printed side by side."""

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
from test_confinement import bundle_of, default_config

from runv.oci.resources import cpu_weight

pytestmark = [pytest.mark.usefixtures("guest_image"),
              pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")]

SYSCTLS = {"kernel.shmmax": "8192", "kernel.msgmnb": "32768", "fs.mqueue.queues_max": "64", "net.ipv4.ip_forward": "1"}
RESOURCES = {"memory": {"limit": 64 << 20}, "pids": {"limit": 30}, "cpu": {"shares": 512, "quota": 50000, "period": 100000}}
# v2 files (runv's guest, a v2 host) and v1 files (runc on this host, which is cgroup v1)
CGROUP_FILES = ("memory.max", "pids.max", "cpu.max", "cpu.weight", "memory/memory.limit_in_bytes", "pids/pids.max",
                "cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us", "cpu/cpu.shares")
SCRIPT = "\n".join([
    "echo '== mounts'; cat /proc/self/mountinfo",
    "echo '== dev'; ls -lnR /dev",
    "echo '== sysctl'; " + "; ".join(f"echo {k}=$(cat /proc/sys/{k.replace('.', '/')})" for k in SYSCTLS),
    "echo '== maps'; cat /proc/self/uid_map /proc/self/gid_map",
    "echo '== id'; id",
    "echo '== umask'; umask",
    "echo '== cgroup'; for f in " + " ".join(CGROUP_FILES) + "; do [ -e /sys/fs/cgroup/$f ] && echo $f=$(cat /sys/fs/cgroup/$f); done",
    "true",
])
PROPAGATIONS = ("shared", "rshared", "slave", "rslave", "private", "rprivate")
HOST_IS_CGROUP_V1 = not os.path.exists("/sys/fs/cgroup/cgroup.controllers")
V1_UNLIMITED = 9223372036854771712  # memory.limit_in_bytes of "no limit" (PAGE_COUNTER_MAX pages)
USERNS = {"namespaces": [{"type": "user"}], "uidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}],
          "gidMappings": [{"containerID": 0, "hostID": 100000, "size": 65536}]}


def sections(text):
    result, current = {}, None
    for line in text.splitlines():
        if line.startswith("== "):
            current = result.setdefault(line[3:], [])
        elif current is not None:
            current.append(line)
    return result


def propagation(optional_fields):
    tags = sorted(field.split(":")[0] for field in optional_fields)
    return ",".join(tags) or "private"


def mounts(lines, spec):
    """(mount point, type, per-mount options, propagation) in mount order, with the by-design
    differences taken out (each commented)."""
    binds = {m["destination"] for m in spec["mounts"] if m["type"] == "bind" or "bind" in m.get("options", [])}
    masked = set(spec["linux"]["maskedPaths"]) | set(spec["linux"]["readonlyPaths"])
    entries = []
    for line in lines:
        fields = line.split()
        sep = fields.index("-")
        point, options, fstype = fields[4], fields[5], fields[sep + 1]
        if point == "/" or point in binds:
            # ALLOWED: the root's and a bind's type (and source, root) are the host's filesystem under
            # runc, the VM's view of the same files under runv (a 9p/virtio-fs share or an ext4 disk)
            fstype = "(the rootfs' or bind source's filesystem)"
        if point in masked and not os.path.exists(point):
            # ALLOWED: runc skips a masked or read-only path its kernel (the host's) lacks; the guest
            # kernel may have it (e.g. /proc/kcore, /proc/sysrq-trigger): compared only where the host has it
            continue
        if HOST_IS_CGROUP_V1 and point.startswith("/sys/fs/cgroup"):
            # ALLOWED: on this cgroup v1 host runc mounts a tmpfs at /sys/fs/cgroup with one bind per v1
            # hierarchy under it; runv's guest has cgroup v2 only: one cgroup2 mount. Its place is compared.
            if point != "/sys/fs/cgroup":
                continue
            fstype, options = "(cgroup, v1 or v2)", "(the hierarchy's)"
        entries.append((point, fstype, options, propagation(fields[6:sep])))
    return entries


DEVICE = re.compile(r"(?P<mode>[-a-z][-rwxsStT]{9})\s+\d+\s+(?P<uid>\d+)\s+(?P<gid>\d+)\s+"
                    r"(?:(?P<major>\d+),\s*(?P<minor>\d+)|\d+)\s+\w+\s+\d+\s+[\d:]+\s+(?P<name>.+)")


def devices(lines):
    """(directory, name, type and mode, owner, major:minor) for each entry of ``ls -lnR /dev``."""
    entries, directory = [], None
    for line in lines:
        if line.endswith(":") and line.startswith("/dev"):
            directory = line[:-1]
            continue
        match = DEVICE.fullmatch(line.strip())
        if not match:
            continue
        name = match["name"]
        if directory == "/dev" and name.startswith("core ->") and not os.path.exists("/proc/kcore"):
            # ALLOWED: runc links /dev/core to /proc/kcore only where the kernel has one; the host's has not
            continue
        numbers = f"{match['major']}:{match['minor']}" if match["major"] else ""
        entries.append((directory, name, match["mode"], f"{match['uid']}:{match['gid']}", numbers))
    return entries


def cgroup_limits(lines):
    """The spec's limits as cgroup v2 files: read as they are, or, from runc's v1 files, as runc
    writes them on a v2 host (cpu.weight from cpu.shares through runc's conversion)."""
    files = dict(line.split("=", 1) for line in lines if "=" in line)
    if "memory.max" in files:
        return {name: files[name] for name in ("memory.max", "pids.max", "cpu.max", "cpu.weight")}
    # ALLOWED: runc on this cgroup v1 host writes v1 files; these are the values it writes on v2
    limit = int(files["memory/memory.limit_in_bytes"])
    quota = int(files["cpu/cpu.cfs_quota_us"])
    return {"memory.max": "max" if limit >= V1_UNLIMITED else str(limit), "pids.max": files["pids/pids.max"],
            "cpu.max": f"{quota if quota > 0 else 'max'} {files['cpu/cpu.cfs_period_us']}",
            "cpu.weight": str(cpu_weight(int(files["cpu/cpu.shares"])))}


def compared(text, spec):
    found = sections(text)
    return {
        "mounts": mounts(found["mounts"], spec),
        "dev": devices(found["dev"]),
        "sysctl": found["sysctl"],
        "maps": [" ".join(line.split()) for line in found["maps"]],
        "id": found["id"],
        "umask": found["umask"],
        "cgroup": cgroup_limits(found["cgroup"]),
    }


def spec_of(where, userns):
    spec = default_config(SCRIPT, user={"uid": 0, "gid": 0, "umask": 0o027, "additionalGids": [10]})
    spec["linux"].update({"sysctl": SYSCTLS, "resources": RESOURCES})
    data = where / "data"
    data.mkdir()
    (data / "file").write_text("data\n")
    # the spec's own mounts, interleaved with the default ones: they must be mounted in this order
    spec["mounts"].insert(0, {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "size=1m"]})
    spec["mounts"].insert(6, {"destination": "/mnt", "type": "bind", "source": str(data), "options": ["rbind", "ro"]})
    # a bind with each propagation (runtime-tools' mounts test): the same peer groups and masters as runc's
    spec["mounts"] += [{"destination": f"/propagation/{how}", "type": "bind", "source": str(data), "options": ["rbind", how]}
                       for how in PROPAGATIONS]
    if userns:
        spec["linux"].update({key: USERNS[key] for key in ("uidMappings", "gidMappings")})
        spec["linux"]["namespaces"] = spec["linux"]["namespaces"] + USERNS["namespaces"]
    return spec


def run_runc(bundle, tmp_path, cid):
    state = str(tmp_path / "runc")
    try:
        return subprocess.run(["runc", "--root", state, "run", "--bundle", str(bundle), cid], capture_output=True,
                              text=True, timeout=60, stdin=subprocess.DEVNULL)
    finally:
        subprocess.run(["runc", "--root", state, "delete", "--force", cid], capture_output=True)


@pytest.fixture
def place(tmp_path, userns):
    """Where the bundle and the bind's source go: the test's own directory, or, with a user
    namespace, one that the mapped root (host uid 100000) may traverse, as runc needs."""
    if not userns:
        yield tmp_path
        return
    where = Path(tempfile.mkdtemp(prefix="runv-differential-"))
    try:
        where.chmod(0o755)
        yield where
    finally:
        shutil.rmtree(where, ignore_errors=True)


@pytest.mark.parametrize("userns", [False, True], ids=["default", "user-namespace"])
def test_runc_and_runv_set_up_the_same_bundle_alike(runv, make_bundle, tmp_path, place, userns):
    spec = spec_of(place, userns)
    bundle = bundle_of(make_bundle, spec)
    if userns:
        bundle = Path(shutil.copytree(bundle, place / "bundle", symlinks=True))
        bundle.chmod(0o755)
    for point in ("mnt", *(f"propagation/{how}" for how in PROPAGATIONS)):  # in userns runc may not make them
        (bundle / "rootfs" / point).mkdir(parents=True, exist_ok=True)
    runc = run_runc(bundle, tmp_path, "differential-runc")
    assert runc.returncode == 0, runc.stderr
    ours = runv("run", "--bundle", bundle, "differential-runv")
    assert ours.returncode == 0, ours.stderr
    theirs, mine = compared(runc.stdout, spec), compared(ours.stdout, spec)
    for key in theirs:
        assert mine[key] == theirs[key], f"{key} differs:\nrunc: {theirs[key]}\nrunv: {mine[key]}"


def test_a_read_only_rootfs_gets_the_mount_points_it_lacks_as_under_runc(runv, make_bundle, tmp_path):
    """A bind to a path the image lacks, in a read-only rootfs (a CRI pause container's
    /etc/resolv.conf): runc makes the mount point in the rootfs before its read-only
    remount; runv's host makes it before sharing the rootfs read-only."""
    source = tmp_path / "resolv.conf"
    source.write_text("nameserver 10.9.8.7\n")
    spec = default_config("cat /etc/pod/resolv.conf")
    spec["root"]["readonly"] = True
    spec["mounts"].append({"destination": "/etc/pod/resolv.conf", "type": "bind", "source": str(source), "options": ["rbind", "ro"]})
    results = {}
    for runtime in ("runc", "runv"):
        bundle = bundle_of(make_bundle, spec, name=f"bundle-{runtime}")
        result = run_runc(bundle, tmp_path, "ro1") if runtime == "runc" else runv("run", "--bundle", bundle, "ro1")
        made = bundle / "rootfs/etc/pod/resolv.conf"
        results[runtime] = (result.returncode, result.stdout, made.is_file() and made.stat().st_size)
    assert results["runv"] == results["runc"] == (0, "nameserver 10.9.8.7\n", 0), results
