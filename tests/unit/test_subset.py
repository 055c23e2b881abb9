"""What a distro packager ships (the ``subset`` fixture, tests/conftest.py: runv, runv-tcg with
the runv-qemu driver it needs, and runv-bundle as plain wheels): only those plugins are there
(a container runs with them: tests/vm/test_vm_subset.py)."""

import json
import subprocess


def test_only_the_shipped_plugins_are_there(subset):
    rows = json.loads(subprocess.run([str(subset), "plugins", "--json"], capture_output=True, text=True, check=True).stdout)
    assert sorted((r["kind"], r["name"]) for r in rows) == [("hypervisor", "qemu"), ("hypervisor", "tcg"), ("storage", "bundle")]
    assert all(not r.get("error") for r in rows)
