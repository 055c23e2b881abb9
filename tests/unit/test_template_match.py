"""Which template may serve a VM (runv.templates.match): pure functions of the VM, the
hypervisor's TemplateSupport and the records on disk."""

from __future__ import annotations

import os

import pytest

import runv
from runv.api import TemplateSupport
from runv.templates import match
from runv.testing import vm_spec


class Shapes(TemplateSupport):
    """Template support that carries any VM without disks."""

    def shape(self, vm):
        return None if vm.disks else {"machine": "q35", "shares": [s.tag for s in vm.shares]}


@pytest.fixture
def guest(tmp_path):
    kernel, initrd = tmp_path / "kernel", tmp_path / "initrd"
    kernel.write_bytes(b"k" * 10)
    initrd.write_bytes(b"i" * 20)
    return kernel, initrd


@pytest.fixture
def vm(tmp_path, guest):
    return vm_spec(tmp_path / "state", kernel=guest[0], initrd=guest[1], kernel_args=("quiet",))


def test_shape_names_the_hypervisor_machine_and_vmm_part(vm):
    assert match.shape(vm, "tcg", Shapes()) == {"hypervisor": "tcg", "memory_mib": 256, "vcpus": 1,
                                               "kernel_args": ["quiet"], "vmm": {"machine": "q35", "shares": []}}


def test_no_shape_without_template_support_or_when_the_vmm_cannot_carry_the_vm(vm):
    from runv.api import Disk

    assert match.shape(vm, "kvmtool", None) is None
    with_disk = vm_spec(vm.state_dir, disks=(Disk("upper", vm.state_dir / "upper.img"),))
    assert match.shape(with_disk, "tcg", Shapes()) is None


def test_the_default_name_is_stable_and_says_the_size(vm):
    shape = match.shape(vm, "tcg", Shapes())
    name = match.default_name(shape)
    assert name.startswith("tcg-256m-1c-") and name == match.default_name(dict(reversed(shape.items())))
    assert name != match.default_name({**shape, "vcpus": 2})


def test_a_template_of_the_same_guest_is_fresh(guest):
    made = match.source(*guest, digest=True)
    assert "sha256" in made["kernel"] and made["runv"] == runv.__version__
    assert match.stale_reason({"source": made}, match.source(*guest)) is None


def test_a_changed_kernel_or_another_runv_makes_it_stale(guest):
    record = {"source": match.source(*guest)}
    guest[0].write_bytes(b"another kernel")
    assert match.stale_reason(record, match.source(*guest)) == f"made from another kernel ({guest[0]} changed since)"
    record["source"]["runv"] = "0.0.0"
    assert match.stale_reason(record, match.source(*guest)) == f"made by runv 0.0.0, this is {runv.__version__}"


def test_a_touched_initrd_is_stale_even_with_the_same_size(guest):
    record = {"source": match.source(*guest)}
    st = os.stat(guest[1])
    os.utime(guest[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert "another initrd" in match.stale_reason(record, match.source(*guest))


def test_missing_or_truncated_files_make_it_broken(tmp_path):
    (tmp_path / "state").write_bytes(b"x" * 100)
    record = {"saved": {"files": {"state": 100}}}
    assert match.broken_reason(tmp_path, record) is None
    assert match.broken_reason(tmp_path, {"saved": {"files": {"state": 200}}}) == "its file state is truncated (100 of 200 bytes)"
    assert match.broken_reason(tmp_path, {"saved": {"files": {"memory": 1}}}) == "its file memory is missing"


@pytest.fixture
def world(tmp_path, vm, guest):
    """A template directory with one good record of ``vm``'s shape and one of another."""
    wanted = match.shape(vm, "tcg", Shapes())
    current = match.source(*guest)
    base = tmp_path / "templates"
    for name in ("good", "other"):
        (base / name).mkdir(parents=True)
        (base / name / "state").write_bytes(b"s" * 8)
    good = {"name": "good", "shape": wanted, "source": current, "saved": {"files": {"state": 8}}}
    other = {**good, "name": "other", "shape": {**wanted, "memory_mib": 512}}
    return wanted, current, base, good, other


def test_select_off_never_uses_a_template(world):
    wanted, current, base, good, other = world
    assert match.select(match.OFF, wanted, current, [good], base, "tcg") == (None, None)


def test_select_auto_takes_the_record_of_the_same_shape_silently_skipping_others(world):
    wanted, current, base, good, other = world
    assert match.select(match.AUTO, wanted, current, [other, good], base, "tcg") == (good, None)
    assert match.select(match.AUTO, wanted, current, [other], base, "tcg") == (None, None)


def test_select_auto_warns_about_a_matching_template_it_cannot_use(world):
    wanted, current, base, good, other = world
    (base / "good" / "state").write_bytes(b"s")
    record, warning = match.select(match.AUTO, wanted, current, [good], base, "tcg")
    assert record is None and warning == "template 'good' not used: its file state is truncated (1 of 8 bytes)"


def test_select_by_name_warns_when_the_shape_differs(world):
    wanted, current, base, good, other = world
    record, warning = match.select("other", wanted, current, [other], base, "tcg")
    assert record is None and warning.startswith("template 'other' not used: it was made for another VM shape")


def test_select_by_name_warns_when_stale(world):
    wanted, current, base, good, other = world
    stale = {**good, "source": {**good["source"], "runv": "0.0.0"}}
    record, warning = match.select("good", wanted, current, [stale], base, "tcg")
    assert record is None and warning == f"template 'good' not used: made by runv 0.0.0, this is {runv.__version__}"


def test_select_when_the_hypervisor_cannot_start_this_vm_from_a_template(world):
    wanted, current, base, good, other = world
    assert match.select(match.AUTO, None, current, [good], base, "kvmtool") == (None, None)
    record, warning = match.select("good", None, current, [good], base, "kvmtool")
    assert record is None and warning == "template 'good' not used: hypervisor 'kvmtool' cannot start this VM from a template"


def test_a_vm_grows_from_the_largest_template_not_larger_than_it():
    records = [{"shape": {"memory_mib": m, "vcpus": c}} for m, c in ((256, 1), (512, 2), (1024, 1), (256, 1), (632, 4))]
    assert match.smaller_sizes(records, 632, 2) == [(512, 2), (256, 1)]  # not itself, nothing larger
    assert match.smaller_sizes(records, 256, 1) == []
    assert match.smaller_sizes([{"shape": {}}, {}], 632, 2) == []
