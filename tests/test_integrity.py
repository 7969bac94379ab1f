"""A model's files are what model.json says before anything uses them: sizes and sha256s,
model.weights' own table, plain file names; and the TVM runtime libraries are never taken
from the working directory."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import runtime
from runtime import _tvm
from runtime import manifest as mf

ROOT = Path(__file__).resolve().parent.parent


# -- model.weights' table -------------------------------------------------------------------
def _weights_blob(entries: list, data: bytes, length: int | None = None) -> bytes:
    """A model.weights file as builder/compiler/weights.py lays it out; `length` overrides
    the header length field."""
    header = json.dumps({"tensors": entries}, separators=(",", ":")).encode()
    start = -(-(_tvm.WEIGHTS_HEADER + len(header)) // _tvm.WEIGHTS_ALIGN) * _tvm.WEIGHTS_ALIGN
    head = _tvm.WEIGHTS_MAGIC + struct.pack("<Q", len(header) if length is None else length) + header
    return head + b"\0" * (start - len(head)) + data


def _entry(offset, shape=(4, 4), dtype="float32", nbytes=None):
    size = math.prod(shape) * 4 if nbytes is None else nbytes
    return {"dtype": dtype, "shape": list(shape), "offset": offset, "nbytes": size}


GOOD = [_entry(0), _entry(64)]
DATA = bytes(range(128))


def test_a_well_formed_weights_file_maps(tmp_path):
    path = tmp_path / "model.weights"
    path.write_bytes(_weights_blob(GOOD, DATA))
    w = _tvm.Weights(path, expect_count=2)
    assert len(w.tensors) == 2


@pytest.mark.parametrize("entries, data, length, problem", [
    ([_entry(-64), _entry(64)], DATA, None, "offset or size that is not an integer >= 0"),
    ([_entry(0, shape=(-4, -4)), _entry(64)], DATA, None, "dimension that is not an integer >= 0"),
    ([_entry(0, shape=(4, True)), _entry(64)], DATA, None, "dimension that is not an integer >= 0"),
    ([_entry(0), _entry(64, nbytes=-64)], DATA, None, "offset or size that is not an integer >= 0"),
    ([_entry(0), _entry(128)], DATA, None, "past the end of the file"),
    ([_entry(0), _entry(1 << 62)], DATA, None, "past the end of the file"),
    ([_entry(0), _entry(32)], DATA, None, "not at a multiple of 64"),
    ([_entry(0, shape=(4, 8)), _entry(64)], DATA, None, "overlapping"),
    ([_entry(0), _entry(0)], DATA, None, "overlapping"),
    ([_entry(0), _entry(64, nbytes=60)], DATA, None, "size is not its shape's"),
    ([_entry(0), _entry(64, dtype="bfloat16")], DATA, None, "dtype this runtime does not read"),
    ([_entry(0), {"dtype": "float32", "shape": "4x4", "offset": 64, "nbytes": 64}], DATA, None, "malformed"),
    ([_entry(0), _entry(64.0)], DATA, None, "offset or size that is not an integer >= 0"),
    (GOOD, DATA, 1 << 62, "a table of"),  # read before the check, it would allocate 4 EiB
], ids=["negative-offset", "negative-dims", "bool-dim", "negative-nbytes", "past-end", "far-past-end",
        "misaligned", "overlapping", "same-offset", "nbytes-not-shape", "unknown-dtype", "malformed",
        "float-offset", "header-length-past-end"])
def test_weights_table_entries_that_do_not_fit_the_format_are_refused(tmp_path, entries, data, length, problem):
    path = tmp_path / "model.weights"
    path.write_bytes(_weights_blob(entries, data, length))
    with pytest.raises(runtime.IntegrityError) as exc:
        _tvm.Weights(path, expect_count=2)
    msg = str(exc.value)
    assert problem in msg and str(path) in msg
    assert "rebuild the model" in msg and "copy the bundle again" in msg


# -- plain file names ------------------------------------------------------------------------
def _manifest() -> dict:
    m = mf.Manifest(
        model=mf.ModelInfo("m", "m", "bert", "feature-extraction", "BertModel"),
        target=mf.TargetInfo("x86_64", {"kind": "llvm"}, "x86_64", "cpu", "x86_64"),
        inputs=(mf.Tensor("input_ids", ("batch", "seq"), "int64", (0, 10), 0, "ids"),),
        outputs=(mf.Tensor("x", ("batch", 4), "float32"),),
        variants=(mf.Variant("avx2", ("avx2",), {"kind": "llvm"}, (mf.Library("model.so", 32, (0,)),)),),
        weights=mf.WeightsFile("model.weights", 1, 128),
        max_batch=8, preprocessing=mf.TextPreprocessing("tokenizer.json", 32, 3200),
        postprocessing=mf.Postprocessing("embedding", "x"), labels=None, glibc_required="2.17",
        runtime_libraries={"tvm": [], "system": []}, versions=mf.Versions("0", "0", "0", None, None, "3.11"),
        files={n: {"sha256": "0" * 64, "size": 1} for n in ("model.so", "model.weights", "tokenizer.json")})
    return m.to_json()


def _rename(d: dict, where: str, name: str) -> None:
    if where == "library":
        d["variants"][0]["libraries"][0]["file"] = name
        d["files"][name] = d["files"].pop("model.so")
    elif where == "weights":
        d["weights"]["file"] = name
        d["files"][name] = d["files"].pop("model.weights")
    elif where == "tokenizer":
        d["preprocessing"]["tokenizer"] = name
        d["files"][name] = d["files"].pop("tokenizer.json")
    else:  # a file listed only in "files": what the formats copy into bundles
        d["files"][name] = {"sha256": "0" * 64, "size": 1}


@pytest.mark.parametrize("where", ["library", "weights", "tokenizer", "files"])
@pytest.mark.parametrize("name", ["../x", "a/b", "/etc/passwd", "", ".", "..", "x\0y", "..\\x"])
def test_manifest_names_must_be_plain_file_names(tmp_path, where, name):
    d = _manifest()
    assert mf.Manifest.from_json(d).files  # the unedited one reads
    _rename(d, where, name)
    with pytest.raises(mf.ManifestError, match="not a plain file name") as exc:
        mf.Manifest.from_json(d)
    assert repr(name) in str(exc.value)
    # What runtime.load and the builder's formats read through, from disk.
    (tmp_path / "model.json").write_text(json.dumps(d))
    with pytest.raises(mf.ManifestError, match="not a plain file name"):
        mf.read(tmp_path)


def test_files_the_runtime_opens_must_be_listed_with_their_digests():
    d = _manifest()
    del d["files"]["tokenizer.json"]
    with pytest.raises(mf.ManifestError, match="tokenizer.json is not listed"):
        mf.Manifest.from_json(d)
    d = _manifest()
    d["files"]["model.so"] = {"sha256": "not hex", "size": 1}
    with pytest.raises(mf.ManifestError, match="needs a sha256"):
        mf.Manifest.from_json(d)
    d["files"]["model.so"] = {"sha256": "0" * 64, "size": -1}
    with pytest.raises(mf.ManifestError, match="needs a sha256"):
        mf.Manifest.from_json(d)


# -- libtvm_*.so lookup ----------------------------------------------------------------------
_PLANTED_C = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    FILE *f = fopen(getenv("EB_PLANTED_MARKER"), "a");
    if (f) { fputs("planted library loaded\n", f); fclose(f); }
}
"""

_PROBE = """
import json, os, sys
from pathlib import Path
assert sys.path[0] == "", sys.path  # python -c: the working directory, as ''
sys.path.insert(1, os.getcwd())  # and as python -m puts it: absolute
from runtime import _tvm
_tvm.load_tvm_runtime(Path(sys.argv[1]))
print(json.dumps(_tvm._loaded))
"""


def test_libraries_planted_in_the_working_directory_are_not_loaded(tmp_path):
    if shutil.which("gcc") is None:
        pytest.skip("gcc is needed to make the planted library")
    cwd = tmp_path / "cwd"
    src = tmp_path / "planted.c"
    src.write_text(_PLANTED_C)
    for rel in ("tvm_ffi/lib/libtvm_ffi.so", "tvm/lib/libtvm_runtime.so"):
        (cwd / rel).parent.mkdir(parents=True)
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(cwd / rel), str(src)], check=True)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    marker = tmp_path / "marker"
    env = {k: v for k, v in os.environ.items() if k not in ("EDGEBUNDLE_LIBTVM_RUNTIME", "PYTHONPATH")}
    env.update(PYTHONPATH=str(ROOT), EB_PLANTED_MARKER=str(marker))
    proc = subprocess.run([sys.executable, "-c", _PROBE, str(model_dir)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)
    assert not marker.exists(), "a libtvm_*.so from the working directory was loaded"
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    # The development case still works: the pip packages' own copies, found without importing them.
    for name, package in (("libtvm_ffi.so", "tvm_ffi"), ("libtvm_runtime.so", "tvm")):
        installed = Path(importlib.util.find_spec(package).submodule_search_locations[0]) / "lib" / name
        assert Path(loaded[name]) == installed


# -- sizes and sha256s at load (a compiled model) -------------------------------------------
def _copy(build: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "x86_64"
    shutil.copytree(build, dest)
    return dest


def _flip(path: Path, at: int) -> None:
    data = bytearray(path.read_bytes())
    data[at] ^= 0xFF
    path.write_bytes(bytes(data))


def _mapped(path: Path) -> bool:
    return str(path) in Path("/proc/self/maps").read_text()


@pytest.mark.slow
def test_tampered_weights_are_refused_before_the_first_answer(tiny_bert_build, tmp_path):
    tdir = _copy(tiny_bert_build, tmp_path)
    weights = tdir / "model.weights"
    _flip(weights, weights.stat().st_size // 2)  # a weight's byte: the file's table still fits
    model = runtime.load(tdir)  # the sha256 runs in the background: load does not wait for it
    for answer in (lambda: model.predict("hello world"), model.warm, lambda: model.predict("again")):
        with pytest.raises(runtime.IntegrityError) as exc:
            answer()
        msg = str(exc.value)
        assert str(weights) in msg and "sha256" in msg
        assert "rebuild the model" in msg and "copy the bundle again" in msg
    # The untouched build answers.
    assert len(runtime.load(tiny_bert_build).predict("hello world")) == 128


@pytest.mark.slow
def test_truncated_or_modified_code_is_refused_before_it_is_loaded(tiny_bert_build, tmp_path):
    tdir = _copy(tiny_bert_build, tmp_path)
    so = tdir / "model.so"
    raw = so.read_bytes()
    so.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(runtime.IntegrityError) as exc:
        runtime.load(tdir)
    msg = str(exc.value)
    assert str(so) in msg and f"{len(raw) // 2} bytes" in msg and str(len(raw)) in msg
    assert "rebuild the model" in msg and "copy the bundle again" in msg
    # Same size, one byte changed: refused by its sha256, and never dlopen'ed (that would run it).
    so.write_bytes(raw)
    _flip(so, len(raw) // 2)
    with pytest.raises(runtime.IntegrityError, match="model.so has sha256"):
        runtime.load(tdir)
    assert not _mapped(so)
    so.write_bytes(raw)
    # Every file model.json lists, the tokenizer and the shorter lengths' code included.
    _flip(tdir / "tokenizer.json", 10)
    with pytest.raises(runtime.IntegrityError, match="tokenizer.json has sha256"):
        runtime.load(tdir)
    shutil.copy(tiny_bert_build / "tokenizer.json", tdir / "tokenizer.json")
    (tdir / "model-seq16.so").unlink()
    with pytest.raises(runtime.IntegrityError, match="model-seq16.so is missing"):
        runtime.load(tdir)
    shutil.copy(tiny_bert_build / "model-seq16.so", tdir / "model-seq16.so")
    weights = tdir / "model.weights"
    with open(weights, "ab") as f:
        f.write(b"\0" * 64)
    with pytest.raises(runtime.IntegrityError, match="model.weights is .* bytes"):
        runtime.load(tdir)
    shutil.copy(tiny_bert_build / "model.weights", weights)
    assert len(runtime.load(tdir).predict("hello world")) == 128


@pytest.mark.slow
def test_a_weights_table_that_does_not_fit_is_refused_even_with_matching_digests(tiny_bert_build, tmp_path):
    """A manifest whose digests match a file with a bad table (another build's, or a
    crafted one): the table check, not the sha256, is what refuses it."""
    tdir = _copy(tiny_bert_build, tmp_path)
    path = tdir / "model.weights"
    raw = path.read_bytes()
    (length,) = struct.unpack("<Q", raw[8:16])
    entries = json.loads(raw[16:16 + length])["tensors"]
    data = raw[-(-(16 + length) // 64) * 64:]
    for change, problem in ((lambda e: e[0].update(offset=-64), "offset or size"),
                            (lambda e: e[0].update(shape=[-d for d in e[0]["shape"]]), "dimension"),
                            (lambda e: e[-1].update(offset=e[-1]["offset"] + len(data)), "past the end")):
        edited = json.loads(json.dumps(entries))
        change(edited)
        blob = _weights_blob(edited, data)
        path.write_bytes(blob)
        m = json.loads((tdir / "model.json").read_text())
        m["files"]["model.weights"] = {"sha256": hashlib.sha256(blob).hexdigest(), "size": len(blob)}
        m["weights"]["bytes"] = len(blob)
        (tdir / "model.json").write_text(json.dumps(m))
        with pytest.raises(runtime.IntegrityError, match=problem) as exc:
            runtime.load(tdir)
        assert str(path) in str(exc.value)
