"""Storage settings shared by storage plugins: the ``[storage]`` table of runv's config file, overridden per container
by annotations, and the per-container directory that holds a container's big files.

``/etc/runv/config.toml`` (or ``$RUNV_CONFIG``)::

    [storage]
    mode = "share"                 # the layout a plugin gives the rootfs: the bundle plugin's share | overlay | block
    cache_dir = "/var/cache/runv/storage"        # ext4 base images, shared by containers
    containers_dir = "/var/lib/runv/containers"  # per-container disk files (upper.img, rootfs.qcow2)
    upper_size = "4G"              # overlay mode: the sparse upper-layer disk per container
    base_size = "2G"               # block mode: minimum size of a base image (sparse)
    max_upper_size = "64G"         # the largest upper_size / base_size a container may ask for
    max_base_size = "64G"

Annotations (``io.runv.storage.*``) win over the file, for the mode and the sizes only:
``io.runv.storage.mode=NAME``, ``io.runv.storage.overlay=true`` (same as ``mode=overlay``),
``io.runv.storage.upper-size``, ``io.runv.storage.base-size``. Which modes exist, and the
default, are each storage plugin's own (the bundle plugin's: share, overlay, block). Annotations
often come from the image (Podman, Docker), so a size above its maximum, a malformed size
or any other ``io.runv.storage.*`` key is refused in one line.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
from pathlib import Path

from runv.api.config import config_path, section
from runv.api.errors import RunvError

ANNOTATION = "io.runv.storage."
DEFAULTS = {"mode": None, "cache_dir": "/var/cache/runv/storage", "containers_dir": "/var/lib/runv/containers",
            "upper_size": "4G", "base_size": "2G", "max_upper_size": "64G", "max_base_size": "64G"}
ANNOTATED = ("mode", "overlay", "upper_size", "base_size")  # what a container's annotations may set
MAXIMUM = {"upper_size": "max_upper_size", "base_size": "max_base_size"}
MIN_UPPER = 16 << 20  # ext4 with a journal needs a few MiB; less is a mistake, refused in words
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"([0-9]+)\s*([KMGT]?)(?:I?B)?")
OWNER = ".owner"  # in a container's directory: its state directory's absolute path, which the reclaim looks for
logger = logging.getLogger("runv.storage")


def parse_size(text: str | int, where: str) -> int:
    """``512M``, ``4G``, ``4GiB``, ``1073741824`` as bytes (ASCII digits, positive)."""
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise RunvError(f"{where}: invalid size {text!r}: use bytes or a number with K, M, G or T")
    match = _SIZE.fullmatch(str(text).strip().upper())
    if not match or int(match[1]) <= 0:
        raise RunvError(f"{where}: invalid size {text!r}: use bytes or a number with K, M, G or T")
    return int(match[1]) * _UNITS[match[2]]


def settings(annotations: dict[str, str] | None = None) -> dict:
    """The effective storage settings for one container (file, then annotations), sizes
    in bytes and checked against their maxima; ``mode`` as asked (None: the plugin's
    default), ``sources`` naming where each setting came from, for a plugin's errors."""
    result = {**DEFAULTS, **section("storage")}
    where = {name: f"[storage] {name} in {config_path()}" for name in result}
    for key, value in (annotations or {}).items():
        if not key.startswith(ANNOTATION):
            continue
        name = key[len(ANNOTATION) :].replace("-", "_")
        if name not in ANNOTATED:
            allowed = ", ".join(ANNOTATION + n.replace("_", "-") for n in ANNOTATED)
            raise RunvError(f"annotation {key}: not a storage setting a container may choose (it may set {allowed})")
        if name == "overlay":
            if value.lower() in ("true", "1", "yes"):
                result["mode"], where["mode"] = "overlay", f"annotation {key}"
            elif value.lower() not in ("false", "0", "no"):
                raise RunvError(f"annotation {key}: expected true or false, not {value!r}")
        else:
            result[name], where[name] = value, f"annotation {key}"
    for name in ("cache_dir", "containers_dir"):
        result[name] = Path(result[name])
        if not result[name].is_absolute():
            raise RunvError(f"{where[name]}: {str(result[name])!r} is not an absolute path")
    for name, limit in MAXIMUM.items():
        text, maximum = result[name], result[limit]
        result[name] = parse_size(text, where[name])
        result[limit] = parse_size(maximum, where[limit])
        if result[name] > result[limit]:
            raise RunvError(f"{where[name]}: size {text} is above the maximum {maximum} ({where[limit]})")
    if result["upper_size"] < MIN_UPPER:
        raise RunvError(f"{where['upper_size']}: size {text_of(result['upper_size'])} is below the minimum 16M")
    result["sources"] = where
    return result


def text_of(size: int) -> str:
    """``size`` bytes in the largest unit that divides it (``4G``, ``1536M``, ``100``)."""
    for unit in ("T", "G", "M", "K"):
        if size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return str(size)


# ---------------------------------------------------------------- the container's own directory


def absolute_state_dir(container) -> Path:
    """The container's state directory as an absolute path (the shim runs inside it, so a
    relative ``--root`` resolves there to the working directory)."""
    path = container.state_dir
    if path.is_absolute() or path.is_dir():
        return path.resolve()
    return Path.cwd()


def container_key(container) -> str:
    """``<id>-<12 hex digits>``: unique per (``--root``, id), so two roots holding the same
    id never share files."""
    digest = hashlib.sha256(str(absolute_state_dir(container)).encode()).hexdigest()[:12]
    return f"{container.id}-{digest}"


def container_dir(container, options: dict) -> Path:
    """A fresh ``containers_dir/<key>/`` (mode 0700) for the container's big files (upper
    layers, qcow2 overlays): on disk, not in ``--root``'s RAM, naming its owner (``.owner``).
    What a crashed create of the same key left there is removed first, and what dead
    containers left beside it is reclaimed (:func:`reclaim`)."""
    top = options["containers_dir"]
    top.mkdir(parents=True, exist_ok=True, mode=0o700)
    reclaim(top)
    path = top / container_key(container)
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(mode=0o700)
    path.chmod(0o700)  # whatever the umask
    (path / OWNER).write_text(str(absolute_state_dir(container)))
    return path


def reclaim(top: Path) -> list[Path]:
    """Removes the container directories in ``top`` whose owner's state directory is gone:
    what containers left when runv and their VMs died (a host crash, ``/run`` emptied)
    before their ``delete``. A live or stopped container's state directory exists (a
    create makes it before this directory); a directory naming no owner (an earlier
    release's) is left. Each removal is logged; returns them."""
    removed = []
    for entry in sorted(top.iterdir()):
        try:
            owner = Path((entry / OWNER).read_text())
        except OSError:
            continue
        if owner.exists():
            continue
        shutil.rmtree(entry, ignore_errors=True)
        logger.info("reclaimed %s: its container's state directory %s is gone (it died without a delete)", entry, owner)
        removed.append(entry)
    return removed


def remove_container_dir(container, recorded: str) -> None:
    """Removes the directory :func:`container_dir` made (as recorded in the attachment, so a
    changed config still finds it); a path not named as a directory of this container's id
    is refused. Converges: nothing to do when it is gone."""
    path = Path(recorded)
    if not (path.is_absolute() and re.fullmatch(re.escape(container.id) + "-[0-9a-f]{12}", path.name)):
        raise RunvError(f"container {container.id}: refusing to remove {path}: not a directory runv made for it")
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise RunvError(f"cannot remove {path}: {exc.strerror}") from None
