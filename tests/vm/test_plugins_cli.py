"""`runv plugins`, `runv check`, disabling plugins, a broken plugin, and the example
third-party plugin installed into a throwaway virtualenv."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from runv.testing import fake_distribution

REPO = Path(__file__).resolve().parents[2]
PVM = os.path.isdir("/sys/module/kvm_pvm")
BROKEN = {"runv_broken.py": "raise ImportError('the broken plugin cannot load libfoo.so')\n"}


@pytest.fixture
def env(tmp_path, monkeypatch):
    """A subprocess environment with no config file and nothing disabled."""
    values = {k: v for k, v in os.environ.items() if k not in ("RUNV_DISABLE_PLUGINS", "PYTHONPATH")}
    values["RUNV_CONFIG"] = str(tmp_path / "no-config.toml")
    return values


@pytest.fixture
def broken_env(env, tmp_path):
    fake_distribution(tmp_path / "site", "runv-broken", {"runv.hypervisors": {"broken": "runv_broken"}}, BROKEN)
    return {**env, "PYTHONPATH": str(tmp_path / "site")}


def test_plugins_lists_every_installed_plugin_with_its_hooks(runv, env):
    result = runv("plugins", "--json", env=env, check=True)
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"qemu", "tcg", "kvmtool", "xen", "bundle"} <= set(rows)
    assert rows["qemu"]["kind"] == "hypervisor" and rows["qemu"]["distribution"] == "runv-qemu"
    assert rows["tcg"]["hooks"] == ["boot", "hypervisor_info", "probe"]  # the VM that boot returns does the rest
    assert rows["tcg"]["capabilities"]["pause"] and rows["tcg"]["capabilities"]["nic_hotplug"] and rows["tcg"]["templates"]
    assert not rows["kvmtool"]["capabilities"]["nics"] and not rows["xen"]["capabilities"]["nics"]
    assert rows["bundle"]["hooks"] == ["attach_storage", "detach_storage", "guest_modules", "probe"]
    assert rows["qemu"]["priority"] > rows["tcg"]["priority"]
    assert all(row["error"] is None and row["disabled"] is None for row in rows.values())
    table = runv("plugins", env=env, check=True).stdout
    assert table.splitlines()[0].split() == ["KIND", "NAME", "DISTRIBUTION", "VERSION", "STATE", "HOOKS"]


def test_a_broken_plugin_is_listed_with_its_error(runv, broken_env):
    rows = {row["name"]: row for row in json.loads(runv("plugins", "--json", env=broken_env, check=True).stdout)}
    assert rows["broken"]["error"] == "ImportError: the broken plugin cannot load libfoo.so"
    assert rows["broken"]["distribution"] == "runv-broken" and rows["broken"]["version"] == "0.0.1"
    assert rows["tcg"]["error"] is None
    table = runv("plugins", env=broken_env, check=True).stdout
    assert "hypervisor plugin 'broken' failed to load: ImportError" in table
    check = runv("check", "--json", env=broken_env)
    assert check.returncode == 0, check.stderr
    entry = next(e for e in json.loads(check.stdout)["entries"] if e["name"] == "broken")
    assert entry["status"] == "broken" and "reinstall runv-broken" in entry["reason"]


@pytest.mark.vm
def test_runv_run_works_next_to_a_broken_plugin(runv, broken_env, make_bundle, guest_image):
    from runv.testing.host import INITRD, KERNEL

    result = runv("--kernel", KERNEL, "--initrd", INITRD, "run", "-b", make_bundle(["echo", "hi"]), "c1", env=broken_env)
    assert (result.returncode, result.stdout) == (0, "hi\n"), result.stderr


def test_disabled_by_config_file_and_environment(runv, env, tmp_path, make_bundle):
    config = tmp_path / "config.toml"
    config.write_text('[plugins]\ndisabled = ["xen"]\n')
    env = {**env, "RUNV_CONFIG": str(config), "RUNV_DISABLE_PLUGINS": "kvmtool"}
    rows = {row["name"]: row for row in json.loads(runv("plugins", "--json", env=env, check=True).stdout)}
    assert rows["xen"]["disabled"] == str(config) and rows["xen"]["hooks"] == []
    assert rows["kvmtool"]["disabled"] == "RUNV_DISABLE_PLUGINS"
    assert rows["tcg"]["disabled"] is None
    assert f"disabled by {config}" in runv("plugins", env=env, check=True).stdout
    entries = {e["name"]: e for e in json.loads(runv("check", "--json", env=env).stdout)["entries"]}
    assert entries["xen"]["status"] == "disabled"
    result = runv("--hypervisor", "xen", "create", "-b", make_bundle(["true"]), "c1", env=env)
    assert result.returncode == 1
    assert f"hypervisor plugin 'xen' is disabled by {config}" in result.stderr


def test_a_malformed_config_is_one_clear_line(runv, env, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[plugins\n")
    result = runv("plugins", env={**env, "RUNV_CONFIG": str(config)})
    assert result.returncode == 1
    assert result.stderr.startswith(f"runv: cannot read {config}:") and result.stderr.count("\n") == 1


@pytest.mark.skipif(not PVM, reason="asserts this host: software KVM, no lkvm, no Xen")
def test_check_on_this_host(runv, env):
    from runv.testing.host import INITRD, KERNEL

    result = runv("--kernel", KERNEL, "--initrd", INITRD, "check", "--json", env=env)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    entries = {e["name"]: e for e in report["entries"]}
    assert entries["qemu"]["status"] == "unusable" and "KVM is software-only here (PVM" in entries["qemu"]["reason"]
    assert entries["tcg"]["status"] == "ok" and entries["bundle"]["status"] == "ok"
    assert entries["kvmtool"]["status"] == "unusable" and "lkvm not found" in entries["kvmtool"]["reason"]
    assert entries["xen"]["status"] == "unusable"
    assert report["default"] == {"hypervisor": "tcg", "requested_hypervisor": "auto", "storage": "bundle",
                                 "can_run": True, "problems": []}
    text = runv("--kernel", KERNEL, "--initrd", INITRD, "check", env=env).stdout
    assert text.splitlines()[-1] == "default: hypervisor tcg (auto), storage bundle: can run"


def test_check_fails_without_a_guest_image(runv, env, tmp_path):
    result = runv("--kernel", tmp_path / "kernel", "--initrd", tmp_path / "initrd", "check", env=env)
    assert result.returncode == 1
    assert f"no guest kernel at {tmp_path / 'kernel'}: run `runv guest build`" in result.stdout
    assert result.stderr == "runv: the default selection cannot run here: guest kernel missing; guest initrd missing\n"


@pytest.mark.parametrize("args", [["--help"], ["state", "nope"], ["list"], ["kill", "nope", "9"]])
def test_hot_commands_import_no_plugin_machinery(args, tmp_path, env):
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "from runv.cli.app import main; main()",
                          "--root", str(tmp_path), *args], capture_output=True, text=True, env=env, timeout=60)
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line]
    assert imported, out.stderr
    heavy = [m for m in imported if m.split(".")[0] in ("pluggy", "qemu", "runv_qemu", "runv_tcg", "runv_kvmtool",
                                                        "runv_xen", "runv_bundle", "tomllib")
             or m in ("runv.loader", "runv.cli.check.", "runv.hookspecs")]
    assert heavy == []


# ---------------------------------------------------------------- the example third-party plugin


@pytest.fixture(scope="module")
def example_venv(tmp_path_factory):
    """A throwaway virtualenv that sees runv (from this environment) and gets the example
    plugin pip-installed into it as its own distribution."""
    venv = tmp_path_factory.mktemp("example") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]  # runv and its plugins, editable installs included
    Path(site, "runv-dev.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    result = subprocess.run([str(python), "-m", "pip", "install", "--no-deps",
                             str(REPO / "examples" / "runv-plainfs")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return python


def example_runv(python, *args, env, timeout=180):
    return subprocess.run([str(python), "-c", "from runv.cli.app import main; main()", *map(str, args)],
                          capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)


def test_example_plugin_is_discovered_after_pip_install(example_venv, env):
    rows = {r["name"]: r for r in json.loads(example_runv(example_venv, "plugins", "--json", env=env).stdout)}
    assert rows["plainfs"]["kind"] == "storage" and rows["plainfs"]["distribution"] == "runv-plainfs"
    assert rows["plainfs"]["hooks"] == ["attach_storage", "detach_storage"]
    check = json.loads(example_runv(example_venv, "--storage", "plainfs", "check", "--json", env=env).stdout)
    assert next(e for e in check["entries"] if e["name"] == "plainfs")["status"] == "ok"
    assert check["default"]["storage"] == "plainfs"
    # and it is not visible outside the throwaway environment
    assert "plainfs" not in subprocess.run([str(Path(sys.executable).with_name("runv")), "plugins"], capture_output=True,
                                           text=True, env=env).stdout


def test_example_plugins_own_tests_pass(example_venv, env):
    result = subprocess.run([str(example_venv), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(REPO / "examples" / "runv-plainfs" / "tests")], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.vm
def test_example_plugin_runs_a_container(example_venv, env, make_bundle, guest_image, tmp_path):
    from runv.testing.host import INITRD, KERNEL

    bundle = make_bundle(["cat", "/proc/mounts"])
    result = example_runv(example_venv, "--root", tmp_path / "state", "--kernel", KERNEL, "--initrd", INITRD,
                          "--storage", "plainfs", "run", "-b", bundle, "c1", env=env)
    try:
        assert result.returncode == 0, result.stderr
        # plainfs's rootfs share, as every share, through the VM's one share (the pod directory)
        assert any(line.startswith("pod / 9p ") for line in result.stdout.splitlines()), result.stdout
    finally:
        example_runv(example_venv, "--root", tmp_path / "state", "delete", "--force", "c1", env=env)
