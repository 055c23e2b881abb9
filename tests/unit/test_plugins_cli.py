"""`runv plugins`, `runv check`, disabling plugins, a broken plugin, and the example
third-party plugin plainfs installed into a throwaway virtualenv (the ``plainfs_venv``
fixture, tests/conftest.py); containers next to them: tests/vm/test_vm_plugins_cli.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_plugins_lists_every_installed_plugin_with_its_hooks(runv, plugin_env):
    result = runv("plugins", "--json", env=plugin_env, check=True)
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"qemu", "tcg", "kvmtool", "xen", "bundle"} <= set(rows)
    assert rows["qemu"]["kind"] == "hypervisor" and rows["qemu"]["distribution"] == "runv-qemu"
    assert rows["tcg"]["hooks"] == ["boot", "guest_modules", "hypervisor_info", "probe"]  # the VM that boot returns does the rest
    assert rows["tcg"]["capabilities"]["pause"] and rows["tcg"]["capabilities"]["nic_hotplug"] and rows["tcg"]["templates"]
    assert not rows["kvmtool"]["capabilities"]["nics"] and not rows["xen"]["capabilities"]["nics"]
    assert rows["bundle"]["hooks"] == ["attach_storage", "detach_storage", "guest_modules", "probe"]
    assert rows["qemu"]["priority"] > rows["tcg"]["priority"]
    assert all(row["error"] is None and row["disabled"] is None for row in rows.values())
    table = runv("plugins", env=plugin_env, check=True).stdout
    assert table.splitlines()[0].split() == ["KIND", "NAME", "DISTRIBUTION", "VERSION", "STATE", "HOOKS"]


def test_a_broken_plugin_is_listed_with_its_error(runv, broken_plugin_env, guest_files):
    rows = {row["name"]: row for row in json.loads(runv("plugins", "--json", env=broken_plugin_env, check=True).stdout)}
    assert rows["broken"]["error"] == "ImportError: the broken plugin cannot load libfoo.so"
    assert rows["broken"]["distribution"] == "runv-broken" and rows["broken"]["version"] == "0.0.1"
    assert rows["tcg"]["error"] is None
    table = runv("plugins", env=broken_plugin_env, check=True).stdout
    assert "hypervisor plugin 'broken' failed to load: ImportError" in table
    kernel, initrd = guest_files
    check = runv("--kernel", kernel, "--initrd", initrd, "--hypervisor", "fake", "check", "--json", env=broken_plugin_env)
    assert check.returncode == 0, check.stderr  # the selection can run, whatever else is broken
    entry = next(e for e in json.loads(check.stdout)["entries"] if e["name"] == "broken")
    assert entry["status"] == "broken" and "reinstall runv-broken" in entry["reason"]


def test_disabled_by_config_file_and_environment(runv, plugin_env, tmp_path, make_bundle, guest_files):
    config = tmp_path / "config.toml"
    config.write_text('[plugins]\ndisabled = ["xen"]\n')
    env = {**plugin_env, "RUNV_CONFIG": str(config), "RUNV_DISABLE_PLUGINS": "kvmtool"}
    rows = {row["name"]: row for row in json.loads(runv("plugins", "--json", env=env, check=True).stdout)}
    assert rows["xen"]["disabled"] == str(config) and rows["xen"]["hooks"] == []
    assert rows["kvmtool"]["disabled"] == "RUNV_DISABLE_PLUGINS"
    assert rows["tcg"]["disabled"] is None
    assert f"disabled by {config}" in runv("plugins", env=env, check=True).stdout
    entries = {e["name"]: e for e in json.loads(runv("check", "--json", env=env).stdout)["entries"]}
    assert entries["xen"]["status"] == "disabled"
    kernel, initrd = guest_files
    result = runv("--kernel", kernel, "--initrd", initrd, "--hypervisor", "xen", "create", "-b", make_bundle(["true"]), "c1",
                  env=env)
    assert result.returncode == 1
    assert f"hypervisor plugin 'xen' is disabled by {config}" in result.stderr


def test_a_malformed_config_is_one_clear_line(runv, plugin_env, tmp_path):
    config = tmp_path / "config.toml"
    config.write_text("[plugins\n")
    result = runv("plugins", env={**plugin_env, "RUNV_CONFIG": str(config)})
    assert result.returncode == 1
    assert result.stderr.startswith(f"runv: cannot read {config}:") and result.stderr.count("\n") == 1


def test_check_fails_without_a_guest_image(runv, plugin_env, tmp_path, fake_site):
    env = {**plugin_env, "PYTHONPATH": str(fake_site)}
    result = runv("--hypervisor", "fake", "--kernel", tmp_path / "kernel", "--initrd", tmp_path / "initrd", "check", env=env)
    assert result.returncode == 1
    assert f"no guest kernel at {tmp_path / 'kernel'}: run `runv guest build`" in result.stdout
    assert result.stderr == "runv: the default selection cannot run here: guest kernel missing; guest initrd missing\n"


@pytest.mark.parametrize("args", [["--help"], ["state", "nope"], ["list"], ["kill", "nope", "9"]])
def test_hot_commands_import_no_plugin_machinery(args, tmp_path, plugin_env):
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", "from runv.cli.app import main; main()",
                          "--root", str(tmp_path), *args], capture_output=True, text=True, env=plugin_env, timeout=60)
    imported = [line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if "|" in line]
    assert imported, out.stderr
    heavy = [m for m in imported if m.split(".")[0] in ("pluggy", "qemu", "runv_qemu", "runv_tcg", "runv_kvmtool",
                                                        "runv_xen", "runv_bundle", "tomllib")
             or m in ("runv.loader", "runv.cli.check.", "runv.hookspecs")]
    assert heavy == []


# ---------------------------------------------------------------- the example third-party plugin


def test_example_plugin_is_discovered_after_pip_install(plainfs_venv, plugin_env):
    rows = {r["name"]: r for r in json.loads(plainfs_venv.runv("plugins", "--json", env=plugin_env).stdout)}
    assert rows["plainfs"]["kind"] == "storage" and rows["plainfs"]["distribution"] == "runv-plainfs"
    assert rows["plainfs"]["hooks"] == ["attach_storage", "detach_storage"]
    check = json.loads(plainfs_venv.runv("--storage", "plainfs", "check", "--json", env=plugin_env).stdout)
    assert next(e for e in check["entries"] if e["name"] == "plainfs")["status"] == "ok"  # usable: it has no probe
    assert check["default"]["storage"] == "plainfs"
    # and it is not visible outside the throwaway environment
    assert "plainfs" not in subprocess.run([str(Path(sys.executable).with_name("runv")), "plugins"], capture_output=True,
                                           text=True, env=plugin_env).stdout


def test_example_plugins_own_tests_pass(plainfs_venv, plugin_env):
    result = subprocess.run([str(plainfs_venv.python), "-m", "pytest", "-q", "-p", "no:cacheprovider",
                             str(REPO / "examples" / "runv-plainfs" / "tests")], capture_output=True, text=True, env=plugin_env,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
