"""`runv guest build` makes the default template, keeps it while the image is unchanged,
and a container under `--template auto` starts from it."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from support import RUNV, run_captured

pytestmark = pytest.mark.vm


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (the kernel package cache, QEMU's sandbox)")
def test_guest_build_makes_the_default_template_once(tmp_path, make_bundle):
    templates = tmp_path / "templates"
    env = {**os.environ, "RUNV_TEMPLATE_DIR": str(templates)}
    guest = [RUNV, "--kernel", str(tmp_path / "kernel"), "--initrd", str(tmp_path / "initrd.img")]

    first = run_captured([*guest, "guest", "build"], env=env, timeout=900)
    assert first.returncode == 0, first.stderr
    assert "default template" in first.stderr and "made in" in first.stderr, first.stderr
    [made] = [entry for entry in templates.iterdir() if not entry.name.startswith(".")]
    record = json.loads((made / "template.json").read_text())
    assert record["name"] == made.name and record["source"]["initrd"]["path"] == str(tmp_path / "initrd.img")

    again = run_captured([*guest, "guest", "build"], env=env, timeout=900)  # nothing changed: nothing booted
    assert again.returncode == 0, again.stderr
    assert "guest image up to date" in again.stderr and "default template up to date" in again.stderr, again.stderr
    assert json.loads((made / "template.json").read_text())["created"] == record["created"]

    root = tmp_path / "state"
    bundle = make_bundle(["true"])
    runv = [*guest, "--root", str(root), "--template", "auto"]
    try:
        created = run_captured([*runv, "create", "--bundle", str(bundle), "c1"], env=env, timeout=180)
        assert created.returncode == 0, created.stderr
        assert json.loads((root / "c1" / "template.json").read_text()) == {"template": made.name}
    finally:
        subprocess.run([*runv, "delete", "--force", "c1"], env=env, capture_output=True, timeout=60)
