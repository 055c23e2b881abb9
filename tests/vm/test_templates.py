"""VM templates: containers started from a saved, booted VM (and the faults that must boot cold)."""

import json
import os
import shutil
import stat
import struct
import threading
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("guest_image")

RESTORED = "VM restored from template"


def copy_template(template_dir: Path, name: str) -> Path:
    """A copy of template ``test`` named ``name`` (the RAM file hard-linked: it is never written)."""
    source, target = template_dir / "test", template_dir / name
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(mode=0o700)
    for entry in source.iterdir():
        if entry.name == "memory":
            os.link(entry, target / entry.name)
        else:
            shutil.copy2(entry, target / entry.name)
    record = json.loads((target / "template.json").read_text())
    record["name"] = name
    (target / "template.json").write_text(json.dumps(record))
    return target


def test_template_files_are_root_only_and_listed(runv, template_dir):
    path = template_dir / "test"
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for entry in path.iterdir():
        assert stat.S_IMODE(entry.stat().st_mode) == 0o600, entry
    listed = json.loads(runv("template", "list", "--format", "json", check=True).stdout)
    assert [(t["name"], t["status"], t["memory_mib"]) for t in listed if t["name"] == "test"] == [("test", "ok", 256)]


def test_run_from_template_prints_output_and_exit_code(runv, make_bundle, tmp_path, template_dir):
    log = tmp_path / "runv.log"
    bundle = make_bundle(["sh", "-c", "echo out; echo err >&2; hostname; exit 3"])
    started = time.monotonic()
    result = runv("--log", log, "run", "--bundle", bundle, "t1")
    took = time.monotonic() - started
    assert result.returncode == 3, result.stderr
    assert result.stdout == "out\nrunv-test\n"
    assert result.stderr == "err\n"
    assert RESTORED in log.read_text()
    assert took < 5, f"a template start took {took:.1f} s"


def test_two_clones_at_once_are_distinct(runv, make_bundle, tmp_path, template_dir):
    script = "hostname; date +%s; head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \\n'; echo; echo mine > /mine; cat /mine"
    results = {}

    def run(name):
        bundle = make_bundle(["sh", "-c", script], name=name, hostname=name)
        results[name] = (runv("--log", tmp_path / f"{name}.log", "run", "--bundle", bundle, name), bundle)

    before = time.time()
    threads = [threading.Thread(target=run, args=(name,)) for name in ("clone-a", "clone-b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    after = time.time()
    randoms = set()
    for name, (result, bundle) in results.items():
        assert result.returncode == 0, result.stderr
        hostname, clock, random, mine = result.stdout.splitlines()
        assert hostname == name and mine == "mine"
        assert before - 2 <= int(clock) <= after + 2, (clock, before, after)
        assert len(random) == 32
        randoms.add(random)
        assert (bundle / "rootfs/mine").read_text() == "mine\n"  # its own rootfs
        assert RESTORED in (tmp_path / f"{name}.log").read_text()
    assert len(randoms) == 2, "two clones read the same random bytes"


def test_template_off_boots_cold(runv, make_bundle, tmp_path, template_dir):
    log = tmp_path / "runv.log"
    # the guest's CRNG is fed by the host from boot (virtio-rng), so its first readers do not wait for jitter entropy
    script = "echo cold; cat /sys/class/misc/hw_random/rng_current"
    result = runv("--log", log, "--template", "off", "run", "--bundle", make_bundle(["sh", "-c", script]), "t2")
    assert (result.returncode, result.stdout, result.stderr) == (0, "cold\nvirtio_rng.0\n", "")
    assert RESTORED not in log.read_text()


def test_stale_template_is_not_used(runv, make_bundle, tmp_path, template_dir):
    path = copy_template(template_dir, "stale")
    record = json.loads((path / "template.json").read_text())
    record["source"]["kernel"]["mtime_ns"] += 1  # as if the kernel was rebuilt since
    (path / "template.json").write_text(json.dumps(record))
    log = tmp_path / "runv.log"
    result = runv("--log", log, "--template", "stale", "run", "--bundle", make_bundle(["echo", "ok"]), "t3")
    assert (result.returncode, result.stdout) == (0, "ok\n")
    assert result.stderr.startswith("runv: warning: template 'stale' not used: made from another kernel")
    assert len(result.stderr.splitlines()) == 1
    assert RESTORED not in log.read_text()
    listed = json.loads(runv("template", "list", "--format", "json", check=True).stdout)
    assert [t["status"] for t in listed if t["name"] == "stale"][0].startswith("unusable: made from another kernel")
    runv("template", "rm", "stale", check=True)
    assert not path.exists()


@pytest.mark.parametrize("fault", ["truncated", "corrupt", "missing"])
def test_broken_template_boots_cold_with_a_warning(runv, make_bundle, tmp_path, template_dir, fault):
    name = f"broken-{fault}"
    if fault != "missing":
        path = copy_template(template_dir, name)
        state = path / "state"
        data = bytearray(state.read_bytes())
        if fault == "truncated":
            state.write_bytes(data[: len(data) // 2])
        else:  # same size, garbage inside: only QEMU's load notices
            data[1000:] = b"\xa5" * (len(data) - 1000)
            state.write_bytes(data)
    started = time.monotonic()
    result = runv("--template", name, "run", "--bundle", make_bundle(["echo", "ok"]), "t4", timeout=120)
    assert (result.returncode, result.stdout) == (0, "ok\n"), result.stderr
    assert result.stderr.startswith(f"runv: warning: template '{name}'") and "booting cold" in result.stderr
    assert len(result.stderr.splitlines()) == 1
    assert time.monotonic() - started < 90
    shutil.rmtree(template_dir / name, ignore_errors=True)


def test_template_names_are_checked(runv):
    refused = runv("template", "rm", "../etc")
    assert refused.returncode == 1 and "invalid template name" in refused.stderr
    missing = runv("template", "rm", "nope")
    assert missing.returncode == 1 and "does not exist" in missing.stderr


PAGE = os.sysconf("SC_PAGE_SIZE")


def guest_ram_frames(pid: int) -> set[int]:
    """The physical page frames behind the QEMU process's guest RAM (its mappings of 256 MiB
    and more) that are present, from /proc/PID/pagemap (root reads the frame numbers). Two
    VMs share a page of guest RAM exactly when they share a frame; the VM's own file server,
    which maps its RAM too, is not another VM."""
    frames = set()
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pagemap:
        for line in maps:
            start, end = (int(x, 16) for x in line.split()[0].split("-"))
            if end - start < 256 << 20:
                continue
            pagemap.seek(start // PAGE * 8)
            entries = pagemap.read((end - start) // PAGE * 8)
            for (entry,) in struct.iter_unpack("<Q", entries):
                if entry >> 63:  # present
                    frames.add(entry & ((1 << 55) - 1))
    return frames


def test_private_clones_share_no_guest_memory_and_shared_ones_do(runv, root, make_bundle, template_dir):
    """The session template is private (the default): two idle clones share no page of guest
    RAM (no physical frame); clones of a ``--clones shared`` template share the template's pages."""
    from runv.testing import vm_processes_in

    assert json.loads((template_dir / "test" / "template.json").read_text())["clones"] == "private"
    made = runv("template", "create", "--clones", "shared", "dense", timeout=300)
    assert made.returncode == 0, made.stderr
    listed = {t["name"]: t["clones"] for t in json.loads(runv("template", "list", "--format", "json", check=True).stdout)}
    assert listed["test"] == "private" and listed["dense"] == "shared"
    bundle = make_bundle(["sleep", "1000"])
    shared: dict[str, float] = {}
    seen: set[int] = set()
    try:
        for template in ("test", "dense"):
            for i in range(2):
                assert runv("--template", template, "run", "-d", "--bundle", bundle, f"{template}-{i}").returncode == 0
            time.sleep(2)
            clones = [pid for pid in vm_processes_in(root) if pid not in seen]
            seen.update(clones)
            one, other = (guest_ram_frames(pid) for pid in clones)
            shared[template] = len(one & other) * PAGE / (1 << 20)
    finally:
        for template in ("test", "dense"):
            for i in range(2):
                runv("delete", "--force", f"{template}-{i}")
        runv("template", "rm", "dense")
    print(f"guest RAM two clones share, MiB: private {shared['test']:.1f}, shared {shared['dense']:.1f}")
    assert shared["test"] == 0 and shared["dense"] > 10, shared


def test_a_shape_without_a_template_boots_cold_once_and_one_is_made_in_the_background(runv, make_bundle, root, tmp_path):
    """An empty template directory: the first container boots cold and its shim has a
    template of its size made in the background (at idle priority, in the root cgroup of every
    hierarchy, not the container's); the next container of that size starts from it; what
    the maker did is in background.log. The session turns background
    templates off; this test's config file turns them on again."""
    from runv.testing.host import template_makers, wait_for_template_makers

    templates = tmp_path / "templates"
    config = tmp_path / "config.toml"
    config.write_text("[templates]\nbackground = true\n")
    env = {**os.environ, "RUNV_TEMPLATE_DIR": str(templates), "RUNV_CONFIG": str(config)}
    cgroups_path = {"cgroupsPath": f"/runv-test-{os.getpid()}/bg1"}  # the shim's: the maker must leave it
    assert runv("create", "--bundle", make_bundle(["true"], linux=cgroups_path), "bg1", env=env).returncode == 0
    assert not (root / "bg1/template.json").exists()  # cold: nothing to start from, nothing to warn about
    makers = template_makers()
    assert makers, "no template maker was started"

    def idle_in_the_root_cgroups() -> bool:
        try:
            groups = {line.split(":", 2)[1]: line.split(":", 2)[2] for line in Path(f"/proc/{makers[0]}/cgroup").read_text().splitlines()}
            return os.sched_getscheduler(makers[0]) == os.SCHED_IDLE and all(path == "/" for path in groups.values())
        except OSError:
            return True  # done already

    deadline = time.monotonic() + 30
    while not idle_in_the_root_cgroups():
        assert time.monotonic() < deadline, Path(f"/proc/{makers[0]}/cgroup").read_text()
        time.sleep(0.1)
    assert runv("delete", "--force", "bg1").returncode == 0  # the maker does not depend on the container
    wait_for_template_makers()
    [made] = [entry.name for entry in templates.iterdir() if entry.is_dir() and not entry.name.startswith(".")]
    assert f"template {made} made in the background" in (templates / "background.log").read_text()
    assert json.loads((templates / made / "template.json").read_text())["shape"]["memory_mib"] == 256
    assert runv("create", "--bundle", make_bundle(["true"], name="b2"), "bg2", env=env).returncode == 0
    assert json.loads((root / "bg2/template.json").read_text()) == {"template": made}
    assert not template_makers()  # it had a template: nothing more to make
