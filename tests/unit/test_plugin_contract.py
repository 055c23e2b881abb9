"""``runv.api`` is the whole plugin contract: every name it lists loads, type checkers see the
same names, the hooks name no type outside it, and the plugins (runv's and the examples)
type-check against it alone, with their tests reaching the core only through it and
``runv.testing``."""

from __future__ import annotations

import ast
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import runv.api
from runv import hookspecs

REPO = Path(__file__).resolve().parents[2]
PACKAGES = sorted([*REPO.glob("plugins/*/runv_*"), *REPO.glob("examples/*/runv_*")])
PLUGIN_TESTS = sorted(p for p in [*REPO.glob("plugins/*/tests"), *REPO.glob("examples/*/tests")] if p.is_dir())


def static_names() -> set[str]:
    """The names runv/api/__init__.py imports under ``if TYPE_CHECKING:`` (what mypy reads)."""
    tree = ast.parse(Path(runv.api.__file__).read_text())
    block = next(node for node in tree.body if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING")
    names = set()
    for node in block.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("runv.api"):
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, ast.AnnAssign):
            names.add(node.target.id)
    return names


def test_every_listed_name_loads_and_type_checkers_see_the_same_names():
    assert static_names() == set(runv.api.__all__)
    for name in runv.api.__all__:
        assert getattr(runv.api, name) is not None, name


def test_the_hooks_name_only_types_the_contract_exports():
    """Every annotation of a hook specification resolves in runv.api's namespace."""
    namespace = {name: getattr(runv.api, name) for name in runv.api.__all__}
    namespace.update(vars(typing))
    for name in ("hypervisor_info", "probe", "guest_modules", "attach_storage", "configure_net", "prepare_vm", "boot",
                 "exec", "sync_net", "detach_storage", "release_net"):
        hints = typing.get_type_hints(getattr(hookspecs, name), globalns=namespace)
        assert hints, name


def imports_of(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
    return found


@pytest.mark.parametrize("tests", PLUGIN_TESTS, ids=lambda p: str(p.relative_to(REPO)))
def test_plugin_tests_reach_the_core_through_the_contract_and_the_test_helpers(tests):
    wrong = [f"{path.relative_to(REPO)}: {module}" for path in sorted(tests.rglob("*.py")) for module in sorted(imports_of(path))
             if module.split(".")[0] == "runv" and not module.startswith(("runv.api", "runv.testing"))]
    assert wrong == []


def test_the_plugins_type_check_against_runv_api(tmp_path):
    """mypy over every plugin package (runv's and the examples'): they import nothing of
    runv but runv.api (test_imports checks that), so this checks them against the contract."""
    result = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", str(tmp_path), *map(str, PACKAGES)],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
