"""config.json parsing: what runv honours, and errors that name the field."""

import json

import pytest

from runv.api import netns_path
from runv.api.errors import RunvError
from runv.oci.config import load_bundle, parse_process, parse_spec, process_to_exec
from runv.oci.default_spec import default_spec
from runv.verbs.exec import exec_request, terminal_of

GOOD = {
    "ociVersion": "1.0.2",
    "process": {
        "args": ["sh", "-c", "true"],
        "env": ["A=1"],
        "cwd": "/tmp",
        "terminal": True,
        "user": {"uid": 1000, "gid": 100, "additionalGids": [5]},
        "consoleSize": {"height": 24, "width": 80},
    },
    "root": {"path": "rootfs", "readonly": True},
    "hostname": "box",
    "annotations": {"a": "b"},
    "hooks": {"prestart": [{"path": "/bin/true", "args": ["true"], "timeout": 3}]},
    "linux": {"namespaces": [{"type": "network", "path": "/run/netns/x"}]},
    "mounts": [{"destination": "/proc", "type": "proc"}],
}


def test_parses_the_fields_runv_honours():
    spec = parse_spec(GOOD, "config.json")
    assert spec.process.args == ("sh", "-c", "true")
    assert spec.process.user.uid == 1000 and spec.process.user.additional_gids == (5,)
    assert spec.process.console_size.height == 24
    assert spec.root.readonly and spec.hostname == "box"
    assert spec.hooks["prestart"][0].timeout == 3
    assert spec.linux["namespaces"][0]["path"] == "/run/netns/x"
    request = spec.process.agent_request()
    assert request["rows"] == 24 and request["cols"] == 80 and request["tty"] is True


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda c: c["process"].pop("args"), "process.args must list the program"),
        (lambda c: c["process"].update(args=[]), "process.args must list the program"),
        (lambda c: c["process"].update(args="sh"), "process.args must be a list"),
        (lambda c: c["process"].update(cwd="tmp"), "process.cwd must be an absolute path"),
        (lambda c: c["process"]["user"].update(uid="0"), "process.user.uid must be an integer"),
        (lambda c: c.pop("root"), "root is required"),
        (lambda c: c.pop("process"), "process is required"),
        (lambda c: c.update(annotations={"a": 1}), "annotations must map strings"),
        (lambda c: c["hooks"]["prestart"][0].pop("path"), "hooks.prestart[0].path is required"),
        (lambda c: c["process"].update(terminal="yes"), "process.terminal must be true or false"),
    ],
)
def test_errors_name_the_field(change, message):
    config = json.loads(json.dumps(GOOD))
    change(config)
    with pytest.raises(RunvError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_spec(config, "config.json")


def test_exec_process_uses_the_same_parser():
    with pytest.raises(RunvError, match="process.json: process.args"):
        parse_process({"args": []}, "process.json")


def command(*args, **options):
    """The request ``runv exec [options] box ARGS`` sends its container's shim."""
    given = {"process_file": None, "env": [], "cwd": None, "user": None, "additional_gids": [], "tty": False, "caps": [],
             "no_new_privs": False, **options}
    return exec_request(args=list(args), **given)


def test_exec_builds_on_the_container_s_process_as_runc_does():
    base = parse_spec(GOOD, "config.json").process
    process = process_to_exec(base, command("id", env=["B=2", "A=3"], user="7:8", additional_gids=[9], cwd="/w",
                                            caps=["CAP_NET_ADMIN"], no_new_privs=True))
    assert (process.args, process.env, process.cwd, process.terminal) == (("id",), ("A=3", "B=2"), "/w", False)
    assert (process.user.uid, process.user.gid, process.user.additional_gids) == (7, 8, (9,))
    assert "CAP_NET_ADMIN" in process.security["capabilities"]["bounding"] and process.security["noNewPrivileges"]
    plain = process_to_exec(base, command("true", tty=True))  # the container's own user, cwd and env
    assert (plain.user, plain.cwd, plain.env, plain.terminal) == (base.user, "/tmp", ("A=1",), True)
    with pytest.raises(RunvError, match="p.json: process.args"):
        process_to_exec(base, {"process": {"args": []}, "source": "p.json"})
    with pytest.raises(RunvError, match="--process FILE"):
        process_to_exec(None, command("true"))
    with pytest.raises(RunvError, match="unknown capability \"nope\""):
        process_to_exec(base, command("true", caps=["nope"]))


@pytest.mark.parametrize(("options", "message"), [
    ({"env": ["A"]}, "invalid --env 'A': use KEY=VALUE"), ({"user": "root"}, "invalid --user 'root'"),
    ({"user": "1:x"}, "invalid --user '1:x'"), ({"cwd": "rel"}, "invalid --cwd 'rel'")])
def test_exec_options_are_refused_before_anything_is_set_up(options, message):
    with pytest.raises(RunvError, match=message):
        command("true", **options)
    with pytest.raises(RunvError, match="needs a command"):
        command()


def test_the_exec_relay_knows_the_terminal_before_the_shim_checks_the_process():
    assert terminal_of(command("sh", tty=True)) == (True, (0, 0))
    assert terminal_of({"process": {"terminal": True, "consoleSize": {"height": 24, "width": 80}}}) == (True, (24, 80))
    for size in ({"height": 0, "width": 80}, {"height": 1 << 16, "width": 80}, {"height": "24", "width": 80}, None):
        assert terminal_of({"process": {"terminal": True, "consoleSize": size}}) == (True, (0, 0))
    assert terminal_of({"process": ["not", "an", "object"]}) == (False, (0, 0))


def test_bundle_errors(tmp_path):
    with pytest.raises(RunvError, match="does not exist"):
        load_bundle(tmp_path / "missing")
    with pytest.raises(RunvError, match="config.json does not exist"):
        load_bundle(tmp_path)
    (tmp_path / "config.json").write_text("{nope")
    with pytest.raises(RunvError, match="is not valid JSON"):
        load_bundle(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(GOOD))
    with pytest.raises(RunvError, match="root.path 'rootfs'"):
        load_bundle(tmp_path)


def test_spec_template_is_valid():
    spec = parse_spec(default_spec(), "template")
    assert spec.process.args == ("sh",)


def test_netns_path_from_the_spec():
    assert netns_path({}) is None
    assert netns_path({"namespaces": [{"type": "pid"}, {"type": "network"}]}) is None
    assert netns_path({"namespaces": [{"type": "network", "path": "/run/netns/x"}]}) == "/run/netns/x"
    with pytest.raises(RunvError, match=r"linux.namespaces\[0\].path"):
        netns_path({"namespaces": [{"type": "network", "path": "relative"}]})
