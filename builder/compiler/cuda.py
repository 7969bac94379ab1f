"""CUDA device code compiled ahead of time: one fatbin the driver loads as it is.

TVM 0.27's CUDA codegen keeps kernels as CUDA C source (a module of kind "cuda", format
"cuda") and compiles it when the library is loaded, through a `tvm_callback_cuda_compile`
that only the Python `tvm` compiler package registers (NVRTC via cuda-bindings). Bundles
carry no compiler, so a build replaces that module's source with a fatbin made here by the
build machine's nvcc: SASS for every GPU architecture asked for plus PTX of the newest, so
GPUs newer than all of them still JIT it in the driver. libtvm_runtime_cuda.so hands any
format other than "cuda" straight to cuModuleLoadData.

Where the source is replaced: `export_library(fpack_imports=...)` packs the imported
modules into the library's `__tvm_ffi__library_bin` blob; our packer rewrites the cuda
entry of that blob. The layouts (TVM 0.27 / tvm-ffi 0.1.15, all little-endian):

    blob    u64 size, then: u64 n + n u64 row_ptr; u64 m + m u64 children;
            per module: str kind, then bytes payload (none for kind "_lib")
    cuda    str fmt, fmap, bytes code
    fmap    u64 count; per function: str key, str name, u64 n + n DLDataType (4 bytes),
            u64 n + n str launch_param_tags, u64 n + n int32 arg_extra_tags
    str / bytes: u64 length + the bytes
"""
from __future__ import annotations

import json
import struct
import subprocess
from pathlib import Path

from builder.errors import CompileError

# The GPUs AWS rents: T4 (sm_75), A100 (sm_80), A10G (sm_86), L4 / L40S (sm_89), H100 / H200
# (sm_90). sm_87 is Jetson Orin (edge). nvcc 13 dropped sm_70; sm_90a-style variants need
# feature flags TVM's codegen does not set.
CUDA_ARCHS = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90")
LIBRARY_BIN = b"__tvm_ffi__library_bin"
FATBIN_MAGIC = 0xBA55ED50
_FATBIN_PTX, _FATBIN_ELF = 1, 2


# ---------------------------------------------------------------- byte layouts

class _Reader:
    def __init__(self, data: bytes, offset: int = 0):
        self.data, self.off = data, offset

    def u64(self) -> int:
        if self.off + 8 > len(self.data):
            raise ValueError("truncated")
        (v,) = struct.unpack_from("<Q", self.data, self.off)
        self.off += 8
        return v

    def take(self, n: int) -> bytes:
        if self.off + n > len(self.data):
            raise ValueError("truncated")
        b = self.data[self.off:self.off + n]
        self.off += n
        return b

    def bytes_(self) -> bytes:
        return self.take(self.u64())


def _u64(v: int) -> bytes:
    return struct.pack("<Q", v)


def _bytes(b: bytes) -> bytes:
    return _u64(len(b)) + b


def parse_blob(blob: bytes) -> tuple[list[int], list[int], list[tuple[str, bytes | None]]]:
    """(row_ptr, children, [(kind, payload)]) of a packed-imports blob."""
    r = _Reader(blob)
    if r.u64() != len(blob) - 8:
        raise ValueError("packed-imports blob: size field does not match")
    rows = [r.u64() for _ in range(r.u64())]
    kids = [r.u64() for _ in range(r.u64())]
    modules = []
    for _ in range(len(rows) - 1):
        kind = r.bytes_().decode()
        modules.append((kind, None if kind == "_lib" else r.bytes_()))
    if r.off != len(blob):
        raise ValueError("packed-imports blob: trailing bytes")
    return rows, kids, modules


def write_blob(rows: list[int], kids: list[int], modules: list[tuple[str, bytes | None]]) -> bytes:
    body = _u64(len(rows)) + b"".join(map(_u64, rows)) + _u64(len(kids)) + b"".join(map(_u64, kids))
    for kind, payload in modules:
        body += _bytes(kind.encode()) + (b"" if payload is None else _bytes(payload))
    return _u64(len(body)) + body


def parse_cuda_module(payload: bytes) -> tuple[str, bytes, int, bytes]:
    """(fmt, fmap bytes, number of kernels, code) of a serialized cuda module."""
    r = _Reader(payload)
    fmt = r.bytes_().decode()
    start = r.off
    count = r.u64()
    for _ in range(count):
        r.bytes_()  # key
        r.bytes_()  # name
        r.take(4 * r.u64())  # arg types
        for _ in range(r.u64()):
            r.bytes_()  # launch param tags
        r.take(4 * r.u64())  # arg extra tags
    fmap = payload[start:r.off]
    code = r.bytes_()
    if r.off != len(payload):
        raise ValueError("cuda module: trailing bytes")
    return fmt, fmap, count, code


def fatbin_entries(fatbin: bytes) -> list[tuple[str, int]]:
    """[("sass" | "ptx", sm)] in a CUDA fatbin (e.g. ("sass", 86) is SASS for sm_86)."""
    if len(fatbin) < 16:
        raise ValueError("not a CUDA fatbin")
    magic, _version, header, total = struct.unpack_from("<IHHQ", fatbin, 0)
    if magic != FATBIN_MAGIC:
        raise ValueError("not a CUDA fatbin")
    out, off, end = [], header, header + total
    if end > len(fatbin):
        raise ValueError("truncated CUDA fatbin")
    while off < end:
        if off + 0x20 > len(fatbin):
            raise ValueError("truncated CUDA fatbin entry")
        kind, _ver, entry_header, padded = struct.unpack_from("<HHIQ", fatbin, off)
        (sm,) = struct.unpack_from("<I", fatbin, off + 0x1C)
        if entry_header + padded == 0:
            raise ValueError("malformed CUDA fatbin entry (size 0)")
        if kind in (_FATBIN_PTX, _FATBIN_ELF):
            out.append(("ptx" if kind == _FATBIN_PTX else "sass", sm))
        off += entry_header + padded
    return out


def library_blob(so_path: Path) -> bytes:
    """The packed-imports blob of an exported library, read from the file: what the runtime
    will load, without loading it."""
    from builder.elf import read_symbol

    try:
        return read_symbol(so_path, LIBRARY_BIN, size_prefix=True)
    except ValueError as e:
        raise ValueError(f"{e} (a library without imported modules)") from None


def device_code_of(so_path: Path) -> list[dict]:
    """What device code a library carries, read from the file: per cuda module its format,
    kernels and, for fatbins, the SASS and PTX architectures."""
    found = []
    for kind, payload in parse_blob(library_blob(so_path))[2]:
        if kind != "cuda":
            continue
        fmt, _fmap, kernels, code = parse_cuda_module(payload)
        entry = {"format": fmt, "kernels": kernels, "bytes": len(code)}
        if fmt == "fatbin":
            entry.update(_arch_summary(fatbin_entries(code)))
        found.append(entry)
    return found


def _arch_summary(entries: list[tuple[str, int]]) -> dict:
    ptx = [sm for kind, sm in entries if kind == "ptx"]
    return {"sass": sorted({f"sm_{sm}" for kind, sm in entries if kind == "sass"}, key=arch_number),
            "ptx": f"compute_{max(ptx)}" if ptx else None}


def arch_number(arch: str) -> int:
    """75 for sm_75 or compute_75."""
    return int(arch.split("_")[1])


# ---------------------------------------------------------------- building

def nvcc_command(archs: list[str], source: Path, out: Path) -> list[str]:
    """SASS for every arch, PTX for the newest (forward compatibility through the driver's
    JIT). -O3 and --use_fast_math are what TVM's own nvcc path uses."""
    archs = sorted(set(archs), key=arch_number)
    cmd = ["nvcc", "-fatbin", "-O3", "--use_fast_math", "--threads", "0", "-o", str(out)]
    for arch in archs[:-1]:
        n = arch.split("_")[1]
        cmd += ["-gencode", f"arch=compute_{n},code=sm_{n}"]
    n = archs[-1].split("_")[1]
    cmd += ["-gencode", f"arch=compute_{n},code=[sm_{n},compute_{n}]", str(source)]
    return cmd


def compile_fatbin(source: bytes, archs: list[str], workdir: Path) -> bytes:
    src, out = Path(workdir) / "device.cu", Path(workdir) / "device.fatbin"
    src.write_bytes(source)
    cmd = nvcc_command(archs, src, out)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n    ".join((proc.stderr or proc.stdout).strip().splitlines()[-12:])
        raise CompileError(f"nvcc failed to compile the device code (exit {proc.returncode}):\n    {tail}",
                           where=" ".join(cmd), hint="check the CUDA toolkit version (CUDA 13) and --cuda-arch")
    return out.read_bytes()


def fatbin_packer(archs: list[str], host_llvm_target: dict, record: dict):
    """An `export_library(fpack_imports=...)` callback: packs the imported modules as TVM
    would, with every cuda module's source compiled into a fatbin for `archs`; fills
    `record` with the manifest's device_code."""
    import tvm

    def pack(mod, is_system_lib: bool, prefix: str, workdir: str) -> str:
        blob = tvm.get_global_func("runtime.ModulePackImportsToTensor")(mod).numpy().tobytes()
        rows, kids, modules = parse_blob(blob)
        rewritten, summaries = [], []
        for kind, payload in modules:
            if kind == "cuda":
                fmt, fmap, kernels, code = parse_cuda_module(payload)
                if fmt != "cuda":  # TVM compiled it already (a driver-side path we force off)
                    raise CompileError(f"TVM produced a cuda module of format {fmt!r}, expected CUDA source",
                                       hint="report it with --debug and the TVM version")
                fatbin = compile_fatbin(code, archs, Path(workdir))
                payload = _bytes(b"fatbin") + fmap + _bytes(fatbin)
                summaries.append({"format": "fatbin", **_arch_summary(fatbin_entries(fatbin)),
                                  "kernels": kernels, "bytes": len(fatbin), "source_bytes": len(code)})
            rewritten.append((kind, payload))
        if len(summaries) != 1:
            raise CompileError(f"expected one cuda module in the library, found {len(summaries)}",
                               hint="report it with the model config")
        record.update(summaries[0])
        obj = tvm.get_global_func("codegen.codegen_blob")(
            write_blob(rows, kids, rewritten), is_system_lib, json.dumps(host_llvm_target), prefix)
        path = str(Path(workdir) / f"{prefix}devc.o")
        obj.write_to_file(path)
        return path

    return pack
