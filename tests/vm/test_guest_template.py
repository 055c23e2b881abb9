"""`runv guest build` makes the default template, keeps it while the image is unchanged,
and a container under `--template auto` starts from it."""

from __future__ import annotations

import json
import os
import subprocess
import time

import pytest

from runv.testing.host import RUNV, run_captured


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
    (tmp_path / "data").mkdir()
    (tmp_path / "hosts").write_text("10.1.2.3 there\n")
    volumes = [{"destination": "/data", "type": "bind", "source": str(tmp_path / "data"), "options": ["rbind"]},
               {"destination": "/etc/hosts", "type": "bind", "source": str(tmp_path / "hosts"), "options": ["rbind", "ro"]}]
    bundles = {"c1": make_bundle(["true"]), "c2": make_bundle(["sh", "-c", "cat /etc/hosts > /data/seen"], name="b2", mounts=volumes)}
    runv = [*guest, "--root", str(root), "--template", "auto"]
    try:  # a container without volumes and one with two start from the one default template
        for cid, bundle in bundles.items():
            created = run_captured([*runv, "create", "--bundle", str(bundle), cid], env=env, timeout=180)
            assert created.returncode == 0, created.stderr
            assert json.loads((root / cid / "template.json").read_text()) == {"template": made.name}
        assert run_captured([*runv, "start", "c2"], env=env).returncode == 0
        deadline = time.monotonic() + 60
        state = [*runv, "state", "c2"]
        while json.loads(run_captured(state, env=env).stdout)["status"] != "stopped" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (tmp_path / "data/seen").read_text() == "10.1.2.3 there\n"
    finally:
        for cid in bundles:
            subprocess.run([*runv, "delete", "--force", cid], env=env, capture_output=True, timeout=60)
