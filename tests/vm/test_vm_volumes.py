"""Volumes (the spec's mounts) in a real VM: directories and files, read-only and read-write,
tmpfs and mqueue, seen by the container and, for what it writes, by the host."""

import pytest


@pytest.mark.usefixtures("guest_image")
def test_volumes_ro_rw_file_and_dir(runv, make_bundle, tmp_path):
    rw_dir, ro_dir = tmp_path / "rw", tmp_path / "ro"
    rw_dir.mkdir()
    ro_dir.mkdir()
    (ro_dir / "in").write_text("ro-dir\n")
    rw_file, ro_file = tmp_path / "rw.txt", tmp_path / "ro.txt"
    rw_file.write_text("old\n")
    ro_file.write_text("ro-file\n")
    script = (
        "echo host-sees-me > /data/out; cat /ro/in; echo x > /ro/in 2>/dev/null || echo ro-dir-refused; "
        "cat /etc/ro.txt; echo x > /etc/ro.txt 2>/dev/null || echo ro-file-refused; "
        "cat /etc/rw.txt; echo new > /etc/rw.txt; "
        "echo t > /scratch/t && grep -q ' /scratch tmpfs' /proc/mounts && echo tmpfs-ok; "
        "grep -q ' /dev/mqueue mqueue' /proc/mounts && echo mqueue-ok"
    )
    mounts = [
        {"destination": "/data", "type": "bind", "source": str(rw_dir), "options": ["rbind", "rw"]},
        {"destination": "/ro", "type": "bind", "source": str(ro_dir), "options": ["rbind", "ro"]},
        {"destination": "/etc/ro.txt", "type": "bind", "source": str(ro_file), "options": ["bind", "ro"]},
        {"destination": "/etc/rw.txt", "type": "bind", "source": str(rw_file), "options": ["bind"]},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec"]},
        {"destination": "/proc", "type": "proc", "source": "proc"},
    ]
    bundle = make_bundle(["sh", "-c", script], mounts=mounts, annotations={"io.runv.storage.overlay": "true"})
    result = runv("run", "--bundle", bundle, "vols")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ro-dir", "ro-dir-refused", "ro-file", "ro-file-refused", "old", "tmpfs-ok",
                                     "mqueue-ok"]
    assert (rw_dir / "out").read_text() == "host-sees-me\n"
    assert rw_file.read_text() == "new\n"
    assert (ro_dir / "in").read_text() == "ro-dir\n" and ro_file.read_text() == "ro-file\n"
    assert not (bundle / "rootfs/data").exists()  # the mount points went into the upper layer
