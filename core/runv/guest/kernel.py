"""The guest kernel: Debian's kernel package fetched with apt, its ELF vmlinux and its modules.

The package is downloaded and unpacked once into the cache directory as
``<package>_<version>_<arch>.deb`` and ``<package>_<version>/`` (unpacked into a temporary
directory first, then renamed, so a present directory is always complete).
"""

import lzma
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from runv.api.errors import RunvError
from runv.api.tools import run_tool

XZ_MAGIC = b"\xfd7zXZ\x00"
ELF_MAGIC = b"\x7fELF"
VERSIONED_PACKAGE = re.compile(r"linux-image-\d\S*")
EXACT_DEPENDENCY = re.compile(r"\s*(linux-image-\d\S*)(?:\s*\(=\s*([^)\s]+)\))?")
APT_HINT = "run apt-get update, or pass an installable kernel package"
# sh_name, sh_type, sh_flags, sh_addr, sh_offset, sh_size of an ELF64 section header.
SECTION_HEADER = struct.Struct("<IIQQQQ")


def resolve_package(package: str) -> tuple[str, str]:
    """The versioned kernel package behind ``package`` (a meta package or itself) and its version."""
    fields = _apt_show(package)
    if VERSIONED_PACKAGE.fullmatch(package):
        return package, fields["Version"]
    for alternative in re.split(r"[,|]", fields.get("Depends", "")):
        match = EXACT_DEPENDENCY.match(alternative)
        if match:
            return (match[1], match[2]) if match[2] else resolve_package(match[1])
    raise RunvError(f"{package} does not depend on a versioned linux-image package; pass a kernel package that does")


def _apt_show(package: str) -> dict[str, str]:
    """The fields of the candidate version of ``package`` as apt-cache shows them."""
    what = f"cannot find kernel package {package}"
    text = run_tool(["apt-cache", "show", "--no-all-versions", package], what, APT_HINT)
    fields: dict[str, str] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and not line[0].isspace():
            fields.setdefault(key, value.strip())
    if "Version" not in fields:
        raise RunvError(f"{what}; {APT_HINT}")
    return fields


def fetch_kernel(package: str, version: str, cache_dir: Path, progress: Callable[[str], None]) -> Path:
    """The unpacked tree of ``package`` in the cache, downloading and unpacking it first if need be."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        hint = "run as root or use another cache directory"
        raise RunvError(f"cannot create {cache_dir}: {error.strerror}; {hint}") from None
    file_version = version.replace(":", "%3a")
    unpacked = cache_dir / f"{package}_{file_version}"
    if not unpacked.is_dir():
        progress(f"fetching {package} {version}")
        deb = _download(package, version, cache_dir, f"{package}_{file_version}_*.deb")
        progress(f"unpacking {deb.name}")
        _unpack(deb, unpacked)
    return unpacked


def _download(package: str, version: str, cache_dir: Path, pattern: str) -> Path:
    """The .deb of ``package`` (file name ``pattern``) in ``cache_dir``, downloaded unless already there."""
    if not any(cache_dir.glob(pattern)):
        run_tool(
            ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", f"{package}={version}"],
            f"cannot download {package} {version}",
            "check the network and apt sources (apt-get update)",
            cwd=cache_dir,
        )
    found = sorted(cache_dir.glob(pattern))
    if not found:
        raise RunvError(f"apt-get download left no {pattern} in {cache_dir}; download it there by hand")
    return found[0]


def _unpack(deb: Path, target: Path) -> None:
    """Unpack ``deb`` into ``target``, all or nothing: into a temporary directory that is then renamed."""
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        run_tool(["dpkg-deb", "-x", str(deb), str(staging)], f"cannot unpack {deb}", f"delete {deb} and retry")
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def kernel_release(root: Path) -> str:
    """The one kernel release under ``root``/lib/modules (e.g. 6.1.0-57-amd64)."""
    releases = sorted(path.name for path in (root / "lib" / "modules").glob("*") if path.is_dir())
    if len(releases) != 1:
        raise RunvError(f"expected one kernel release in {root}/lib/modules, found {releases}; delete {root} and retry")
    return releases[0]


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF vmlinux inside an XZ-compressed bzImage, which QEMU boots directly through its PVH note."""
    offset = bzimage.find(XZ_MAGIC)
    while offset >= 0:
        try:
            vmlinux = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(bzimage[offset:])
        except lzma.LZMAError:
            vmlinux = b""
        if vmlinux.startswith(ELF_MAGIC):
            return vmlinux
        offset = bzimage.find(XZ_MAGIC, offset + 1)
    raise RunvError("the kernel image holds no XZ-compressed ELF vmlinux; use a kernel built with CONFIG_KERNEL_XZ=y")


def module_load_order(
    wanted: Sequence[str], modules: Iterable[str], builtin: Iterable[str], depends: Callable[[str], list[str]]
) -> list[str]:
    """Paths of the ``wanted`` modules and all they depend on, each after its dependencies.

    ``modules`` and ``builtin`` are the module paths of modules.order and modules.builtin (built-in
    ones are skipped); ``depends(path)`` gives the names a module needs. A wanted module that is
    neither a module nor built in is an error.
    """
    paths = {module_name(path): path for path in modules}
    skip = {module_name(path) for path in builtin}
    order: list[str] = []

    def visit(name: str) -> None:
        """Append the path of ``name`` after everything it needs."""
        if name in skip or paths[name] in order:
            return
        for dependency in depends(paths[name]):
            visit(module_name(dependency))
        order.append(paths[name])

    for name in map(module_name, wanted):
        if name not in paths and name not in skip:
            raise RunvError(f"the guest kernel has no module {name}; use a kernel package that builds it")
        visit(name)
    return order


def module_name(path: str) -> str:
    """The module name of a module path or name: file name without .ko, dashes as underscores."""
    return os.path.basename(path).split(".ko")[0].replace("-", "_")


def modinfo_depends(module: bytes) -> list[str]:
    """The module names in the ``depends=`` field of a .ko file's .modinfo section (the source of modules.dep)."""
    return [name for value in modinfo(module, "depends") for name in value.split(",") if name]


def modinfo(module: bytes, key: str) -> list[str]:
    """The values of every ``key=`` field in a .ko file's .modinfo section (``alias`` may have several)."""
    prefix = key.encode() + b"="
    fields = _elf_section(module, ".modinfo").split(b"\0")
    return [field[len(prefix) :].decode() for field in fields if field.startswith(prefix)]


def modules_dep(order: Sequence[str], depends: Callable[[str], list[str]]) -> str:
    """modules.dep for the module paths ``order`` (each after its dependencies, as module_load_order gives):
    each path with its full dependency list, loaded last to first, as busybox's modprobe wants."""
    paths = {module_name(path): path for path in order}
    lines = []
    for path in order:
        needed = module_load_order([path], order, (), lambda p: [d for d in depends(p) if module_name(d) in paths])
        lines.append(f"{path}: {' '.join(reversed(needed[:-1]))}".rstrip() + "\n")
    return "".join(lines)


def _elf_section(elf: bytes, wanted: str) -> bytes:
    """The contents of the section called ``wanted`` in a little-endian ELF64 file (empty if there is none)."""
    if not elf.startswith(ELF_MAGIC) or elf[4:6] != b"\x02\x01":
        raise RunvError("a kernel module is not a little-endian ELF64 file; use an amd64 kernel package")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    headers = [SECTION_HEADER.unpack_from(elf, shoff + index * shentsize) for index in range(shnum)]
    names_offset = headers[shstrndx][4]
    for name_offset, _type, _flags, _address, offset, size in headers:
        start = names_offset + name_offset
        if elf[start : elf.index(b"\0", start)].decode() == wanted:
            return elf[offset : offset + size]
    return b""
