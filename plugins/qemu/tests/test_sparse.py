"""Guest RAM files kept sparse: zero pages punched out, data copied into a memfd holes and all."""

from __future__ import annotations

import os

from runv_qemu import sparse

PAGE = sparse.PAGE


def data_pages(fd: int) -> list[int]:
    return [page for start, end in sparse.data_extents(fd) for page in range(start // PAGE, end // PAGE)]


def ram_file(path) -> bytes:
    """A 4 MiB file: a hole, data pages with zero pages between them, a long zero run, a hole."""
    with open(path, "wb") as f:
        f.truncate(4 << 20)
        for page, fill in ((10, b"a"), (11, bytes(PAGE)), (12, b"b"), (20, bytes(PAGE)), (21, b"c")):
            f.seek(page * PAGE)
            f.write(fill * (PAGE // len(fill)) if len(fill) == 1 else fill)
        f.seek(100 * PAGE)
        f.write(bytes(300 * PAGE))  # 1.2 MiB of written zeros: one run across chunk boundaries
        f.seek(600 * PAGE)
        f.write(b"\0" * 100 + b"d" + b"\0" * (PAGE - 101))  # mostly zero is data
    return path.read_bytes()


def test_punch_zeros_leaves_only_pages_that_hold_something(tmp_path):
    path = tmp_path / "memory"
    content = ram_file(path)
    freed = sparse.punch_zeros(path)
    assert path.read_bytes() == content
    with open(path, "rb") as f:
        assert data_pages(f.fileno()) == [10, 12, 21, 600]
    assert freed == (1 + 1 + 300) * PAGE
    assert sparse.punch_zeros(path) == 0  # nothing more to take


def test_copy_data_fills_a_memfd_with_the_data_alone(tmp_path):
    path = tmp_path / "memory"
    content = ram_file(path)
    sparse.punch_zeros(path)
    memfd = os.memfd_create("test", os.MFD_CLOEXEC)
    try:
        sparse.copy_data(path, memfd)
        assert os.pread(memfd, len(content) + 1, 0) == content
        assert os.fstat(memfd).st_blocks * 512 == 4 * PAGE  # the holes cost the memfd nothing
    finally:
        os.close(memfd)
