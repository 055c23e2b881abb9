"""Where templates live (``/var/lib/runv/templates``, or ``$RUNV_TEMPLATE_DIR``): one
directory per template holding its files and ``template.json``, the work directories of
the makers (``.making-PID``, locked while their maker lives, reclaimed when it died), and
the note a container's state directory keeps of the template it started from."""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import time
from pathlib import Path

from runv.api.errors import RunvError
from runv.log import logger
from runv.templates.match import AUTO, OFF

DIR_ENV = "RUNV_TEMPLATE_DIR"
DEFAULT_DIR = Path("/var/lib/runv/templates")
RECORD = "template.json"
RESULT = "template.json"  # in a container's state directory: the template used, or why none
MAKING = ".making-"  # a maker's work directory, then the template (renamed)
OLD = ".old-"  # a template being replaced, removed by its maker
RECLAIM_AGE = 60.0  # seconds a maker's directory is left alone whatever its lock says (it locks it once made)


def directory() -> Path:
    return Path(os.environ.get(DIR_ENV) or DEFAULT_DIR)


def read(name: str) -> dict:
    check_name(name)
    path = directory() / name / RECORD
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise RunvError(f"template {name!r} does not exist in {directory()} (see `runv template list`)") from None
    except (OSError, ValueError) as exc:
        raise RunvError(f"template {name!r}: cannot read {path}: {exc}") from None


def lock(work: Path) -> int:
    """A maker's hold on its work directory (an open descriptor, flock'ed): :func:`reclaim`
    leaves a held one alone. Released when the descriptor is closed, or the maker dies."""
    fd = os.open(work, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def held(path: Path) -> bool:
    """Whether a process holds ``path`` (a file or directory) flock'ed exclusively now."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def reclaim(older_than: float = RECLAIM_AGE) -> list[Path]:
    """Removes what dead makers left (a host crash, a kill): their work directories, which
    no live maker holds (:func:`lock`), and the templates they were replacing, each over
    ``older_than`` seconds old. Each removal is logged; returns them."""
    removed = []
    now = time.time()
    try:
        entries = sorted(directory().iterdir())
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith((MAKING, OLD)):
            continue
        try:
            if now - entry.lstat().st_ctime < older_than or entry.name.startswith(MAKING) and held(entry):
                continue
        except OSError:
            continue  # gone meanwhile
        shutil.rmtree(entry, ignore_errors=True)
        logger.info("reclaimed %s: the template maker that made it died", entry)
        removed.append(entry)
    return removed


def all_records() -> list[dict]:
    """Every template's record, newest first (unreadable ones are skipped)."""
    found = []
    base = directory()
    if not base.is_dir():
        return []
    for entry in base.iterdir():
        if entry.name.startswith(".") or not (entry / RECORD).is_file():
            continue
        try:
            found.append(json.loads((entry / RECORD).read_text()))
        except (OSError, ValueError):
            continue
    return sorted(found, key=lambda r: r.get("created", ""), reverse=True)


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def check_name(name: str) -> None:
    """Template names name directories and reach QEMU's command line: letters, digits and
    ``_.-``, at most 64 characters, not starting with a symbol, not auto/off."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name or name in (AUTO, OFF):
        raise RunvError(f"invalid template name {name!r}: letters, digits and _.- (at most 64, not starting "
                        "with a symbol, not auto/off)")


def remove(name: str) -> None:
    check_name(name)
    path = directory() / name
    if not (path / RECORD).exists() and not path.is_dir():
        raise RunvError(f"template {name!r} does not exist in {directory()}")
    shutil.rmtree(path)


def note(state_dir: Path, what: dict) -> None:
    """Records in the container's state directory whether it started from a template
    (``create`` prints a warning found there)."""
    where = state_dir if state_dir.is_absolute() else Path.cwd()  # the shim runs in it
    try:
        (where / RESULT).write_text(json.dumps(what))
    except OSError:
        pass


def warning_of(state_dir: Path) -> str | None:
    """The warning the shim recorded about the template named by ``--template NAME`` for
    this container, if any. (Under ``auto`` a stale or broken template is only logged:
    the container's caller reads create's stderr, and nothing asked for that template.)"""
    try:
        result = json.loads((state_dir / RESULT).read_text())
    except (OSError, ValueError):
        return None
    return result.get("warning") if result.get("named") else None
