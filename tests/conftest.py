"""What tests/unit and tests/vm share beyond the repository's fixtures: environments for
``runv`` subprocesses that see the plugins as installed (and a broken one), and the throwaway
virtualenvs a module's tests install runv or a plugin into (built once per module, so once
per layer that uses them)."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from runv.testing import fake_distribution

REPO = Path(__file__).resolve().parents[1]
BROKEN = {"runv_broken.py": "raise ImportError('the broken plugin cannot load libfoo.so')\n"}


@pytest.fixture
def plugin_env(tmp_path) -> dict[str, str]:
    """A subprocess environment with no config file and nothing disabled."""
    values = {k: v for k, v in os.environ.items() if k not in ("RUNV_DISABLE_PLUGINS", "PYTHONPATH")}
    values["RUNV_CONFIG"] = str(tmp_path / "no-config.toml")
    return values


@pytest.fixture
def broken_plugin_env(plugin_env, tmp_path, fake_site) -> dict[str, str]:
    """``plugin_env`` with a hypervisor plugin ``broken`` installed whose import fails, and
    the fake VMM (``--hypervisor fake``)."""
    fake_distribution(tmp_path / "site", "runv-broken", {"runv.hypervisors": {"broken": "runv_broken"}}, BROKEN)
    return {**plugin_env, "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), str(fake_site)])}


class PlainfsVenv:
    """A throwaway virtualenv that sees runv and its plugins (this environment's packages,
    editable installs included, through a .pth file) and has the example plugin plainfs
    pip-installed into it as its own distribution."""

    def __init__(self, directory: Path) -> None:
        subprocess.run([sys.executable, "-m", "venv", str(directory)], check=True, timeout=120)
        self.python = directory / "bin" / "python"
        site = subprocess.run([str(self.python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                              capture_output=True, text=True, check=True).stdout.strip()
        Path(site, "runv-dev.pth").write_text(f"import site; site.addsitedir({sysconfig.get_paths()['purelib']!r})\n")
        result = subprocess.run([str(self.python), "-m", "pip", "install", "--no-deps", str(REPO / "examples" / "runv-plainfs")],
                                capture_output=True, text=True, timeout=300)
        assert result.returncode == 0, result.stdout + result.stderr

    def runv(self, *args, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
        """``runv ARGS`` run there."""
        return subprocess.run([str(self.python), "-c", "from runv.cli.app import main; main()", *map(str, args)],
                              capture_output=True, text=True, env=env, timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def plainfs_venv(tmp_path_factory) -> PlainfsVenv:
    return PlainfsVenv(tmp_path_factory.mktemp("example") / "venv")


@pytest.fixture(scope="module")
def subset(tmp_path_factory) -> Path:
    """What a distro packager ships: only runv, runv-tcg (with the runv-qemu driver it needs)
    and runv-bundle, installed as plain wheels into an environment of their own; its runv."""
    venv = tmp_path_factory.mktemp("subset") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    sources = [REPO, REPO / "plugins/qemu", REPO / "plugins/tcg", REPO / "plugins/bundle"]
    result = subprocess.run([str(venv / "bin/pip"), "install", "-q", "--disable-pip-version-check", *map(str, sources)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return venv / "bin/runv"
