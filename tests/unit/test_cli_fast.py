"""The CLI's fast path (:mod:`runv.cli.fast`) against typer, the one definition of the
command line: its table is the typer app's, it takes the forms real clients use and
leaves the rest to typer, and both paths print the same bytes and exit the same way,
on live containers of the fake VMM as on errors."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import time
from importlib import import_module
from pathlib import Path

import pytest

from runv.cli import commands, fast, fast_table
from runv.testing.host import run_captured

FAST = "from runv.cli.app import main; main()"
TYPER = "from runv.cli.app import main; main(fast=False)"


def test_the_table_is_generated_from_the_typer_app():
    expected = commands.fast_table_source()
    assert Path(fast_table.__file__).read_text() == expected, (
        "core/runv/cli/fast_table.py is not the typer app's: run `.venv/bin/python -m runv.cli.commands`")


def test_each_hot_command_s_run_takes_the_values_of_its_typer_command():
    for name, spec in fast_table.COMMANDS.items():
        run = import_module(f"runv.cli.{spec['module']}").run
        assert list(inspect.signature(run).parameters) == ["settings", *spec["defaults"]], name


# ---------------------------------------------------------------- what parse takes, and what it leaves to typer

TAKEN = [
    ["state", "box"],
    ["--root", "/r", "--log", "/l", "--log-format", "json", "state", "box"],  # containerd's prefix
    ["--root=/r", "--log-format=json", "--log=/l", "--systemd-cgroup", "--rootless=false", "state", "box"],
    ["--debug", "--no-debug", "--rootless", "true", "list"],
    ["list", "-q"], ["list", "--format", "json"], ["list", "--format=json"], ["list", "-f", "json"],
    ["kill", "box", "15"], ["kill", "--all", "box", "9"], ["kill", "box", "--all", "KILL"], ["kill", "--", "box"],
    ["start", "box"], ["pause", "box"], ["resume", "box"], ["delete", "box"], ["delete", "--force", "box"],
    ["ps", "--format", "json", "box"], ["ps", "box"],
    ["exec", "--process", "/p.json", "--detach", "--pid-file", "/pid", "box"],
    ["exec", "--process", "/p.json", "--detach", "--pid-file", "/pid", "--tty", "--console-socket", "/s", "box"],
    ["exec", "-e", "A=1", "--env=B=2", "-g", "5", "-g", "6", "box", "sh", "-c", "--help"],
    ["state", ""],  # an empty id is the command's error, not the parser's
    ["create", "--bundle", "/b", "--pid-file", "/p", "--console-socket", "/s", "box"], ["create", "box"],  # Podman's, runc's
    ["run", "-d", "--bundle=/b", "box"], ["run", "-b", "/b", "--no-pivot", "box"],
]
LEFT = [
    [], ["--help"], ["-h"], ["--version"], ["-v"], ["state", "--help"], ["state", "-h"], ["list", "--help"],
    ["state"], ["kill"], ["state", "a", "b"], ["kill", "box", "9", "extra"], ["frobnicate"], ["spec"], ["create"], ["run", "--detach=1", "box"],
    ["--log-format", "xml", "state", "box"], ["--root"], ["--root", "--debug", "state", "box"], ["--root=", "state", "box"],
    ["--debug=1", "state", "box"], ["--bogus", "state", "box"], ["state", "--root", "/r", "box"],
    ["kill", "-9", "box"], ["kill", "--all=1", "box"], ["list", "-fjson"], ["list", "-f=json"], ["list", "-qf", "json"], ["list", "--format"],
    ["exec", "-g", "x", "box", "true"], ["exec", "--preserve-fds", "many", "box", "true"], ["delete", "-x", "box"],
]


@pytest.mark.parametrize("argv", TAKEN, ids=" ".join)
def test_the_forms_real_clients_use_take_the_fast_path(argv):
    assert fast.parse(argv) is not None


@pytest.mark.parametrize("argv", LEFT, ids=" ".join)
def test_what_the_table_does_not_describe_fully_goes_to_typer(argv):
    assert fast.parse(argv) is None


@pytest.mark.parametrize("root", ["/r//x/", "/r/./x", "//r/x", "r/x/", "."])
def test_paths_are_spelled_as_typer_s(root):
    from pathlib import PurePosixPath

    assert fast.parse(["--root", root, "--kernel", root, "state", "box"])[1].root == str(PurePosixPath(root))
    assert fast.parse(["--root", root, "--kernel", root, "state", "box"])[1].kernel == str(PurePosixPath(root))


def test_values_are_typer_s():
    module, settings, values = fast.parse(["--root=/r", "--log", "/l", "--debug", "exec", "-e", "A=1", "-g", "7", "box", "sh", "-c", "x"])
    assert module == "exec_" and values["args"] == ["sh", "-c", "x"] and values["env"] == ["A=1"] and values["container_id"] == "box"
    assert values["additional_gids"] == [7] and values["process"] is None and values["tty"] is False and values["preserve_fds"] == 0
    assert (settings.root, settings.log, settings.debug, settings.hypervisor) == ("/r", "/l", True, "auto")
    assert fast.parse(["kill", "box"])[2] == {"container_id": "box", "signal": "TERM", "all_processes": False}


# ---------------------------------------------------------------- both paths, byte for byte


@pytest.fixture
def both(root, fake, guest_files, tmp_path):
    """``both(*args)`` runs ``runv --root ROOT ... ARGS`` through main() twice, the fast path
    allowed and then forced through typer; returns the two (status, stdout, stderr)."""
    kernel, initrd = guest_files

    def call(*args, globals_=None, path=FAST):
        options = globals_ if globals_ is not None else ["--root", str(root), "--kernel", str(kernel), "--initrd", str(initrd),
                                                         "--hypervisor", "fake"]
        result = run_captured([sys.executable, "-c", path, *options, *map(str, args)], env=fake.env, timeout=30)
        return result.returncode, result.stdout, result.stderr

    return call


def same(both, *args, **kwargs):
    fast_result, typer_result = both(*args, **kwargs), both(*args, path=TYPER, **kwargs)
    assert fast_result == typer_result, args
    return fast_result


def wait_status(both, cid, status):
    deadline = time.monotonic() + 10
    while json.loads(both("state", cid)[1])["status"] != status:
        assert time.monotonic() < deadline, f"{cid} never became {status}"
        time.sleep(0.05)


def test_both_paths_print_the_same_on_a_live_container_and_on_errors(both, fake, make_bundle, root, tmp_path):
    bundle = make_bundle(["sleep", "1000"])
    fake("create", "--bundle", bundle, "box", check=True)
    fake("start", "box", check=True)
    logged = tmp_path / "runv.log"
    spelled = [["--root", str(root)], [f"--root={root}"], ["--root", str(root), "--log", str(logged), "--log-format", "json"],
               [f"--root={root}", "--log-format=json", f"--log={logged}", "--systemd-cgroup", "--rootless=false"],
               ["--root", str(root), "--debug"]]
    for options in spelled:
        assert same(both, "state", "box", globals_=options)[0] == 0
        assert same(both, "list", "-q", globals_=options)[1] == "box\n"
        same(both, "state", "ghost", globals_=options)
    for args in (["state", "box"], ["state", "ghost"], ["state", ""], ["state", "../x"], ["state"], ["state", "--help"],
                 ["list"], ["list", "-q"], ["list", "--format", "json"], ["list", "-f", "yaml"], ["--log-format", "xml", "list"],
                 ["ps", "--format", "yaml", "box"], ["ps", "ghost"],
                 ["kill", "box", "NOPE"], ["kill", "box", "0"], ["kill", "ghost", "9"], ["kill"], ["kill", "-9", "box"],
                 ["start", "box"], ["start", "ghost"], ["resume", "box"], ["pause", "ghost"], ["delete", "box"], ["delete", "ghost"],
                 ["exec", "box", "sh", "-c", "echo out; echo err >&2; exit 3"], ["exec", "-e", "A=1", "--env=B=2", "box", "sh", "-c", "echo $A$B"],
                 ["exec", "ghost", "true"], ["exec", "--process", tmp_path / "missing.json", "box"],
                 ["create", "--bundle", tmp_path / "missing", "other"], ["run", "--bundle", tmp_path / "missing", "other"],
                 ["create", "--bundle", bundle, "box"], ["run", "-d", "--bundle", bundle, "../x"],
                 ["--version"], ["--help"], ["frobnicate"]):
        same(both, *args)
    assert same(both, "delete", "--force", "ghost") == (0, "", "")
    for path in (FAST, TYPER):  # the fake VMM's guest is the host: its process list changes between calls
        status, out, err = both("ps", "box", path=path)
        assert (status, out.splitlines()[0], err) == (0, "PID   CMD", "") and any(line.endswith(" sleep 1000") for line in out.splitlines())
        status, out, err = both("ps", "--format", "json", "box", path=path)
        assert (status, err) == (0, "") and all(isinstance(pid, int) for pid in json.loads(out))
    lines = [json.loads(line) for line in logged.read_text().splitlines()]
    assert [line["msg"] for line in lines] == ["container ghost does not exist"] * 4  # twice per path, json both times


def test_both_paths_change_a_container_the_same_way(both, fake, make_bundle):
    """The lifecycle on two containers, one driven through each path: the same outputs
    (ids aside) and the same states at every step."""
    for cid in ("fast", "slow"):
        fake("create", "--bundle", make_bundle(["sleep", "1000"], name=cid), cid, check=True)

    def step(*args, status=None):
        results = [both(*[cid if a == "ID" else a for a in args], path=path) for cid, path in (("fast", FAST), ("slow", TYPER))]
        fast_result, typer_result = (tuple(part.replace(cid, "ID") if isinstance(part, str) else part for part in result)
                                     for cid, result in zip(("fast", "slow"), results))
        assert fast_result == typer_result, args
        if status:
            for cid in ("fast", "slow"):
                wait_status(both, cid, status)
        return fast_result

    assert step("start", "ID", status="running")[0] == 0
    assert step("start", "ID")[0] == 1
    assert step("pause", "ID", status="paused")[0] == 0
    assert step("pause", "ID")[0] == 1
    assert step("kill", "ID", "TERM")[0] == 1  # only KILL reaches a paused container
    assert step("resume", "ID", status="running")[0] == 0
    assert step("resume", "ID")[0] == 1
    assert step("delete", "ID")[0] == 1
    assert step("kill", "--all", "ID", "9", status="stopped")[0] == 0
    assert step("kill", "ID")[0] == 1
    assert step("delete", "ID")[0] == 0
    assert step("delete", "ID")[0] == 1
    assert step("delete", "--force", "ID") == (0, "", "")


def test_state_starts_without_typer_attrs_or_logging(root, fake, make_bundle):
    fake("create", "--bundle", make_bundle(["sleep", "1000"]), "box", check=True)
    script = FAST.replace("main()", "import atexit, json, sys; atexit.register(lambda: print(json.dumps(sorted(set(sys.modules) & "
                                    "{'typer', 'attrs', 'attr', 'pluggy', 'logging', 'typing', 'shutil', 'pathlib'})), "
                                    "file=sys.stderr)); main()")
    for args in (["state", "box"], ["list"], ["kill", "ghost", "9"], ["exec", "box", "true"]):
        result = subprocess.run([sys.executable, "-c", script, "--root", str(root), *args], capture_output=True, text=True,
                                env=fake.env, timeout=30)
        imported = json.loads(result.stderr.splitlines()[-1])
        assert not {"typer", "attrs", "attr", "pluggy", "typing"} & set(imported), (args, result.stderr)
        if args[0] != "kill":  # kill imports the lifecycle (runv.verbs.lifecycle)
            assert imported == [], (args, result.stderr)
