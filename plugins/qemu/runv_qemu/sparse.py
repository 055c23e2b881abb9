"""Guest RAM in sparse files: a template's memory file keeps only pages that hold something,
and a private clone copies only those.

A page is in the file once the template's guest has written it. Two things make it a hole
again before the template is saved: the guest's free-page reports while it runs (QEMU
punches what it reports; :func:`await_reports`), and then :func:`punch_zeros` for the pages
it left zero.
"""

from __future__ import annotations

import ctypes
import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

PAGE = 4096
CHUNK = 1 << 20
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE = 0x01, 0x02
REPORT_DELAY = 2.0  # the guest reports free blocks this long after they were freed (Linux's PAGE_REPORTING_DELAY)
REPORTS_TIMEOUT = 30.0  # Linux reports an idle guest's free memory within about 30 s

_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)


def data_extents(fd: int) -> Iterator[tuple[int, int]]:
    """The (start, end) of each run of data of the sparse file ``fd``."""
    size, offset = os.fstat(fd).st_size, 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # no data after offset
                return
            raise
        offset = os.lseek(fd, start, os.SEEK_HOLE)
        yield start, offset


def copy_data(source: Path, target: int) -> None:
    """The data of the sparse file ``source`` into the memfd ``target`` at the same offsets,
    its holes left holes (a hole of a memfd reads as zeros and costs no memory)."""
    with open(source, "rb") as f:
        fd = f.fileno()
        os.ftruncate(target, os.fstat(fd).st_size)
        for start, end in data_extents(fd):
            os.lseek(target, start, os.SEEK_SET)
            while start < end:
                start += os.sendfile(target, fd, start, end - start)


def await_reports(path: Path, timeout: float = REPORTS_TIMEOUT) -> None:
    """Returns once the running guest whose RAM is ``path`` has reported its free memory: when
    the file's allocated size has not shrunk for longer than the guest waits between reports."""
    deadline = time.monotonic() + timeout
    blocks, since = os.stat(path).st_blocks, time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since <= REPORT_DELAY + 0.5:
        time.sleep(0.25)
        now = os.stat(path).st_blocks
        if now < blocks:
            blocks, since = now, time.monotonic()


def punch_zeros(path: Path) -> int:
    """Makes every all-zero page of the sparse file ``path`` a hole; returns the bytes freed."""
    freed = 0
    with open(path, "r+b") as f:
        fd = f.fileno()
        for start, end in list(data_extents(fd)):
            for offset, length in _zero_runs(fd, start, end):
                if _libc.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) != 0:
                    raise OSError(ctypes.get_errno(), f"punching a hole in {path}")
                freed += length
    return freed


def _zero_runs(fd: int, start: int, end: int) -> Iterator[tuple[int, int]]:
    """The (offset, length) of each run of zero pages between ``start`` and ``end`` of ``fd``."""
    run = None  # offset where the current run of zero pages began
    offset = start
    while offset < end:
        chunk = os.pread(fd, min(CHUNK, end - offset), offset)
        whole = chunk.count(0) == len(chunk)
        for page in range(0, len(chunk), PAGE):
            zero = whole or chunk.count(0, page, page + PAGE) == PAGE
            here = offset + page
            if zero and run is None:
                run = here
            elif not zero and run is not None:
                yield run, here - run
                run = None
        offset += len(chunk)
    if run is not None:
        yield run, end - run
