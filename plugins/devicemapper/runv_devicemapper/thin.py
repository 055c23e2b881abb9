"""A device-mapper thin pool, its base volumes and per-container snapshots, driven with
``dmsetup`` and ``losetup`` (util-linux).

Standard library only (plus :mod:`runv.api`'s errors, tools and images, themselves stdlib only): the tests run this
module inside a runv guest, whose kernel has ``dm-thin-pool``, because CI hosts have no
device-mapper.

Layout, in the pool directory (``[storage] cache_dir``/devicemapper by default)::

    data, metadata     sparse files behind the pool's loop devices (when no block devices
                       are given); the pool's metadata lives in ``metadata``, so bases and
                       snapshots survive reboots (loops are re-attached by ``ensure``)
    devices.json       which thin device id is which base / snapshot, with a state each
    .lock              flock held around every change (concurrent creates are safe)

Every change is recorded in ``devices.json`` *before* it is made in the pool (state
``building`` / ``creating``), so a crash half-way leaves an entry the next call cleans up.
A snapshot's entry names its owner (the container's state directory): one whose owner is
gone (runv and its VMs died with the host, ``/run`` emptied) is reclaimed by the next
snapshot made, and logged.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from runv.api import images
from runv.api.errors import RunvError
from runv.api.tools import run_tool

SECTOR = 512
BLOCK_SECTORS = 128  # 64 KiB pool blocks
LOW_WATER = 1024  # blocks
CHUNK = 1 << 20
BUSY_RETRIES = 10
TOOLS = {"dmsetup": "apt-get install dmsetup", "losetup": "apt-get install util-linux"}
logger = logging.getLogger("runv.devicemapper")


class PoolFull(RunvError):
    pass


def run(*argv: str, what: str = "") -> str:
    """A dmsetup or losetup call; a failure is one line with the tool's last words."""
    return run_tool(argv, what or " ".join(argv), install=TOOLS.get(argv[0], ""))


def dm_exists(name: str) -> bool:
    return subprocess.run(["dmsetup", "info", name], capture_output=True, check=False).returncode == 0


def dm_nodes(name: str) -> None:
    """Makes /dev/mapper/<name> match the kernel (created or removed): without udev (a
    minimal host, a guest) nobody else does."""
    subprocess.run(["dmsetup", "mknodes", name], capture_output=True, check=False)


def dm_create(name: str, table: str, readonly: bool = False) -> str:
    argv = ["dmsetup", "create", name] + (["--readonly"] if readonly else []) + ["--table", table]
    run(*argv, what=f"cannot create device {name}")
    dm_nodes(name)
    return f"/dev/mapper/{name}"


def dm_devno(name: str) -> str:
    """``major:minor`` of a dm device (tables name devices this way, needing no /dev node)."""
    return run("dmsetup", "info", "-c", "--noheadings", "-o", "major,minor", name).strip()


def dm_remove(name: str) -> None:
    """Removes a dm device; retries while it is briefly busy; says who holds it otherwise."""
    for attempt in range(BUSY_RETRIES):
        if not dm_exists(name):
            dm_nodes(name)
            return
        result = subprocess.run(["dmsetup", "remove", name], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            dm_nodes(name)
            return
        if "busy" not in result.stderr.lower():
            raise RunvError(f"cannot remove device {name}: {result.stderr.strip()}")
        time.sleep(0.1 * (attempt + 1))
    raise RunvError(f"cannot remove device {name}: it is in use (a VM or a mount still holds it); stop it first")


def device_size(path: str) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return os.lseek(fd, 0, os.SEEK_END)
    finally:
        os.close(fd)


def copy_image(image: Path, device: str) -> None:
    """Copies ``image`` onto ``device``, skipping zero chunks: a thin device reads zeros
    where nothing was written, so the copy provisions only what the image holds."""
    zero = bytes(CHUNK)
    with open(image, "rb") as src, open(device, "r+b", buffering=0) as dst:
        offset = 0
        while chunk := src.read(CHUNK):
            if chunk != zero[: len(chunk)]:
                dst.seek(offset)
                dst.write(chunk)
            offset += len(chunk)
        os.fsync(dst.fileno())


class Pool:
    """One thin pool named ``name`` (its dm device is /dev/mapper/<name>)."""

    def __init__(self, name: str, directory: Path, data_size: int = 20 << 30, metadata_size: int = 256 << 20,
                 data_device: str | None = None, metadata_device: str | None = None) -> None:
        self.name = name
        self.directory = Path(directory)
        self.data_size = data_size
        self.metadata_size = metadata_size
        self.data_device = data_device
        self.metadata_device = metadata_device

    # ---------------------------------------------------------------- bookkeeping

    @contextmanager
    def locked(self) -> Iterator[dict]:
        """The registry under the pool's lock; written back when the block succeeds."""
        with images.locked(self.directory):
            registry = self._read()
            try:
                yield registry
            finally:
                self._write(registry)  # also after a failure: it records what was cleaned up

    def _read(self) -> dict:
        try:
            return json.loads((self.directory / "devices.json").read_text())
        except FileNotFoundError:
            return {"next_id": 1, "bases": {}, "snapshots": {}}

    def _write(self, registry: dict) -> None:
        path = self.directory / "devices.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(registry, indent=1, sort_keys=True))
        os.replace(tmp, path)

    @staticmethod
    def _new_id(registry: dict) -> int:
        dev_id = registry["next_id"]
        registry["next_id"] = dev_id + 1
        return dev_id

    # ---------------------------------------------------------------- the pool

    @property
    def device(self) -> str:
        return f"/dev/mapper/{self.name}"

    def _loop(self, path: Path, size: int) -> str:
        """The loop device of ``path`` (the sparse file made and attached when needed)."""
        if not path.exists():
            with open(path, "wb") as f:
                f.truncate(size)
        attached = run("losetup", "-j", str(path), what=f"cannot list the loop devices of {path}").strip()
        if attached:
            return attached.split(":", 1)[0]
        return run("losetup", "--find", "--show", str(path), what=f"cannot attach {path} to a loop device").strip()

    def ensure(self) -> None:
        """Activates the pool (making its sparse files and loop devices on first use)."""
        with self.locked():
            self._ensure()

    def _ensure(self) -> None:
        if dm_exists(self.name):
            return
        data = self.data_device or self._loop(self.directory / "data", self.data_size)
        metadata = self.metadata_device or self._loop(self.directory / "metadata", self.metadata_size)
        sectors = device_size(data) // SECTOR
        table = f"0 {sectors} thin-pool {metadata} {data} {BLOCK_SECTORS} {LOW_WATER} 1 error_if_no_space"
        dm_create(self.name, table)

    def status(self) -> dict:
        """Used and total data and metadata blocks: ``dmsetup status`` of the pool."""
        fields = run("dmsetup", "status", self.name, what=f"cannot read the status of pool {self.name}").split()
        used_meta, total_meta = map(int, fields[4].split("/"))
        used_data, total_data = map(int, fields[5].split("/"))
        mode = fields[7] if len(fields) > 7 else "rw"
        return {"used_data": used_data, "total_data": total_data, "used_metadata": used_meta,
                "total_metadata": total_meta, "mode": mode}

    def _check_space(self) -> None:
        status = self.status()
        if status["used_data"] >= status["total_data"] or status["mode"] in ("out_of_data_space", "ro", "fail"):
            raise PoolFull(
                f"thin pool {self.name} is full ({status['used_data']}/{status['total_data']} blocks used, "
                f"mode {status['mode']}): delete containers or give it more space"
            )

    def _message(self, text: str) -> None:
        run("dmsetup", "message", self.name, "0", text, what=f"pool {self.name}: {text}")

    def _delete_thin(self, dev_id: int) -> None:
        """Deletes a thin device id; one the pool does not have (never created, or deleted
        before a crash) is fine: the kernel answers ENODATA."""
        try:
            self._message(f"delete {dev_id}")
        except RunvError as exc:
            if "No data available" not in str(exc):
                raise

    def _activate(self, name: str, dev_id: int, sectors: int, readonly: bool = False) -> str:
        if not dm_exists(name):
            return dm_create(name, f"0 {sectors} thin {dm_devno(self.name)} {dev_id}", readonly)
        dm_nodes(name)
        return f"/dev/mapper/{name}"

    # ---------------------------------------------------------------- bases

    def base(self, key: str, image: Path) -> dict:
        """The base thin volume holding ``image`` (built now, once per key)."""
        with self.locked() as registry:
            self._ensure()
            entry = registry["bases"].get(key)
            if entry and entry["state"] == "ready":
                return entry
            if entry:  # a build that crashed half-way: start again
                self._drop(entry, f"{self.name}-base-{key}")
                del registry["bases"][key]
            self._check_space()
            entry = {"id": self._new_id(registry), "sectors": -(-image.stat().st_size // SECTOR), "state": "building"}
            registry["bases"][key] = entry
            self._write(registry)
            name = f"{self.name}-base-{key}"
            try:
                self._message(f"create_thin {entry['id']}")
                copy_image(image, self._activate(name, entry["id"], entry["sectors"]))
                dm_remove(name)  # bases stay inactive: snapshots of an inactive origin need no suspend
            except BaseException:
                self._undo(registry["bases"], key, name)
                raise
            entry["state"] = "ready"
            return entry

    def _drop(self, entry: dict, name: str) -> None:
        dm_remove(name)
        self._delete_thin(entry["id"])

    def _undo(self, table: dict, key: str, name: str) -> None:
        """Cleans up a create that failed half-way; if even that fails, the entry stays
        (state building/creating) and the next call for the same key cleans it up."""
        try:
            self._drop(table[key], name)
        except RunvError:
            return
        del table[key]

    # ---------------------------------------------------------------- snapshots

    def snapshot(self, name: str, key: str, owner: str = "") -> str:
        """Activates a fresh snapshot of base ``key`` as /dev/mapper/<name> for ``owner`` (a
        path that exists while the snapshot is in use); a stale one of the same name (left
        by a crash) is removed first, and every snapshot whose owner is gone."""
        with self.locked() as registry:
            self._ensure()
            self._reclaim(registry)
            base = registry["bases"].get(key)
            if not base or base["state"] != "ready":
                raise RunvError(f"pool {self.name} has no base {key}")
            stale = registry["snapshots"].pop(name, None)
            if stale:
                self._drop(stale, name)
            elif dm_exists(name):  # not ours (the registry names every device runv made)
                raise RunvError(f"a device-mapper device {name} exists that pool {self.name} did not make: "
                                "refusing to reuse it")
            self._check_space()
            entry = {"id": self._new_id(registry), "sectors": base["sectors"], "base": key, "state": "creating"}
            if owner:
                entry["owner"] = owner
            registry["snapshots"][name] = entry
            self._write(registry)
            try:
                self._message(f"create_snap {entry['id']} {base['id']}")
                path = self._activate(name, entry["id"], entry["sectors"])
            except BaseException:
                self._undo(registry["snapshots"], name, name)
                raise
            entry["state"] = "active"
            return path

    def _reclaim(self, registry: dict) -> None:
        """Removes the snapshots whose owner is gone (under the lock); one still held by a
        device's user stays for the next call."""
        for name, entry in list(registry["snapshots"].items()):
            if not entry.get("owner") or os.path.exists(entry["owner"]):
                continue
            try:
                self._drop(entry, name)
            except RunvError as exc:
                logger.warning("pool %s: snapshot %s of %s, which is gone, not reclaimed: %s", self.name, name,
                               entry["owner"], exc)
                continue
            del registry["snapshots"][name]
            logger.info("pool %s: reclaimed snapshot %s: its container's state directory %s is gone", self.name, name,
                        entry["owner"])

    def remove_snapshot(self, name: str) -> None:
        """Deactivates and deletes a snapshot; nothing to do when it is gone already."""
        with self.locked() as registry:
            entry = registry["snapshots"].get(name)
            if entry is None:  # never made, or removed already: a device of that name is not ours
                return
            if not dm_exists(self.name):
                self._ensure()
            dm_remove(name)  # raises while a VM still holds it: the entry stays for a retry
            self._delete_thin(entry["id"])
            del registry["snapshots"][name]

    def destroy(self) -> None:
        """Removes the pool's devices and detaches its loops (its files and registry stay)."""
        with self.locked() as registry:
            for name in list(registry["snapshots"]):
                dm_remove(name)
            for key in registry["bases"]:
                dm_remove(f"{self.name}-base-{key}")
            dm_remove(self.name)
            for file in ("data", "metadata"):
                path = self.directory / file
                if path.exists():
                    for line in run("losetup", "-j", str(path)).splitlines():
                        run("losetup", "-d", line.split(":", 1)[0])
