"""config.json parsing: what runv honours, and errors that name the field."""

import json

import pytest

from runv.api.errors import RunvError
from runv.oci.config import load_bundle, parse_process, parse_spec
from runv.oci.default_spec import default_spec

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
