"""A small ELF reader: machine type and the GLIBC symbol versions a shared library needs.

Pure Python so that audits also work for foreign architectures without binutils for them.
"""
from __future__ import annotations

import dataclasses
import struct
from pathlib import Path

from builder.errors import BundleError

MACHINES = {3: "i386", 62: "x86_64", 183: "aarch64", 40: "arm", 243: "riscv"}
_SHT_GNU_VERNEED = 0x6FFFFFFE
_SHT_SYMTAB, _SHT_DYNSYM = 2, 11


@dataclasses.dataclass
class ElfInfo:
    path: str
    machine: int
    needed_versions: set

    @property
    def machine_name(self) -> str:
        return MACHINES.get(self.machine, f"e_machine={self.machine}")

    @property
    def glibc(self) -> tuple | None:
        vs = [_vtuple(v[6:]) for v in self.needed_versions if v.startswith("GLIBC_") and v[6:7].isdigit()]
        return max(vs) if vs else None


def _vtuple(s: str) -> tuple:
    return tuple(int(p) for p in s.split(".") if p.isdigit())


def vstr(v: tuple | None) -> str:
    return ".".join(map(str, v)) if v else "none"


def is_elf(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"\x7fELF"


def _sections(data: bytes, path) -> tuple[str, bool, list[tuple]]:
    """(struct byte order, 64-bit?, section headers as (name, type, flags, addr, offset, size,
    link, info, addralign, entsize))."""
    if data[:4] != b"\x7fELF":
        raise ValueError(f"{path} is not an ELF file")
    is64, e = data[4] == 2, "<" if data[5] == 1 else ">"
    if is64:
        shoff = struct.unpack_from(e + "Q", data, 0x28)[0]
        shentsize, shnum = struct.unpack_from(e + "HH", data, 0x3A)
        sh_fmt = e + "IIQQQQIIQQ"
    else:
        shoff = struct.unpack_from(e + "I", data, 0x20)[0]
        shentsize, shnum = struct.unpack_from(e + "HH", data, 0x2E)
        sh_fmt = e + "IIIIIIIIII"
    return e, is64, [struct.unpack_from(sh_fmt, data, shoff + i * shentsize) for i in range(shnum)]


def read_symbol(path: Path, name: bytes, size_prefix: bool = False) -> bytes:
    """The bytes a data symbol of an ELF file points at, read from the file (no loading, any
    architecture). With size_prefix, the symbol's st_size may be 0 and its data starts with a
    u64 length (TVM's packed-imports blob): that many bytes are returned, prefix included."""
    data = Path(path).read_bytes()
    e, is64, sections = _sections(data, path)
    sym_fmt, sym_size = (e + "IBBHQQ", 24) if is64 else (e + "IIIBBH", 16)
    for sec in sections:
        if sec[1] not in (_SHT_SYMTAB, _SHT_DYNSYM):
            continue
        strtab = sections[sec[6]][4]
        for j in range(sec[5] // sym_size):
            fields = struct.unpack_from(sym_fmt, data, sec[4] + j * sym_size)
            st_name, value, size, shndx = ((fields[0], fields[4], fields[5], fields[3]) if is64
                                           else (fields[0], fields[1], fields[2], fields[5]))
            if data[strtab + st_name:data.index(b"\0", strtab + st_name)] != name:
                continue
            owner = sections[shndx]
            off = value - owner[3] + owner[4]
            if size_prefix:
                size = 8 + struct.unpack_from(e + "Q", data, off)[0]
            return data[off:off + size]
    raise ValueError(f"{path}: no symbol {name.decode()}")


def read_elf(path: Path) -> ElfInfo:
    data = Path(path).read_bytes()
    e, _is64, sections = _sections(data, path)
    machine = struct.unpack_from(e + "H", data, 18)[0]
    versions = set()
    for sh in sections:
        # (name, type, flags, addr, offset, size, link, info, addralign, entsize)
        if sh[1] != _SHT_GNU_VERNEED:
            continue
        strtab = sections[sh[6]]
        str_off = strtab[4]
        off, count = sh[4], sh[7]
        for _ in range(count):
            _ver, cnt, _file, aux, nxt = struct.unpack_from(e + "HHIII", data, off)
            a = off + aux
            for _ in range(cnt):
                _hash, _flags, _other, name, anext = struct.unpack_from(e + "IHHII", data, a)
                end = data.index(b"\0", str_off + name)
                versions.add(data[str_off + name:end].decode())
                a += anext
                if not anext:
                    break
            off += nxt
            if not nxt:
                break
    return ElfInfo(str(path), machine, versions)


def audit_tree(root: Path, *, machine: int, max_glibc: str | None, what: str) -> dict:
    """Check every ELF file under root: right machine, GLIBC within the platform's.
    Returns {relative path: glibc needed}; raises BundleError listing every offender."""
    wrong_machine, too_new, report = [], [], {}
    limit = _vtuple(max_glibc) if max_glibc else None
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file() and not p.is_symlink()):
        if not is_elf(path):
            continue
        info = read_elf(path)
        rel = str(path.relative_to(root))
        report[rel] = vstr(info.glibc)
        if info.machine != machine:
            wrong_machine.append(f"{rel} is {info.machine_name}")
        if limit and info.glibc and info.glibc > limit:
            too_new.append(f"{rel} needs GLIBC {vstr(info.glibc)}")
    problems = []
    if wrong_machine:
        problems.append(f"{len(wrong_machine)} librar{'y' if len(wrong_machine) == 1 else 'ies'} built for "
                        f"the wrong machine (expected {MACHINES.get(machine, machine)}): " + "; ".join(wrong_machine))
    if too_new:
        problems.append(f"the platform has glibc {max_glibc}, but " + "; ".join(too_new))
    if problems:
        raise BundleError("ELF audit failed: " + " | ".join(problems), where=what,
                          hint="rebuild for the right target / a newer platform (e.g. --python 3.13 on Lambda)")
    return report


def max_glibc_of(report: dict) -> str:
    vs = [_vtuple(v) for v in report.values() if v != "none"]
    return vstr(max(vs)) if vs else "none"
