"""Containers on disk: one directory per id under ``--root``, a JSON record, a lock.

Kept free of heavy imports (attrs, typing, shutil, contextlib, pathlib: paths are strings
inside, :meth:`Store.dir` gives a Path): ``runv state``, ``list`` and ``kill`` read it.
"""

from __future__ import annotations

import fcntl
import json
import os

from runv.api.errors import RunvError
from runv.api.frozen import Frozen
from runv.api.process import is_running, process_start_time
from runv.oci.state import State

TYPE_CHECKING = False  # importing typing's would cost ``runv state`` 3 ms
if TYPE_CHECKING:
    from pathlib import Path

RECORD = "state.json"
LOCK = "lock"
# fields added since the first release whose records may still be read by a running shim of it
NEWER_FIELDS = ("shim_protocol",)
CLAIM = ".claim-"  # a directory being claimed: ``.claim-PID-START-ID`` (ids never start with a dot)
# runc's character set (libcontainer's ``^[\w+-\.]+$``: letters, digits, ``_ + , - .``), in
# ASCII, every character (``$`` alone would let ``abc\n`` through), and not starting with a
# symbol (so never ``.`` or ``..``, nor an option-looking ``-x``). Sets, not a regular
# expression: compiling one costs ``runv state`` a millisecond.
_ALNUM = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
_ID_CHARS = _ALNUM | frozenset("_+,.-")
MAX_ID = 100  # characters: ids name directories, device-mapper devices (127 bytes) and VMs


def validate_id(container_id: str) -> str:
    """Ids name directories and devices: runc's characters, a length limit; one line each."""
    if not container_id:
        raise RunvError("container id must not be empty")
    if len(container_id) > MAX_ID:
        raise RunvError(f"invalid container id: {len(container_id)} characters, at most {MAX_ID}")
    if container_id[0] not in _ALNUM or not _ID_CHARS.issuperset(container_id) or ".." in container_id:
        raise RunvError(
            f"invalid container id {container_id!r}: use letters, digits and _+,-. "
            "(no '/', no '..', not starting with a symbol)"
        )
    return container_id


def _rmtree(path: str | Path) -> None:
    import shutil  # not at the top: the commands that only read pay nothing for it

    shutil.rmtree(path, ignore_errors=True)


class NoSuchContainer(RunvError):
    """The container's directory or record is not there (never was, or was deleted)."""


class Record(Frozen):
    """What runv keeps about one container between commands."""

    id: str
    bundle: str
    rootfs: str
    created: str
    status: str = "creating"
    owner: str = "root"
    annotations: dict[str, str] = {}
    shim_pid: int = 0
    shim_start: int = 0
    shim_protocol: int = 0  # the control protocol its shim speaks (runv.shim.control.PROTOCOL); 0: not recorded
    creator_pid: int = 0  # the `runv create` that made the record, while it runs
    creator_start: int = 0
    exit_code: int | None = None
    hypervisor: str = ""
    storage: str = ""
    vm: dict[str, object] | None = None  # the running VM (runv.api.VM.record())
    attachment: dict[str, object] | None = None  # the storage plugin's StorageAttachment
    sandbox: str = ""  # the container whose VM this one runs in (a pod's first); "" when it has its own
    netns: list[int] | None = None  # (device, inode) of the network namespace its VM serves, which others may join

    def shim_alive(self) -> bool:
        return is_running(self.shim_pid, self.shim_start)

    def live_status(self) -> str:
        """The recorded status, corrected to ``stopped`` when the shim is gone (and, while
        ``creating``, its ``runv create`` too: a create killed before its shim ran)."""
        if self.status in ("created", "running", "paused") and not self.shim_alive():
            return "stopped"
        if self.status == "creating" and not self.shim_alive() and not is_running(self.creator_pid, self.creator_start):
            return "stopped"
        return self.status

    def container(self, state_dir: Path):
        """The container as the hooks see it (runv.api.Container), rebuilt from this record
        (no spec when the bundle is gone: a teardown must still converge)."""
        from pathlib import Path

        from runv.api.container import Container
        from runv.log import logger
        from runv.oci.config import load_bundle

        try:
            spec, _ = load_bundle(Path(self.bundle))
        except RunvError as exc:
            logger.warning("container %s: %s", self.id, exc)
            spec = None
        return Container(id=self.id, bundle=Path(self.bundle), rootfs=Path(self.rootfs), spec=spec, state_dir=state_dir)

    def oci_state(self) -> State:
        return State(
            id=self.id,
            status=self.live_status(),
            pid=self.shim_pid,
            bundle=self.bundle,
            rootfs=self.rootfs,
            created=self.created,
            owner=self.owner,
            annotations=self.annotations,
        )


class Lock:
    """A container's lock, held inside ``with``. Entering raises NoSuchContainer when the
    directory is gone, also when it went while this process waited (the lock file is then
    no longer the one at its path). A class, not a contextlib generator: ``runv state``
    does not import contextlib."""

    def __init__(self, path: str, container_id: str) -> None:
        self.path, self.container_id, self.fd = path, container_id, -1

    def __enter__(self) -> None:
        try:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            raise NoSuchContainer(f"container {self.container_id} does not exist") from None
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
            try:
                current = os.stat(self.path).st_ino
            except FileNotFoundError:
                current = None
            if current != os.fstat(self.fd).st_ino:
                raise NoSuchContainer(f"container {self.container_id} does not exist")
        except BaseException:
            os.close(self.fd)
            raise

    def __exit__(self, *exc_info: object) -> None:
        os.close(self.fd)


class Store:
    """The ``--root`` directory."""

    def __init__(self, root: str | Path) -> None:
        self.root = os.fspath(root)

    def dir(self, container_id: str) -> Path:
        from pathlib import Path

        return Path(self.path(container_id))

    def path(self, container_id: str, *names: str) -> str:
        """The container's directory (or a file in it) as a string (the id checked)."""
        return os.path.join(self.root, validate_id(container_id), *names)

    def claim(self, record: Record) -> Path:
        """Creates the container's directory holding its first record, atomically (a
        directory renamed into place), so no directory is ever seen without its record;
        fails if the id is taken. A claim whose creator died half-way is swept here."""
        os.makedirs(self.root, mode=0o711, exist_ok=True)
        path = self.dir(record.id)
        self.sweep(record.id)
        me = os.getpid()
        staging = os.path.join(self.root, f"{CLAIM}{me}-{process_start_time(me)}-{record.id}")
        os.mkdir(staging, mode=0o700)
        _write_json(os.path.join(staging, RECORD), _readable_by_earlier(record))
        try:
            os.rename(staging, path)
        except OSError:  # EEXIST/ENOTEMPTY: the id is taken
            _rmtree(staging)
            raise RunvError(f"container with id {record.id} already exists") from None
        return path

    def sweep(self, container_id: str) -> None:
        """Removes the claims of ``container_id`` left by a create that died while claiming."""
        for name in self._names():
            pid, _, rest = name.removeprefix(CLAIM).partition("-")
            start, _, cid = rest.partition("-")
            if name.startswith(CLAIM) and cid == container_id and pid.isdigit() and start.isdigit() \
                    and not is_running(int(pid), int(start)):
                _rmtree(os.path.join(self.root, name))

    def _names(self) -> list[str]:
        try:
            return os.listdir(self.root)
        except (FileNotFoundError, NotADirectoryError):
            return []

    def read(self, container_id: str) -> Record:
        path = self.path(container_id, RECORD)
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise NoSuchContainer(f"container {container_id} does not exist") from None
        except ValueError:
            raise RunvError(f"state of container {container_id} ({path}) is damaged; run `runv delete --force {container_id}`") from None
        return Record(**data)

    def write(self, record: Record) -> None:
        path = self.path(record.id, RECORD)
        _write_json(path + ".tmp", _readable_by_earlier(record))
        os.replace(path + ".tmp", path)

    def locked(self, container_id: str) -> Lock:
        """Serialises changes to one container between processes (``with store.locked(id):``)."""
        return Lock(self.path(container_id, LOCK), container_id)

    def update(self, container_id: str, **changes: object) -> Record:
        with self.locked(container_id):
            record = self.read(container_id).evolve(**changes)
            self.write(record)
        return record

    def ids(self) -> list[str]:
        return sorted(name for name in self._names()
                      if not name.startswith(".") and os.path.exists(os.path.join(self.root, name, RECORD)))

    def remove(self, container_id: str) -> None:
        """Removes the container's directory; refuses while anything is mounted under it
        (removing through a mount would delete the mounted files: a volume's, a rootfs')."""
        path = self.dir(container_id)
        prefix = str(path.resolve()) + "/"
        with open("/proc/self/mountinfo") as f:
            mounted = [line.split()[4] for line in f if (line.split()[4] + "/").startswith(prefix)]
        if mounted:
            raise RunvError(f"container {container_id}: {mounted[-1]} is still mounted; not removing {path}")
        _rmtree(path)


def _readable_by_earlier(record: Record) -> dict:
    """The record as written: fields earlier releases' records lack are left out while unset,
    as the shim of an earlier release's pod reads its new members' records, and refuses a
    field it does not know."""
    data = record.asdict()
    for name in NEWER_FIELDS:
        if data[name] == Record._defaults[name]:
            del data[name]
    return data


def _write_json(path: str, data: dict) -> None:
    with open(path, "w") as f:
        f.write(json.dumps(data))
