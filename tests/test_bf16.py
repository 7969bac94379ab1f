"""bf16 compute (`build --compute bf16|auto`), its accuracy gate, and bench's OpenVINO rows."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import reference
import tiny_models
from test_int8 import HELD_OUT


def _host_has_bf16() -> bool:
    from runtime import cpu

    return not cpu.missing(cpu.KINDS["avx512-bf16"], cpu.features())


needs_bf16 = pytest.mark.skipif(not _host_has_bf16(), reason="this CPU has no AVX512_BF16")


def _bf16_exact(a: np.ndarray) -> np.ndarray:
    """float32 rounded to bfloat16 (nearest even) and back, as float64."""
    from builder.compiler.schedules.storage import bf16_bits

    return (bf16_bits(a).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def test_weights_are_packed_in_panels_of_16_columns_by_2_steps():
    from builder.compiler.schedules.bf16 import STEP, pack_weight
    from builder.compiler.schedules.dot import PANEL
    from builder.compiler.schedules.storage import bf16_bits

    rng = np.random.default_rng(0)
    k, n = 6, 32  # small: bf16 compute rounds every dense weight, storage.narrow's size floor aside
    w = rng.standard_normal((k, n)).astype(np.float32)
    (packed,) = pack_weight(w)
    halves = packed.view(np.uint16)
    bits = bf16_bits(w)
    assert packed.dtype == np.int32 and halves.size == k * n
    for p, kk, c, t in [(0, 0, 0, 0), (1, 2, 7, 1), (1, 1, 15, 0)]:
        assert halves[((p * (k // STEP) + kk) * PANEL + c) * STEP + t] == bits[kk * STEP + t, p * PANEL + c]


def test_variant_choice_with_and_without_bf16():
    """auto carries the bf16 variant beside the fp32 ones and it answers only where the CPU
    has AVX512_BF16 (Zen 2, Skylake-SP and Ice Lake do not); bf16 alone is one variant."""
    from builder.compiler.targets import TARGETS
    from runtime import cpu
    from runtime.manifest import Library, Variant

    x86 = TARGETS["x86_64"]
    auto = x86.variants(compute="auto")
    assert [v.name for v in auto] == ["avx2", "avx512", "avx512-bf16"]
    assert [v.compute for v in auto] == ["fp32", "fp32", "bf16"]
    assert x86.tvm_target_json(auto[2].cpu, (), auto[2].attrs)["mattr"] == ["+avx512bf16"]
    assert [v.name for v in x86.variants(compute="bf16")] == ["avx512-bf16"]
    assert [v.name for v in x86.variants()] == ["avx2", "avx512"]
    assert [v.name for v in TARGETS["arm64"].variants(compute="auto")] == ["neoverse-n1", "arm64-bf16"]
    variants = [Variant(v.name, cpu.KINDS[v.name].features, None, (Library(f"model{v.suffix}.so", None, ()),),
                        validation={}) for v in auto]
    v3, v4 = set(cpu.KINDS["avx2"].features), set(cpu.KINDS["avx512"].features)
    assert cpu.choose(variants, have=v3).variant.name == "avx2"
    assert cpu.choose(variants, have=v4 | {"avx512_vnni"}).variant.name == "avx512"
    assert cpu.choose(variants, have=v4 | {"avx512_bf16"}).variant.name == "avx512-bf16"
    arm = [Variant(v.name, cpu.KINDS[v.name].features, None, (Library("model.so", None, ()),), validation={})
           for v in TARGETS["arm64"].variants(compute="auto")]
    assert cpu.choose(arm, have={"fp", "asimd", "asimddp"}).variant.name == "neoverse-n1"  # Graviton2
    assert cpu.choose(arm, have={"fp", "asimd", "asimddp", "bf16"}).variant.name == "arm64-bf16"  # Graviton3


@pytest.mark.parametrize("arch", ["x86_64", "arm64"])
def test_kernels_use_the_bf16_dot_product(arch):
    """The IR-imported instruction survives into the code: vdpbf16ps on x86_64, bfdot on arm64
    (compiled only: no machine is needed to read the assembly)."""
    import tvm

    from builder.compiler.schedules import bf16
    from builder.compiler.schedules.dot import Epilogue
    from builder.compiler.targets import TARGETS

    target = TARGETS[arch]
    (spec,) = target.variants(compute="bf16")
    tvm_target = tvm.target.Target(target.tvm_target_json(spec.cpu, (), spec.attrs))
    kind = bf16.kernel_kind(tvm_target)
    assert kind is not None and kind.name == {"x86_64": "avx512bf16", "arm64": "bfdot"}[arch]
    base = TARGETS[arch].variants()[0]
    assert bf16.kernel_kind(tvm.target.Target(target.tvm_target_json(base.cpu, (), base.attrs))) is None
    lib = tvm.tirx.build(bf16.matmul_func(kind, 64, 48, Epilogue(bias=True)), target=tvm_target)
    asm = lib.inspect_source("asm")
    assert ("vdpbf16ps" if arch == "x86_64" else "bfdot") in asm


@needs_bf16
def test_kernels_compute_bf16_products_in_fp32():
    """Rows rounded to bfloat16 exactly as the weights are, products summed in fp32: equal to
    float64 sums of the rounded operands, on row counts that leave partial tiles."""
    import tvm

    from builder.compiler.schedules import bf16
    from builder.compiler.schedules.dot import Epilogue
    from conftest import variant_target

    target = variant_target("avx512-bf16")
    kind = bf16.kernel_kind(tvm.target.Target(target))
    k, n = 64, 96
    lib = tvm.compile(tvm.IRModule({"r": bf16.rows_func(k), "mm": bf16.matmul_func(kind, k, n, Epilogue(bias=True))}),
                      target=target)
    rng = np.random.default_rng(1)
    w = rng.standard_normal((k, n)).astype(np.float32)
    b = rng.standard_normal(n).astype(np.float32)
    (packed,) = bf16.pack_weight(w)
    for m in (1, 7, 13):
        x = rng.standard_normal((m, k)).astype(np.float32)
        xq = tvm.runtime.tensor(np.zeros((m, k // 2), np.int32))
        lib[f"bf16_rows_{k}"](tvm.runtime.tensor(x), xq)
        from builder.compiler.schedules.storage import bf16_bits

        assert np.array_equal(xq.numpy().view(np.uint16).reshape(m, k), bf16_bits(x))
        y = tvm.runtime.tensor(np.zeros((m, n), np.float32))
        lib[f"bf16_matmul_{k}x{n}_bias"](xq, tvm.runtime.tensor(packed), tvm.runtime.tensor(b), y)
        want = _bf16_exact(x) @ _bf16_exact(w) + b
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        exact = x @ w + b
        assert np.abs(y.numpy() - exact).max() <= 0.02 * np.abs(exact).max()


@needs_bf16
def test_what_follows_a_product_goes_into_its_kernel_where_that_keeps_the_result():
    """matmul, then a BatchNorm-like subtract / divide / add per column, a residual add, a
    per-column scale and a ReLU: the first three fold into the weights and bias, the residual
    into the epilogue; a scale after the residual must not fold into W (the residual is no
    product of W), so it and the ReLU stay ops. The result matches numpy either way."""
    import tvm
    from tvm import relax

    from builder.compiler.schedules import bf16
    from builder.compiler.schedules.cpu import cpu_pipeline, params_from_env
    from conftest import variant_target

    rng = np.random.default_rng(3)
    k, n, m = 128, 48, 8
    w = rng.standard_normal((k, n)).astype(np.float32)
    mean, beta, scale = (rng.standard_normal(n).astype(np.float32) for _ in range(3))
    std = (rng.random(n) + 0.5).astype(np.float32)
    x = relax.Var("x", relax.TensorType((m, k), "float32"))
    r = relax.Var("r", relax.TensorType((m, n), "float32"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x, r]):
        with bb.dataflow():
            y = bb.emit(relax.op.matmul(x, relax.const(w)))
            y = bb.emit(relax.op.subtract(y, relax.const(mean.reshape(1, n))))
            y = bb.emit(relax.op.divide(y, relax.const(std)))
            y = bb.emit(relax.op.add(relax.const(beta), y))
            y = bb.emit(relax.op.add(y, r))
            y = bb.emit(relax.op.multiply(y, relax.const(scale)))
            out = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(out)
    mod = bb.get()
    target = tvm.target.Target(variant_target("avx512-bf16"))
    with target:
        rewritten = bf16.bf16_dense(bf16.kernel_kind(target))(mod)
    names = {gv.name_hint for gv in rewritten.functions}
    assert "bf16_matmul_128x48_bias_res" in names and not any(n.endswith("_relu") for n in names), names
    text = rewritten["main"].script()
    assert "R.multiply" in text and "R.nn.relu" in text and "R.subtract" not in text and "R.divide" not in text
    ex = tvm.compile(mod, target=target, relax_pipeline=cpu_pipeline(target, params_from_env("avx512-bf16"),
                                                                     storage="bf16", compute="bf16"))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    xs = rng.standard_normal((m, k)).astype(np.float32)
    rs = rng.standard_normal((m, n)).astype(np.float32)
    got = vm["main"](tvm.runtime.tensor(xs), tvm.runtime.tensor(rs)).numpy()
    want = np.maximum(((xs @ w - mean) / std + beta + rs) * scale, 0)
    assert np.abs(got - want).max() <= 0.02 * np.abs(want).max()


@pytest.mark.slow
@needs_bf16
def test_resnet_convs_run_as_bf16_matmuls(tiny_resnet_dir, tmp_path):
    """A tiny ResNet --compute bf16: its eligible 1x1 and spatial convs (BatchNorm folded, the
    residual and ReLU in the epilogue) are bf16 matmuls, validated against PyTorch at build,
    and the bundle answers like PyTorch within the bf16 tolerance."""
    from conftest import _build

    import runtime
    from builder.compiler.schedules.bf16 import TOLERANCE
    from builder.model.families import FAMILIES
    from builder.model.families.base import one_request, read_json
    from builder.options import BuildOptions

    out = _build(tiny_resnet_dir, tmp_path / "rn", compute="bf16", formats=())
    m = json.loads((out / "model.json").read_text())
    assert m["weights"]["storage"] == "bf16" and m["weights"]["compute"]["layers"] >= 4
    (v,) = m["variants"]
    assert v["name"] == "avx512-bf16" and v["validation"]["accuracy"]["meaningful"] is False
    config = read_json(tiny_resnet_dir / "config.json", "config.json")
    spec = FAMILIES["resnet"].load(tiny_resnet_dir, config, "image-classification", BuildOptions())
    inputs = one_request(spec)
    import torch

    with torch.no_grad():
        want = spec.module(*(torch.from_numpy(inputs[i.name]) for i in spec.inputs))[0].numpy()
    got = np.asarray(runtime.load(out).run(inputs)["logits"])
    assert 0 < np.abs(got - want).max() <= TOLERANCE * np.abs(want).max()


def test_compute_is_refused_where_it_cannot_run(tiny_bert_dir, tmp_path):
    from builder.build import build
    from builder.errors import EdgebundleError, UnsupportedModelError
    from builder.options import BuildOptions
    from builder.progress import Progress

    with pytest.raises(EdgebundleError, match="unknown compute 'fp8'"):
        BuildOptions(compute="fp8")
    with pytest.raises(UnsupportedModelError, match="choose one"):
        BuildOptions(compute="bf16", quantize="int8")
    for opts in (dict(targets=("cuda",)), dict(schedule=False)):
        with pytest.raises(UnsupportedModelError, match="--compute auto is for CPU targets"):
            build(str(tiny_bert_dir), tmp_path / "out", BuildOptions(compute="auto", **opts),
                  progress=Progress(quiet=True))
    with pytest.raises(UnsupportedModelError, match="the CPU haswell has no bfloat16 dot product"):
        build(str(tiny_bert_dir), tmp_path / "out", BuildOptions(compute="bf16", cpu=("haswell",), seq_len=16),
              progress=Progress(quiet=True))
    assert not (tmp_path / "out" / "x86_64").exists()


@pytest.fixture(scope="module")
def auto_bert(tiny_bert_dir, tmp_path_factory):
    from conftest import _build

    return _build(tiny_bert_dir, tmp_path_factory.mktemp("bf16-bert"), compute="auto", weights="fp16")


@pytest.mark.slow
def test_auto_build_carries_bf16_beside_fp32_and_answers_through_lambda(auto_bert, tiny_bert_dir):
    """A tiny BERT built --compute auto into a Lambda zip: the fp32 variants as before plus
    avx512-bf16 with its kernel, bf16 weights and (where it ran) gate numbers in the manifest
    and `inspect`; the zip answers through whichever variant this CPU picks, and the bf16
    variant within its tolerance of PyTorch fp32."""
    import runtime
    from builder.compiler.schedules.bf16 import TOLERANCE
    from builder.tools.describe import describe
    from test_bundles import run_zip

    m = json.loads((auto_bert / "model.json").read_text())
    assert [v["name"] for v in m["variants"]] == ["avx2", "avx512", "avx512-bf16"]
    bf = m["variants"][2]
    assert bf["schedule"]["bf16"]["kernel"] == "avx512bf16" and "avx512_bf16" in bf["features"]
    assert all("bf16" not in (v["schedule"] or {}) for v in m["variants"][:2])
    # 2 layers x (Q, K, V, attention out, FFN in, FFN out)
    assert m["weights"]["storage"] == "fp16" and m["weights"]["compute"]["layers"] == 12
    text = describe(auto_bert)
    assert "bf16 kernel avx512bf16" in text and "bf16       12 dense / conv layers" in text
    sentences = ["The quick brown fox.", "Lambda bundles without PyTorch."]
    tensors = reference.tokenize(auto_bert / "tokenizer.json", sentences)
    ref = reference.bert_mean_embeddings(tiny_bert_dir, tensors)
    rc, (answer,) = run_zip(auto_bert / "lambda.zip", [{"tensors": tensors}])
    assert rc == 0
    got = np.array(answer["tensors"]["sentence_embedding"])
    assert np.abs(got - ref).max() <= TOLERANCE * np.abs(ref).max()
    if not _host_has_bf16():
        assert bf["validation"] == {"unvalidated": bf["validation"]["unvalidated"]}
        assert "avx512_bf16" in bf["validation"]["unvalidated"]
        assert runtime.load(auto_bert).variant.name != "avx512-bf16"
        return
    gate = bf["validation"]["accuracy"]
    assert gate["scheme"] == "bf16" and gate["samples"] == 64 and not gate["meaningful"]  # random weights
    assert all("accuracy" not in v["validation"] for v in m["variants"][:2])
    model = runtime.load(auto_bert)
    assert model.variant.name == "avx512-bf16"
    ours = np.asarray(model.run({k: np.asarray(v) for k, v in tensors.items()})["sentence_embedding"])
    fp32 = runtime.load(auto_bert, variant="avx512").run({k: np.asarray(v) for k, v in tensors.items()})
    assert 0 < np.abs(ours - np.asarray(fp32["sentence_embedding"])).max() <= TOLERANCE * np.abs(ref).max()


@pytest.mark.slow
@pytest.mark.emulated_arm64
@pytest.mark.skipif(shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="needs qemu-user and g++-aarch64-linux-gnu")
def test_arm64_bf16_runs_bfdot_under_qemu(tiny_bert_dir, tmp_path):
    """arm64's bfdot kernel, validated and gated at build under qemu's "max" CPU (Debian's
    qemu 7.2 has no Neoverse V1; Graviton2's neoverse-n1 lacks BF16), answers within the
    bf16 tolerance of PyTorch fp32, and not bit for bit like fp32 (it did run in bf16)."""
    from conftest import _build

    from builder.compiler.schedules.bf16 import TOLERANCE
    from builder.compiler.targets import TARGETS
    from builder.progress import Progress
    from builder.validate.emulated import run_emulated

    arm = _build(tiny_bert_dir, tmp_path / "arm", targets=("arm64",), compute="bf16", formats=())
    m = json.loads((arm / "model.json").read_text())
    (v,) = m["variants"]
    assert v["name"] == "arm64-bf16" and v["schedule"]["bf16"]["kernel"] == "bfdot" and "bf16" in v["features"]
    assert v["validation"]["how"].startswith("emulated") and "QEMU_CPU=max" in v["validation"]["how"]
    assert v["validation"]["accuracy"]["scheme"] == "bf16" and v["validation"]["accuracy"]["samples"] == 64
    tensors = {k: np.asarray(x) for k, x in
               reference.tokenize(arm / "tokenizer.json", ["Graviton3 runs this in bf16.", "Two texts."]).items()}
    (ours,) = run_emulated(arm, TARGETS["arm64"], [tensors], Progress(quiet=True), variant="arm64-bf16")
    ref = reference.bert_mean_embeddings(tiny_bert_dir, tensors)
    diff = np.abs(ours["sentence_embedding"] - ref).max()
    assert 1e-5 < diff <= TOLERANCE * np.abs(ref).max()


@pytest.mark.slow
@needs_bf16
def test_minilm_bf16_keeps_cosine_and_the_gate_refuses_a_broken_conversion(tmp_path):
    """all-MiniLM-L6-v2 --compute bf16: the gate passes (a real checkpoint: meaningful) and
    the embeddings keep cosine >= 0.999 with sentence-transformers fp32 on sentences the
    gate did not see; the same build with weights rounded to 3 mantissa bits instead of 7
    fails at build with the worst sentences, leaving no output."""
    from conftest import _build

    import runtime
    from builder.compiler.schedules import bf16
    from builder.validate.accuracy import AccuracyError

    out = _build(tiny_models.minilm_dir(), tmp_path / "good", compute="bf16", seq_len=64, formats=(),
                 name="all-MiniLM-L6-v2")
    m = json.loads((out / "model.json").read_text())
    (v,) = m["variants"]
    gate = v["validation"]["accuracy"]
    assert gate["scheme"] == "bf16" and gate["meaningful"] and gate["passed"] and gate["min_cosine"] >= 0.999
    tensors = reference.tokenize(out / "tokenizer.json", HELD_OUT)
    got = np.asarray(runtime.load(out).run({k: np.asarray(x) for k, x in tensors.items()})["sentence_embedding"])
    ref = reference.sentence_transformers_embeddings(tiny_models.minilm_dir(), HELD_OUT)
    assert ((got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)).min() >= 0.999

    real = bf16.bf16_bits

    def coarse(a):  # 3 mantissa bits: the conversion a broken kernel or packing would make
        return real(a) & np.uint16(0xFFF0)

    mp = pytest.MonkeyPatch()
    mp.setattr(bf16, "bf16_bits", coarse)
    try:
        with pytest.raises(AccuracyError, match=r"bf16 build of variant avx512-bf16 is too far(.|\n)*cosine"):
            _build(tiny_models.minilm_dir(), tmp_path / "broken", compute="bf16", seq_len=16, formats=(),
                   name="all-MiniLM-L6-v2")
    finally:
        mp.undo()
    assert not (tmp_path / "broken" / "x86_64").exists()


def test_bench_says_when_openvino_is_absent(monkeypatch, tmp_path):
    import sys

    from builder.progress import Progress
    from builder.tools import bench

    monkeypatch.setitem(sys.modules, "openvino", None)  # import fails as when not installed
    got = bench._openvino(tmp_path / "model.onnx", 2, {}, Progress(quiet=True))
    assert got.candidates == {} and "OpenVINO is not installed" in got.note
