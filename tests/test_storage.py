"""Weights stored as fp16 / bf16 (`build --weights`), widened to fp32 inside the kernels."""
from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest

import reference
from test_bundles import run_zip


def test_narrow_rounds_to_nearest_and_keeps_what_it_cannot_narrow():
    from builder.compiler.schedules.storage import MIN_ELEMENTS, narrow

    rng = np.random.default_rng(0)
    w = rng.standard_normal(MIN_ELEMENTS).astype(np.float32)
    # bf16 is the upper half of a float32, rounded to nearest, ties to even
    w[:4] = np.array([0x3F808000, 0x3F818000, 0x3F80C000, 0x3F807FFF], np.uint32).view(np.float32)
    b = narrow(w, "bf16")
    assert b.dtype == np.uint16
    assert list(b[:4]) == [0x3F80, 0x3F82, 0x3F81, 0x3F80]
    wide = (b.astype(np.uint32) << 16).view(np.float32)
    assert np.abs(wide - w).max() <= np.abs(w).max() * 2.0 ** -8
    h = narrow(w, "fp16")
    assert h.dtype == np.float16 and np.abs(h.astype(np.float32) - w).max() <= np.abs(w).max() * 2.0 ** -11
    assert narrow(w, "fp32") is w
    small = w[:MIN_ELEMENTS - 1]
    assert narrow(small, "fp16") is small  # biases and norms stay fp32
    huge = w * 1e5  # beyond float16's 65504: kept fp32 rather than made inf
    assert narrow(huge, "fp16") is huge and narrow(huge, "bf16").dtype == np.uint16
    ints = np.arange(MIN_ELEMENTS, dtype=np.int64)
    assert narrow(ints, "fp16") is ints


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["avx2", "avx512"])
def test_kernels_read_the_narrow_weights(variant):
    """An embedding, a Linear, a strided 7x7 stem, Winograd 3x3s (F(4x4) on a 32-wide map,
    F(2x2) on a 16-wide one), a 1x1 conv and a strided 3x3 (packed input): with fp16 and bf16
    weights every large weight the compiled model takes is narrow but F(4x4)'s (no fp32 copy
    made at build or load), the matmul keeps its bias add as an epilogue, and the answers are as
    close to PyTorch fp32 as PyTorch with its weights rounded the same way (the kernels add
    little of their own)."""
    import copy

    import torch
    import tvm
    from tvm import relax, tirx
    from tvm.relax.frontend.torch import from_exported_program

    from builder.compiler import weights
    from builder.compiler.schedules.cpu import cpu_pipeline, params_from_env
    from builder.compiler.schedules.storage import MIN_ELEMENTS
    from conftest import variant_target

    target = tvm.target.Target(variant_target(variant))

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(1000, 64)
            self.lin = torch.nn.Linear(64, 96)
            self.stem = torch.nn.Conv2d(3, 32, 7, stride=2, padding=3)
            self.w1 = torch.nn.Conv2d(32, 32, 3, padding=1)
            self.pw = torch.nn.Conv2d(32, 64, 1)
            self.w2 = torch.nn.Conv2d(64, 64, 3, padding=1)
            self.down = torch.nn.Conv2d(64, 64, 3, stride=2, padding=1)  # a packed-input GEMM
            self.w3 = torch.nn.Conv2d(64, 64, 3, padding=1)  # 16 wide: F(2x2)

        def forward(self, ids, img):
            return self.lin(self.emb(ids)), self.w3(self.down(self.w2(self.pw(self.w1(self.stem(img))))))

    torch.manual_seed(0)
    model = M().eval()
    ids, img = torch.randint(0, 1000, (2, 16)), torch.randn(1, 3, 64, 64)
    mod = from_exported_program(torch.export.export(model, (ids, img)))
    with torch.no_grad():
        want = [t.numpy() for t in model(ids, img)]
    for storage, dtype, narrow_dtype in (("fp16", torch.float16, "float16"), ("bf16", torch.bfloat16, "uint16")):
        rounded = copy.deepcopy(model)
        with torch.no_grad():
            for p in rounded.parameters():
                if p.numel() >= MIN_ELEMENTS:
                    p.copy_(p.to(dtype).float())
            ideal = [t.numpy() for t in rounded(ids, img)]
        names, lifted = [], []

        @tvm.transform.module_pass(opt_level=0, name="Names")
        def spy(m, _ctx):
            names.extend(g.name_hint for g, f in m.functions.items() if isinstance(f, tirx.PrimFunc))
            return m

        ex = tvm.compile(mod, target=target, relax_pipeline=tvm.transform.Sequential(
            [cpu_pipeline(target, params_from_env(variant), storage=storage), spy, weights.lift_constants_pass(lifted)]))
        # F(4x4)'s transformed weights stay fp32: its output transform magnifies their rounding
        f4 = [t for t in lifted if tuple(t.shape)[:2] == (6, 6)]
        assert f4 and all(str(t.dtype) == "float32" for t in f4), storage
        big = [str(t.dtype) for t in lifted if np.prod(t.shape) >= MIN_ELEMENTS and tuple(t.shape)[:2] != (6, 6)]
        assert len(big) >= 5 and set(big) == {narrow_dtype}, (storage, big)
        assert any(tuple(t.shape)[:2] == (4, 4) for t in lifted), storage  # F(2x2)'s, narrow
        assert any(n.startswith("fused_matmul_add") for n in names), (storage, names)
        assert any("conv2d_packed" in n for n in names), names
        got = relax.VirtualMachine(ex, tvm.cpu())["main"](tvm.runtime.tensor(ids.numpy()), tvm.runtime.tensor(img.numpy()),
                                                          *lifted)
        for g, w, i in zip(got, want, ideal):
            scale = np.abs(w).max()
            assert np.abs(g.numpy() - w).max() <= 2 * np.abs(i - w).max() + 1e-5 * scale, storage


@pytest.mark.slow
def test_fp16_and_bf16_builds_answer_through_lambda(tiny_bert_dir, tiny_resnet_dir, tiny_bert_build, tmp_path):
    """A tiny BERT with fp16 weights and a tiny ResNet with bf16 ones, built into Lambda zips
    and invoked the way Lambda runs them: within the storage's tolerance of PyTorch fp32,
    with half the weight bytes, the storage in the manifest and in `inspect`."""
    from conftest import _build

    from builder.compiler.schedules.storage import TOLERANCE
    from builder.tools.describe import describe

    bert = _build(tiny_bert_dir, tmp_path / "bert", weights="fp16")
    manifest = json.loads((bert / "model.json").read_text())
    assert manifest["weights"]["storage"] == "fp16"
    assert "(fp16)" in describe(bert)
    raw = (bert / "model.weights").read_bytes()
    table = json.loads(raw[16:16 + struct.unpack("<Q", raw[8:16])[0]])
    assert "float16" in {t["dtype"] for t in table["tensors"]}
    fp32_bytes = (tiny_bert_build / "model.weights").stat().st_size
    assert (bert / "model.weights").stat().st_size < 0.6 * fp32_bytes
    sentences = ["The quick brown fox.", "Lambda bundles without PyTorch."]
    tensors = reference.tokenize(bert / "tokenizer.json", sentences)
    rc, (answer,) = run_zip(bert / "lambda.zip", [{"tensors": tensors}])
    ref = reference.bert_mean_embeddings(tiny_bert_dir, tensors)
    got = np.array(answer["tensors"]["sentence_embedding"])
    assert rc == 0 and np.abs(got - ref).max() <= TOLERANCE["fp16"] * np.abs(ref).max()

    import runtime

    resnet = _build(tiny_resnet_dir, tmp_path / "resnet", weights="bf16")
    assert json.loads((resnet / "model.json").read_text())["weights"]["storage"] == "bf16"
    pixels = runtime.load(resnet).encoder([reference.png_base64(3, size=(97, 71))])["pixel_values"]
    rc, (logits,) = run_zip(resnet / "lambda.zip", [{"tensors": {"pixel_values": pixels.tolist()}}])
    ref = reference.resnet_logits(tiny_resnet_dir, pixels)
    got = np.array(logits["tensors"]["logits"])
    assert rc == 0 and np.abs(got - ref).max() <= TOLERANCE["bf16"] * np.abs(ref).max()


def test_a_manifest_without_storage_reads_as_fp32():
    from runtime.manifest import WeightsFile

    assert WeightsFile.from_json({"file": "model.weights", "count": 3, "bytes": 4096}).storage == "fp32"
    assert WeightsFile.from_json(WeightsFile("model.weights", 3, 4096, "bf16").to_json()).storage == "bf16"


def test_unknown_storage_is_a_clear_error():
    from builder.errors import EdgebundleError
    from builder.options import BuildOptions

    with pytest.raises(EdgebundleError, match="unknown weight storage 'int4'"):
        BuildOptions(weights="int4")


@pytest.mark.slow
@pytest.mark.emulated_arm64
@pytest.mark.skipif(shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="needs qemu-user and g++-aarch64-linux-gnu")
def test_arm64_fp16_build_answers_like_the_x86_64_one(tiny_bert_dir, tmp_path):
    """fp16 weights on arm64 (widened with NEON's fcvtl): validated under qemu at build, and
    its answers as close to x86_64's fp16 build as two fp32 computes of the same weights."""
    from conftest import _build

    import runtime
    from builder.compiler.targets import TARGETS
    from builder.progress import Progress
    from builder.validate.emulated import run_emulated

    arm = _build(tiny_bert_dir, tmp_path / "arm", targets=("arm64",), weights="fp16", formats=())
    manifest = json.loads((arm / "model.json").read_text())
    assert manifest["weights"]["storage"] == "fp16"
    assert manifest["variants"][0]["validation"]["how"].startswith("emulated")
    x86 = _build(tiny_bert_dir, tmp_path / "x86", weights="fp16", formats=())
    tensors = {k: np.asarray(v) for k, v in
               reference.tokenize(x86 / "tokenizer.json", ["Graviton runs this in fp16.", "Two texts."]).items()}
    (ours,) = run_emulated(arm, TARGETS["arm64"], [tensors], Progress(quiet=True))
    for name, value in runtime.load(x86).run(tensors).items():
        want = np.asarray(value)
        assert np.abs(ours[name] - want).max() <= 1e-4 * max(1.0, np.abs(want).max()), name


def test_only_takes_along_rows_in_fast_or_clip_mode_are_rewritten():
    """take without an axis (torch.take: a flat index) or with "wrap" keeps TVM's own
    legalization; an embedding lookup reads the narrow table."""
    import numpy as np
    import tvm
    from tvm import relax

    from builder.compiler.schedules.storage import store_weights

    rng = np.random.default_rng(0)
    table = relax.const(rng.standard_normal((512, 16)).astype("float32"))
    flat = relax.const(rng.standard_normal(8192).astype("float32"))
    ids = relax.Var("ids", relax.TensorType((4,), "int64"))
    bb = relax.BlockBuilder()
    with bb.function("main", [ids]):
        with bb.dataflow():
            outs = [bb.emit(relax.op.take(data, ids, axis=axis, mode=mode))
                    for data, axis, mode in ((table, 0, "fast"), (flat, None, "fast"), (table, 0, "wrap"))]
            out = bb.emit_output(relax.Tuple(outs))
        bb.emit_func_output(out)
    text = store_weights("fp16")(bb.get()).script()
    assert text.count("R.call_tir(") == 1 and text.count("R.take(") == 2, text
