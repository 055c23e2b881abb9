"""The confinement fields of config.json, checked on the host (runv.oci.security), and
how they reach the agent's requests."""

import json
import os
import shutil
import subprocess

import pytest

from runv.agent.errors import RequestError
from runv.api.errors import RunvError
from runv.oci.config import parse_process, parse_spec
from runv.oci.default_spec import default_spec


def spec_with(process=None, linux=None) -> dict:
    spec = default_spec()
    spec["process"].update(process or {})
    spec["linux"].update(linux or {})
    return spec


def test_the_process_fields_reach_the_agents_exec_request():
    spec = parse_spec(spec_with({"oomScoreAdj": 100, "user": {"uid": 1, "gid": 2, "umask": 0o27}}), "config.json")
    request = spec.process.agent_request()
    assert request["capabilities"]["bounding"] == ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    assert request["capabilities"]["inheritable"] == []
    assert request["rlimits"] == [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}]
    assert request["noNewPrivileges"] is True and request["oomScoreAdj"] == 100 and request["umask"] == 0o27


def test_to_json_round_trips_the_process_spec():  # exec --process and the shim's relay use this form
    process = parse_spec(spec_with({"user": {"uid": 0, "gid": 0, "umask": 18}}), "c").process
    again = parse_process(process.to_json(), "relay")
    assert again.security == process.security and again.to_json()["user"]["umask"] == 18


def test_no_capabilities_field_means_nothing_is_dropped():
    data = spec_with()
    del data["process"]["capabilities"]
    assert "capabilities" not in parse_spec(data, "c").process.agent_request()


@pytest.mark.parametrize(
    ("process", "message"),
    [
        ({"capabilities": {"bounding": ["CAP_NOPE"]}}, 'config.json: process.capabilities.bounding: unknown capability "CAP_NOPE"'),
        ({"capabilities": {"effective": "CAP_KILL"}}, "config.json: process.capabilities.effective: must be a list of strings"),
        ({"rlimits": [{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}]}, "config.json: process.rlimits[0].type: wrong rlimit value: RLIMIT_BOGUS"),
        ({"rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1, "soft": 2}]},
         "config.json: process.rlimits[0]: soft limit of RLIMIT_NOFILE (2) is above its hard limit (1)"),
        ({"rlimits": [{"type": "RLIMIT_CORE", "hard": "x", "soft": 1}]},
         "config.json: process.rlimits[0]: hard and soft of RLIMIT_CORE must be non-negative integers"),
        ({"oomScoreAdj": 5000}, "config.json: process.oomScoreAdj: must be an integer from -1000 to 1000, not 5000"),
        ({"noNewPrivileges": "yes"}, "config.json: process.noNewPrivileges: must be true or false, not 'yes'"),
        ({"user": {"uid": 0, "gid": 0, "umask": 4096}}, "config.json: process.user.umask: must be an integer from 0 to 511 (0777), not 4096"),
    ],
)
def test_bad_process_fields_fail_in_one_line_naming_them(process, message):
    with pytest.raises(RunvError) as error:
        parse_spec(spec_with(process), "config.json")
    assert str(error.value) == message


@pytest.mark.parametrize(
    ("linux", "message"),
    [
        ({"sysctl": {"kernel.panic": "1"}}, "config.json: linux.sysctl: sysctl 'kernel.panic' is not allowed in the container's namespaces"),
        ({"sysctl": {"../x": "1"}}, "config.json: linux.sysctl: invalid sysctl name '../x'"),
        ({"maskedPaths": ["proc/kcore"]}, "config.json: linux.maskedPaths: must be a list of absolute paths"),
        ({"rootfsPropagation": "weird"}, "config.json: linux.rootfsPropagation: unknown propagation 'weird'"),
        ({"devices": [{"path": "/dev/x", "type": "q", "major": 1, "minor": 1}]}, "config.json: linux.devices[0].type: must be one of c, b, u, p, not 'q'"),
        ({"devices": [{"path": "/etc/x", "type": "c", "major": 1, "minor": 1}]}, "config.json: linux.devices[0].path: must be a path under /dev, not '/etc/x'"),
        ({"resources": {"memory": {"limit": -2}}}, "config.json: linux.resources.memory.limit: must be a number of bytes or -1, not -2"),
    ],
)
def test_bad_linux_fields_fail_in_one_line_naming_them(linux, message):
    with pytest.raises(RunvError) as error:
        parse_spec(spec_with(linux=linux), "config.json")
    assert str(error.value) == message


def test_the_linux_fields_reach_the_agents_prepare_request():
    linux = {"sysctl": {"kernel.shmmax": "4096", "net.ipv4.ip_forward": "1"},
             "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o600}],
             "resources": {"memory": {"limit": 64 << 20}, "pids": {"limit": 32}}}
    confinement = parse_spec(spec_with(linux=linux), "c").confinement
    assert confinement["maskedPaths"][:3] == ["/proc/acpi", "/proc/asound", "/proc/kcore"]
    assert "/proc/sys" in confinement["readonlyPaths"] and confinement["rootfsPropagation"] == "rprivate"
    assert confinement["sysctl"] == linux["sysctl"]
    assert confinement["devices"] == [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 0o600,
                                       "uid": 0, "gid": 0}]
    assert confinement["resources"] == {"memory.max": str(64 << 20), "pids.max": "32"}


@pytest.mark.skipif(shutil.which("runc") is None, reason="runc is not installed")
def test_runv_spec_is_runcs_default(tmp_path):
    subprocess.run(["runc", "spec"], cwd=tmp_path, check=True)
    runc = json.loads((tmp_path / "config.json").read_text())
    # by design: runv's name as the hostname, and the OCI version runv implements (runc: 1.0.2-dev)
    runc["hostname"], runc["ociVersion"] = "runv", "1.0.2"
    assert default_spec() == runc


def test_the_agent_confines_only_in_a_vm():
    import socket

    from runv.agent.loop import Agent

    a, b = socket.socketpair()
    try:
        assert Agent(a.fileno(), rootfs="/").confine is False  # the unit tests' and --socket mode's agent
    finally:
        a.close()
        b.close()


def test_capability_masks_split_into_capsets_two_words():
    from runv.agent.confine import cap_mask

    assert cap_mask(["CAP_CHOWN", "CAP_KILL"]) == 0b100001
    assert cap_mask(["CAP_CHECKPOINT_RESTORE"]) == 1 << 40


SECCOMP = {"defaultAction": "SCMP_ACT_ALLOW", "architectures": ["SCMP_ARCH_X86_64"],
           "syscalls": [{"names": ["mkdir", "mkdirat"], "action": "SCMP_ACT_ERRNO", "errnoRet": 13}]}


def test_a_seccomp_profile_reaches_prepare():
    assert parse_spec(spec_with(linux={"seccomp": SECCOMP}), "c").confinement["seccomp"] == SECCOMP


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"defaultAction": "SCMP_ACT_MAYBE"}, "config.json: linux.seccomp.defaultAction: unknown action 'SCMP_ACT_MAYBE'"),
        ({"architectures": ["SCMP_ARCH_ARM"]}, "config.json: linux.seccomp.architectures: unsupported architecture 'SCMP_ARCH_ARM' (this guest is x86_64)"),
        ({"syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_NOPE"}]}, "config.json: linux.seccomp.syscalls[0].action: unknown action 'SCMP_ACT_NOPE'"),
        ({"syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "op": "LIKE"}]}]},
         "config.json: linux.seccomp.syscalls[0].args: bad argument comparison {'index': 0, 'op': 'LIKE'}"),
        ({"syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "op": "SCMP_CMP_EQ", "value": "1"}]}]},
         "config.json: linux.seccomp.syscalls[0].args: bad argument comparison {'index': 0, 'op': 'SCMP_CMP_EQ', 'value': '1'}"),
        ({"syscalls": [{"names": ["mkdir"], "action": "SCMP_ACT_ERRNO", "errnoRet": "EPERM"}]},
         "config.json: linux.seccomp.syscalls[0].errnoRet: must be an errno number, not 'EPERM'"),
        ({"defaultErrnoRet": -1}, "config.json: linux.seccomp.defaultErrnoRet: must be an errno number, not -1"),
    ],
)
def test_bad_seccomp_fields_fail_in_one_line(change, message):
    with pytest.raises(RunvError) as error:
        parse_spec(spec_with(linux={"seccomp": {**SECCOMP, **change}}), "config.json")
    assert str(error.value) == message


def test_a_syscall_libseccomp_does_not_know_fails_on_the_host():
    profile = {**SECCOMP, "syscalls": [{"names": ["mkdir", "no_such_call"], "action": "SCMP_ACT_ERRNO"}]}
    with pytest.raises(RunvError, match="linux.seccomp.syscalls\\[0\\].names: unknown syscall 'no_such_call'"):
        parse_spec(spec_with(linux={"seccomp": profile}), "config.json")


def test_the_host_compiles_the_profile_and_the_agents_loader_enforces_it(tmp_path):
    """runv.oci.seccomp compiles with the host's libseccomp; the agent's loader (here on the
    host, in a child with no_new_privs) installs the program: mkdir fails with errnoRet."""
    import base64
    import ctypes

    from runv.agent import seccomp as loader
    from runv.oci.seccomp import compile_bpf

    program = {"bpf": base64.b64encode(compile_bpf(SECCOMP)).decode()}
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            ctypes.CDLL(None).prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
            os.mkdir(tmp_path / "before")
            loader.load(program)
            try:
                os.mkdir(tmp_path / "after")
            except PermissionError as exc:
                code = 0 if exc.errno == 13 else 2
        finally:
            os._exit(code)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
    assert sorted(os.listdir(tmp_path)) == ["before"]
    with pytest.raises(RequestError, match="not whole instructions"):
        loader.load({"bpf": "AAAA"})


USERNS = [{"type": "pid"}, {"type": "user"}, {"type": "mount"}]
MAP = [{"containerID": 0, "hostID": 100000, "size": 65536}]


def test_a_user_namespace_and_its_mappings_reach_the_agents_prepare_request():
    linux = {"namespaces": USERNS, "uidMappings": MAP,
             "gidMappings": [{"containerID": 0, "hostID": 200000, "size": 10}, {"containerID": 10, "hostID": 5, "size": 1}]}
    confinement = parse_spec(spec_with(linux=linux), "c").confinement
    assert confinement["userns"] == {"uidMappings": MAP, "gidMappings": linux["gidMappings"]}
    assert parse_spec(spec_with(), "c").confinement["userns"] is None  # the default spec has none


def test_the_specs_mounts_reach_the_agent_in_spec_order():
    spec = spec_with()
    spec["mounts"].insert(0, {"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "rshared"]})
    mounts = parse_spec(spec, "c").confinement["mounts"]
    assert [m["destination"] for m in mounts] == ["/data", "/proc", "/dev", "/dev/pts", "/dev/shm", "/dev/mqueue", "/sys",
                                                  "/sys/fs/cgroup"]
    assert mounts[0]["options"] == ["rbind", "rshared"]


def mapping(container, host, size):
    return {"containerID": container, "hostID": host, "size": size}


@pytest.mark.parametrize(
    ("linux", "message"),
    [
        ({"uidMappings": MAP, "gidMappings": MAP},
         "linux.uidMappings: user namespace mappings specified, but user namespace isn't enabled in the config"),
        ({"gidMappings": MAP}, "linux.gidMappings: user namespace mappings specified, but user namespace isn't enabled in the config"),
        ({"namespaces": USERNS},
         "linux.namespaces: user namespaces enabled, but no namespace path to join nor mappings to apply specified"),
        ({"namespaces": USERNS, "uidMappings": MAP}, "linux.gidMappings: user namespaces enabled, but no gid mappings found"),
        ({"namespaces": USERNS, "gidMappings": MAP}, "linux.uidMappings: user namespaces enabled, but no uid mappings found"),
        ({"namespaces": USERNS, "uidMappings": [mapping(1, 100000, 10)], "gidMappings": MAP},
         "linux.uidMappings: user namespaces enabled, but no mapping found for uid 0"),
        ({"namespaces": [{"type": "user", "path": "/proc/1/ns/user"}], "uidMappings": MAP, "gidMappings": MAP},
         "linux.namespaces: joining the user namespace '/proc/1/ns/user' is not supported: the container's namespaces are in its VM"),
        ({"namespaces": USERNS, "uidMappings": {"containerID": 0}, "gidMappings": MAP}, "linux.uidMappings: must be a list"),
        ({"namespaces": USERNS, "uidMappings": ["0 100000 1"], "gidMappings": MAP}, "linux.uidMappings[0]: must be an object"),
        ({"namespaces": USERNS, "uidMappings": [mapping(0, "100000", 1)], "gidMappings": MAP},
         "linux.uidMappings[0].hostID: must be a non-negative integer, not '100000'"),
        ({"namespaces": USERNS, "uidMappings": MAP, "gidMappings": [mapping(0, -1, 1)]},
         "linux.gidMappings[0].hostID: must be a non-negative integer, not -1"),
        ({"namespaces": USERNS, "uidMappings": [mapping(0, True, 1)], "gidMappings": MAP},
         "linux.uidMappings[0].hostID: must be a non-negative integer, not True"),
        ({"namespaces": USERNS, "uidMappings": [mapping(0, 100000, 0)], "gidMappings": MAP},
         "linux.uidMappings[0].size: must be at least 1"),
        ({"namespaces": USERNS, "uidMappings": [mapping(0, (1 << 32) - 10, 10)], "gidMappings": MAP},
         "linux.uidMappings[0]: hostID 4294967286 + size 10 goes past the last ID (4294967294)"),
        ({"namespaces": USERNS, "uidMappings": [mapping(0, 100000, 100), mapping(50, 300000, 10)], "gidMappings": MAP},
         "linux.uidMappings[1]: containerID range 50-59 overlaps linux.uidMappings[0]"),
        ({"namespaces": USERNS, "uidMappings": MAP, "gidMappings": [mapping(0, 100000, 100), mapping(1000, 100099, 1)]},
         "linux.gidMappings[1]: hostID range 100099-100099 overlaps linux.gidMappings[0]"),
    ],
)
def test_bad_user_namespaces_fail_in_one_line_in_runcs_words(linux, message):
    with pytest.raises(RunvError) as error:
        parse_spec(spec_with(linux=linux), "config.json")
    assert str(error.value) == f"config.json: {message}"


def test_adjacent_ranges_do_not_overlap():
    linux = {"namespaces": USERNS, "uidMappings": [mapping(0, 1000, 10), mapping(10, 1010, 10)], "gidMappings": MAP}
    assert len(parse_spec(spec_with(linux=linux), "c").confinement["userns"]["uidMappings"]) == 2
