"""The example hypervisor plugin (examples/runv-cloudhv) as a third party ships it: a wheel
built with ``pip wheel``, installed next to runv's own wheel (and runv-bundle's) into a
fresh virtualenv, found by `runv plugins` from its entry point, and reported by `runv check`
as unusable with its probe's reason (Cloud Hypervisor is not installed here); in the same
environment a container runs on the fake VMM that the runv wheel ships (runv.testing). Its unit tests run in runv's own
test run too (pyproject's testpaths); here they run once more against the installed wheel.

The virtualenv borrows the dependencies (attrs, pluggy, typer, pytest) from this
environment through a ``.pth`` file, as tests/conftest.py's plainfs_venv does, but
runv itself comes from the wheel, so the core's packaging is what is tested.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "runv-cloudhv"


def wheel(source: Path, out: Path) -> Path:
    """``pip wheel --no-deps SOURCE``: the one wheel it builds."""
    result = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    (built,) = out.glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtualenv with the runv, runv-cloudhv and runv-bundle wheels installed; returns its python."""
    base = tmp_path_factory.mktemp("cloudhv")
    wheels = [wheel(REPO, base / "core"), wheel(EXAMPLE, base / "example"), wheel(REPO / "plugins" / "bundle", base / "bundle")]
    subprocess.run([sys.executable, "-m", "venv", str(base / "venv")], check=True, timeout=120)
    python = base / "venv" / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    ours = sysconfig.get_paths()["purelib"]  # the dependencies (after the venv's own packages on sys.path)
    Path(site, "runv-deps.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    result = subprocess.run([str(python), "-m", "pip", "install", "--no-deps", "-q", *map(str, wheels)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return python


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    values = {k: v for k, v in os.environ.items() if k not in ("RUNV_DISABLE_PLUGINS", "PYTHONPATH", "RUNV_CLOUDHV")}
    values["RUNV_CONFIG"] = str(tmp_path / "no-config.toml")
    return values


def run(python: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), *args], capture_output=True, text=True, env=env, timeout=180,
                          stdin=subprocess.DEVNULL)


def runv(python: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run(python.with_name("runv"), *args, env=env)  # the console script the runv wheel installed


def test_runv_and_the_plugin_come_from_their_wheels(venv, env):
    where = run(venv, "-c", "import runv, runv_cloudhv; print(runv.__file__); print(runv_cloudhv.__file__)", env=env)
    assert where.returncode == 0, where.stderr
    site = str(venv.parent.parent / "lib")
    assert all(path.startswith(site) for path in where.stdout.split()), where.stdout


def test_runv_plugins_lists_cloudhv_with_its_hooks(venv, env):
    result = runv(venv, "plugins", "--json", env=env)
    assert result.returncode == 0, result.stderr
    row = {r["name"]: r for r in json.loads(result.stdout)}["cloudhv"]
    assert (row["kind"], row["distribution"], row["version"], row["module"]) == ("hypervisor", "runv-cloudhv", "0.1.0",
                                                                                 "runv_cloudhv")
    assert row["hooks"] == ["boot", "guest_modules", "hypervisor_info", "probe"]
    assert row["error"] is None and row["disabled"] is None and row["priority"] == 16 and row["templates"] is False
    caps = row["capabilities"]
    assert caps["shared_fs"]["fstype"] == "virtiofs" and caps["disk_formats"] == ["raw"]
    assert caps["agent"] == {"kind": "vsock", "device": "", "port": 1024, "connect_preamble": "CONNECT 1024"}
    assert (caps["nics"], caps["nic_hotplug"], caps["pause"]) == (True, False, True)
    table = runv(venv, "plugins", env=env).stdout
    assert any(line.split()[:5] == ["hypervisor", "cloudhv", "runv-cloudhv", "0.1.0", "enabled"]
               and line.endswith("boot,guest_modules,hypervisor_info,probe") for line in table.splitlines()), table
    # and it is not visible outside the throwaway environment
    outside = subprocess.run([str(Path(sys.executable).with_name("runv")), "plugins"], capture_output=True, text=True,
                             env=env, timeout=60)
    assert "cloudhv" not in outside.stdout


def test_runv_check_reports_it_unusable_with_the_probes_reason(venv, env):
    probe = run(venv, "-c", "import runv_cloudhv; print(runv_cloudhv.probe())", env=env)
    assert probe.returncode == 0, probe.stderr
    reason = probe.stdout.strip()
    if reason == "None":
        pytest.skip("Cloud Hypervisor can run on this host")
    result = runv(venv, "check", "--json", env=env)
    entry = next(e for e in json.loads(result.stdout)["entries"] if e["name"] == "cloudhv")
    assert (entry["status"], entry["reason"], entry["distribution"]) == ("unusable", reason, "runv-cloudhv")
    if subprocess.run(["sh", "-c", "command -v cloud-hypervisor"], capture_output=True).returncode != 0:
        assert reason.startswith("cloud-hypervisor not found on PATH: Debian has no package for it")
    chosen = runv(venv, "--hypervisor", "cloudhv", "check", env=env)  # asked for by name: the selection cannot run
    assert chosen.returncode == 1
    assert "hypervisor 'cloudhv' cannot run here" in chosen.stderr
    assert f"cloudhv    unusable  {reason}" in chosen.stdout


def test_the_examples_own_tests_pass_against_the_wheel(venv, env):
    result = run(venv, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests"), env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_container_runs_there_on_the_fake_vmm(venv, env, tmp_path):
    from runv.testing import fake_vmm_path, leftovers_in, with_path
    from runv.testing.host import make_rootfs

    bundle = tmp_path / "bundle"
    make_rootfs(bundle / "rootfs")
    config = {"ociVersion": "1.0.2", "root": {"path": "rootfs"},
              "process": {"args": ["sh", "-c", "echo from $(cat /etc/passwd | cut -d: -f1); exit 7"], "env": ["PATH=/bin"], "cwd": "/"}}
    (bundle / "config.json").write_text(json.dumps(config))
    guest = [tmp_path / "kernel", tmp_path / "initrd.img"]  # create checks they exist; the fake VMM boots neither
    for path in guest:
        path.write_bytes(b"")
    fake = with_path(env, fake_vmm_path(tmp_path / "fakevmm"))
    result = runv(venv, "--root", str(tmp_path / "state"), "--kernel", str(guest[0]), "--initrd", str(guest[1]),
                  "--hypervisor", "fake", "run", "--bundle", str(bundle), "from-wheel", env=fake)
    assert (result.returncode, result.stdout, result.stderr) == (7, "from root\n", "")
    assert leftovers_in(tmp_path) == []
