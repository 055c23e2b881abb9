"""Helpers for the tests that drive runv through real clients (Podman, containerd, Docker)."""

from __future__ import annotations

import fcntl
import gzip
import hashlib
import io
import json
import os
import pty
import select
import signal
import struct
import subprocess
import tarfile
import termios
import time
from pathlib import Path

from runv.testing.host import RUNV, run_captured


def run(argv, *, env=None, timeout=180, stdin=subprocess.DEVNULL, cwd=None) -> subprocess.CompletedProcess:
    """Runs a client command; output goes through files, not pipes (a container may keep
    a pipe open for its life, and the client's children with it)."""
    return run_captured(list(map(str, argv)), env=env, stdin=stdin, timeout=timeout, cwd=cwd)


class PtySession:
    """A client command on a pty the test drives, as a user's terminal would."""

    def __init__(self, argv, *, env=None, rows=30, cols=100) -> None:
        self.output = b""
        pid, master = pty.fork()
        if pid == 0:
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
                os.execvpe(str(argv[0]), list(map(str, argv)), env or os.environ)
            finally:
                os._exit(127)
        self.pid, self.master = pid, master
        self.rows, self.cols = rows, cols

    def read_until(self, needle: bytes, timeout: float = 60) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.output:
            left = deadline - time.monotonic()
            assert left > 0, f"{needle!r} did not appear; got {self.output!r}"
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    data = b""
                assert data, f"the terminal closed before {needle!r}; got {self.output!r}"
                self.output += data
        return self.output

    def write(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait(self, timeout: float = 60) -> int:
        """The command's exit code (reading what it still prints meanwhile)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.close()
                return os.waitstatus_to_exitcode(status)
            ready, _, _ = select.select([self.master], [], [], 0.1)
            if ready:
                try:
                    self.output += os.read(self.master, 4096)
                except OSError:
                    time.sleep(0.1)
        os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)
        self.close()
        raise AssertionError(f"the command did not exit within {timeout} s; output {self.output!r}")

    def check_shell(self, terminal: bytes, code: int, prompt_timeout: float = 60) -> None:
        """Drives the shell the command runs: at its prompt, ``tty`` names ``terminal`` and
        ``stty size`` is this pty's size; ``exit CODE`` ends the command with that code."""
        self.read_until(b"# ", timeout=prompt_timeout)
        self.write(b"tty; stty size\r")
        self.read_until(f"{self.rows} {self.cols}".encode())
        assert terminal in self.output
        self.write(f"exit {code}\r".encode())
        assert self.wait() == code

    def close(self) -> None:
        if self.master >= 0:
            os.close(self.master)
            self.master = -1


def rootfs_tar(rootfs: Path, path: Path) -> Path:
    """``rootfs`` as a tar file (symlinks kept), the input of ``podman import``."""
    with tarfile.open(path, "w") as tar:
        for entry in sorted(rootfs.iterdir()):
            tar.add(entry, arcname=entry.name)
    return path


def _image_blobs(rootfs: Path, cmd: tuple[str, ...] = ("sh",)) -> tuple[bytes, bytes]:
    """The config and the gzipped layer of a one-layer image of ``rootfs`` whose command is ``cmd``."""
    layer_raw = io.BytesIO()
    with tarfile.open(fileobj=layer_raw, mode="w") as tar:
        for entry in sorted(rootfs.iterdir()):
            tar.add(entry, arcname=entry.name)
    diff_id = "sha256:" + hashlib.sha256(layer_raw.getvalue()).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Env": ["PATH=/bin"], "Cmd": list(cmd), "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        }
    ).encode()
    return config, gzip.compress(layer_raw.getvalue(), mtime=0)


def _tar_of(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name_in_tar, data in files.items():
            info = tarfile.TarInfo(name_in_tar)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def oci_archive(rootfs: Path, path: Path, name: str, cmd: tuple[str, ...] = ("sh",)) -> Path:
    """An OCI image layout tarball (one layer: ``rootfs``, command ``cmd``) that ``ctr images
    import`` takes, named ``name`` through the io.containerd.image.name annotation."""
    config, layer = _image_blobs(rootfs, cmd)

    def descriptor(media_type: str, data: bytes, **extra) -> dict:
        return {"mediaType": media_type, "digest": "sha256:" + _sha256(data), "size": len(data), **extra}

    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [descriptor("application/vnd.oci.image.layer.v1.tar+gzip", layer)],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                descriptor(
                    "application/vnd.oci.image.manifest.v1+json",
                    manifest,
                    annotations={"io.containerd.image.name": name, "org.opencontainers.image.ref.name": name.rsplit(":", 1)[-1]},
                    platform={"architecture": "amd64", "os": "linux"},
                )
            ],
        }
    ).encode()
    blobs = {"blobs/sha256/" + _sha256(blob): blob for blob in (config, manifest, layer)}
    return _tar_of(path, {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index, **blobs})


def docker_archive(rootfs: Path, path: Path, name: str) -> Path:
    """The same image as a ``docker save`` tarball (``manifest.json``, the config, the
    layer), tagged ``name``: what ``docker load`` takes (Docker loads OCI layouts only
    from version 25; Debian 12's is 20.10)."""
    config, layer = _image_blobs(rootfs)
    config_name, layer_name = _sha256(config) + ".json", _sha256(layer) + "/layer.tar"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [name], "Layers": [layer_name]}]).encode()
    return _tar_of(path, {"manifest.json": manifest, config_name: config, layer_name: layer})


def containerd_config(base: Path, top: str = "", tables: str = "") -> str:
    """A containerd 1.6 config (version 2) whose root, state and sockets are under ``base``,
    with more top-level keys (``top``) and tables (``tables``)."""
    return f"""\
version = 2
root = "{base}/root"
state = "{base}/state"
{top}
[grpc]
  address = "{base}/containerd.sock"

[ttrpc]
  address = "{base}/containerd.sock.ttrpc"

[debug]
  address = "{base}/debug.sock"

[plugins."io.containerd.internal.v1.opt"]
  path = "{base}/opt"
{tables}"""


def stop_daemon(proc: subprocess.Popen, containerd_socket: Path) -> None:
    """Stops a daemon the test started (TERM, then KILL after 30 s) and the
    containerd-shim-runc-v2 processes of the containerd at ``containerd_socket``, which
    outlive it."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and argv[0].endswith(b"containerd-shim-runc-v2") and str(containerd_socket).encode() in argv:
            os.kill(int(entry), signal.SIGKILL)


def wait_for_daemon(name: str, proc: subprocess.Popen, ready, log: Path, cleanup, timeout: float) -> None:
    """Waits until ``ready()``; a daemon that exits or is not ready within ``timeout`` seconds
    is cleaned up and its tests skipped with the tail of its ``log``."""
    import pytest

    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:]
            cleanup()
            pytest.skip(f"{name} did not start here: {tail}")
        time.sleep(0.2)


def qemu_of(runv_root: Path, container_id: str) -> int | None:
    """The PID of the QEMU running the VM of ``container_id`` under ``runv_root``."""
    want = str(runv_root / container_id)
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.readlink(f"/proc/{entry}/cwd") == want:
                with open(f"/proc/{entry}/comm") as f:
                    if f.read().startswith("qemu-system"):
                        return int(entry)
        except OSError:
            continue
    return None


def cgroups_of(pid: int) -> set[str]:
    """The cgroup paths of ``pid``, in every hierarchy."""
    return {line.split(":", 2)[2] for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines()}


def runv_ids(runv_root: Path) -> list[str]:
    """Containers runv still has under ``runv_root`` (podman/containerd must delete theirs)."""
    out = run([RUNV, "--root", runv_root, "list", "-q"], timeout=30).stdout
    return out.split()


def remove_cgroups(*directories: str) -> None:
    """Removes the cgroup ``directories`` (relative, children before their parents) in every
    hierarchy where they are empty: a client's cgroup parent, once the test is done with it."""
    cgroups = Path("/sys/fs/cgroup")
    for hierarchy in ("", *os.listdir(cgroups)):
        for directory in directories:
            try:
                (cgroups / hierarchy / directory).rmdir()
            except OSError:
                pass  # not there, or not empty


def mounts_under(directory: Path) -> list[str]:
    """Mount points under ``directory`` (deepest first), from /proc/self/mountinfo."""
    found = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            point = line.split()[4].replace("\\040", " ")
            if point == str(directory) or point.startswith(str(directory) + "/"):
                found.append(point)
    return sorted(found, key=len, reverse=True)
