"""The CLI's error paths, through the real ``runv`` command: one line on stderr, exit 1,
nothing created. The fake VMM is installed (a dist-info on PYTHONPATH), so these run
without QEMU and the subprocesses find plugins the way users' runv does."""

from __future__ import annotations

import json

import pytest


def refused(result) -> str:
    assert result.returncode == 1 and result.stdout == "", result
    assert result.stderr.startswith("runv: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr.removeprefix("runv: ").rstrip("\n")


@pytest.mark.parametrize("cid", ["../escape", "a/b", "-dash", ".hidden"])
def test_a_bad_id_is_refused_before_anything_is_made(fake, make_bundle, root, cid):
    message = refused(fake("create", "--bundle", make_bundle(["true"]), "--", cid))
    assert message.startswith(f"invalid container id {cid!r}")
    assert not root.exists() or list(root.iterdir()) == []


def test_a_missing_bundle_is_named(fake, tmp_path, root):
    message = refused(fake("create", "--bundle", tmp_path / "nowhere", "box"))
    assert str(tmp_path / "nowhere") in message
    assert not (root / "box").exists()


def test_a_bundle_with_a_broken_config_names_the_field(fake, make_bundle):
    bundle = make_bundle(["true"])
    config = json.loads((bundle / "config.json").read_text())
    config["process"]["args"] = "true"
    (bundle / "config.json").write_text(json.dumps(config))
    assert "process.args" in refused(fake("create", "--bundle", bundle, "box"))


def test_an_unknown_hypervisor_lists_the_installed_ones(fake, make_bundle, root):
    message = refused(fake("--hypervisor", "nope", "create", "--bundle", make_bundle(["true"]), "box"))
    assert message.startswith("hypervisor plugin 'nope' is not installed (available: ")
    assert "fake" in message and message.endswith("see `runv plugins`)")
    assert not (root / "box").exists()


def test_a_disabled_hypervisor_says_what_disabled_it(fake, make_bundle):
    env = {**fake.env, "RUNV_DISABLE_PLUGINS": "fake"}
    message = refused(fake("create", "--bundle", make_bundle(["true"]), "box", env=env))
    assert message.startswith("hypervisor plugin 'fake' is disabled by RUNV_DISABLE_PLUGINS")


def test_an_unknown_container_does_not_exist(fake):
    for verb in (["state"], ["start"], ["kill"], ["delete"], ["pause"], ["exec"]):
        message = refused(fake(*verb, "ghost", *(["true"] if verb == ["exec"] else [])))
        assert "does not exist" in message, verb


def test_an_existing_id_is_refused(fake, make_bundle):
    fake("create", "--bundle", make_bundle(["sleep", "1000"]), "box", check=True)
    assert refused(fake("create", "--bundle", make_bundle(["true"], name="other"), "box")) == (
        "container with id box already exists")
    assert json.loads(fake("state", "box", check=True).stdout)["status"] == "created"


def test_the_fake_vmm_is_listed_as_an_installed_plugin(fake):
    listed = fake("plugins", check=True).stdout.splitlines()
    assert any(line.split()[:3] == ["hypervisor", "fake", "runv-fakevmm"] for line in listed), listed
