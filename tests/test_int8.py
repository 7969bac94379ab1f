"""int8 dense layers (`build --quantize int8`) and the accuracy gate."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

import reference
import tiny_models
from test_bundles import run_zip


def test_weights_are_packed_in_panels_of_16_columns_by_4_steps():
    from builder.compiler.schedules.int8 import PANEL, STEP, quantize_weight

    rng = np.random.default_rng(0)
    k, n = 24, 48
    w = rng.standard_normal((k, n)).astype(np.float32)
    w[:, 5] = 0.0  # an all-zero column keeps a usable scale
    packed, scale, sums = quantize_weight(w)
    q = np.clip(np.rint(w / scale), -127, 127)
    assert packed.dtype == np.int8 and packed.size == k * n
    assert np.allclose(q * scale, w, atol=float(np.abs(w).max()) / 254 + 1e-7)
    assert scale[5] == 1.0 and np.abs(q).max() == 127
    for p, kk, c, t in [(0, 0, 0, 0), (1, 3, 7, 2), (2, 5, 15, 3)]:
        assert packed[((p * (k // STEP) + kk) * PANEL + c) * STEP + t] == q[kk * STEP + t, p * PANEL + c]
    assert sums.dtype == np.int32 and np.array_equal(sums, q.sum(axis=0))


def _emulate(kind, x, w):
    """What the kernels compute, in float64 from the same integers: the rows' bytes and
    parameters, then (s * sum(byte * w) + c * colsum) * s_col."""
    from builder.compiler.schedules.int8 import quantize_weight

    lo, hi = x.min(axis=1), x.max(axis=1)
    span = hi - lo
    scale = np.where(span > 0, span / np.float32(kind.levels), 1).astype(np.float32)
    inv = np.where(span > 0, np.float32(kind.levels) / np.where(span > 0, span, 1), 0).astype(np.float32)
    u = np.clip(np.rint((x - lo[:, None]) * inv[:, None]), 0, kind.levels)
    byte = u - kind.offset
    _, ws, sums = quantize_weight(w)
    q = np.clip(np.rint(w / ws), -127, 127)
    c = scale * np.float32(kind.offset) + lo
    y = (scale[:, None].astype(np.float64) * (byte @ q) + c[:, None] * sums) * ws
    return byte, y


@pytest.mark.parametrize("name", ["vnni", "avx2", "generic"])
def test_kernels_compute_the_integer_arithmetic(name):
    """Each x86 kernel (the generic one compiled for AVX2) on row counts that leave partial
    tiles: the packed rows are exactly the emulated bytes, the outputs the emulated integer
    sums scaled, and both within quantization error of fp32."""
    import tvm

    from builder.compiler.schedules import int8
    from builder.compiler.targets import FAST_MATH
    from conftest import variant_target

    target = variant_target({"vnni": "avx512-vnni", "avx2": "avx2", "generic": "avx2"}[name])
    kind = int8.KINDS[name]
    assert name == "generic" or int8.kernel_kind(tvm.target.Target(target)).name == name
    k, n = 64, 96
    lib = tvm.compile(tvm.IRModule({"q": int8.quantize_rows_func(kind, k), "mm": int8.matmul_func(kind, k, n)}),
                      target={**target, **FAST_MATH})
    rng = np.random.default_rng(1)
    w = (rng.standard_normal((k, n)) * 0.1).astype(np.float32)
    packed, ws, sums = int8.quantize_weight(w)
    for m in (1, 7, 13):
        x = (rng.standard_normal((m, k)) + 0.3).astype(np.float32)
        x[0, :] = 0.25  # a constant row: no range, exact
        xq = tvm.runtime.tensor(np.zeros((m, k // 4), np.int32))
        xp = tvm.runtime.tensor(np.zeros((m, 2), np.float32))
        lib[f"q8_rows_{k}"](tvm.runtime.tensor(x), xq, xp)
        byte, want = _emulate(kind, x, w)
        got_bytes = xq.numpy().view(np.uint8 if kind.offset == 0 else np.int8).reshape(m, k)
        assert np.array_equal(got_bytes, byte), (name, m)
        y = tvm.runtime.tensor(np.zeros((m, n), np.float32))
        lib[f"q8_matmul_{k}x{n}"](xq, xp, tvm.runtime.tensor(packed), tvm.runtime.tensor(ws),
                                  tvm.runtime.tensor(sums), y)
        np.testing.assert_allclose(y.numpy(), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
        exact = x @ w
        assert np.abs(y.numpy() - exact).max() <= 0.03 * np.abs(exact).max(), (name, m)
        np.testing.assert_allclose(y.numpy()[0], exact[0], rtol=0.02, atol=0.02 * np.abs(exact[0]).max())


def test_variant_choice_for_int8_builds():
    """AVX-512 without VNNI (Skylake-SP) runs the AVX2 int8 variant; with it, vpdpbusd."""
    from builder.compiler.targets import TARGETS
    from runtime import cpu
    from runtime.manifest import Library, Variant

    specs = TARGETS["x86_64"].variants(quantize="int8")
    assert [v.name for v in specs] == ["avx2", "avx512-vnni"]
    assert TARGETS["x86_64"].tvm_target_json(specs[1].cpu, (), specs[1].attrs)["mattr"] == ["+avx512vnni"]
    variants = [Variant(v.name, cpu.KINDS[v.name].features, None, (Library(f"model{v.suffix}.so", None, ()),),
                        validation={}) for v in specs]
    v4 = set(cpu.KINDS["avx512"].features)
    assert cpu.choose(variants, have=v4).variant.name == "avx2"
    assert cpu.choose(variants, have=v4 | {"avx512_vnni"}).variant.name == "avx512-vnni"
    assert [v.name for v in TARGETS["arm64"].variants(quantize="int8")] == ["neoverse-n1-dotprod"]
    assert "asimddp" in cpu.KINDS["neoverse-n1-dotprod"].features  # the int8 kernels' sdot
    assert "asimddp" not in cpu.KINDS["neoverse-n1"].features  # fp32 / fp16 builds run on any Armv8.2


def test_gate_verdicts():
    """Embeddings: the worst cosine decides, with a table of the worst sentences; a model
    whose fp32 answers barely differ is reported, not judged. Classifiers: top-1 agreement."""
    from builder.validate.accuracy import AccuracyError, check, evaluate

    rng = np.random.default_rng(0)
    ref = rng.standard_normal((16, 32))
    names = [f"sentence {i}" for i in range(16)]
    good = evaluate("embedding", [ref[:8], ref[8:]], [ref[:8] * 1.01, ref[8:]], names)
    assert good["passed"] and good["meaningful"] and good["min_cosine"] > 0.9999
    check(good, "here", "avx2")
    bad_out = ref.copy()
    bad_out[3] += rng.standard_normal(32) * 0.5
    bad = evaluate("embedding", [ref], [bad_out], names)
    assert not bad["passed"] and bad["worst"][0].endswith("sentence 3")
    with pytest.raises(AccuracyError, match=r"worst cosine 0\.\d+ < 0\.99(.|\n)*sentence 3"):
        check(bad, "here", "avx2")
    alike = np.ones((16, 32)) + rng.standard_normal((16, 32)) * 0.01
    vague = evaluate("embedding", [alike], [alike + rng.standard_normal((16, 32)) * 0.3], names)
    assert not vague["passed"] and not vague["meaningful"] and "not meaningful" in vague["note"]
    check(vague, "here", "avx2")  # reported, not raised
    logits = rng.standard_normal((16, 3))
    flipped = logits.copy()
    flipped[:2] = -flipped[:2]
    cls = evaluate("classification", [logits], [flipped], names)
    assert cls["top1_agreement"] <= 14 / 16 and not cls["passed"] and cls["meaningful"]
    with pytest.raises(AccuracyError, match="top-1 agreement"):
        check(cls, "here", "avx2")


def test_quantize_is_refused_where_it_cannot_run(tiny_bert_dir, tmp_path):
    from builder.build import build
    from builder.errors import EdgebundleError, UnsupportedModelError
    from builder.options import BuildOptions
    from builder.progress import Progress

    with pytest.raises(EdgebundleError, match="unknown quantization 'int4'"):
        BuildOptions(quantize="int4")
    for opts in (dict(targets=("cuda",)), dict(schedule=False)):
        with pytest.raises(UnsupportedModelError, match="--quantize int8 is for CPU targets"):
            build(str(tiny_bert_dir), tmp_path / "out", BuildOptions(quantize="int8", **opts),
                  progress=Progress(quiet=True))
    assert not (tmp_path / "out").exists()


def test_a_manifest_records_and_reads_the_quantization():
    from runtime.manifest import WeightsFile

    q = {"scheme": "int8", "tensors": 3, "int8_bytes": 4096}
    assert WeightsFile.from_json(WeightsFile("model.weights", 3, 4096, "fp16", q).to_json()).quantization == q
    assert "quantization" not in WeightsFile("model.weights", 3, 4096).to_json()


@pytest.fixture(scope="module")
def int8_bert(tiny_bert_dir, tmp_path_factory):
    from conftest import _build

    return _build(tiny_bert_dir, tmp_path_factory.mktemp("int8-bert"), quantize="int8", weights="fp16")


@pytest.mark.slow
def test_int8_build_answers_through_lambda(int8_bert, tiny_bert_dir):
    """A tiny BERT built int8 into a Lambda zip: int8 weights in the file, both x86 variants
    with their kernels and gate numbers in the manifest and `inspect`, and answers within the
    int8 tolerance of PyTorch fp32 through a Lambda invoke."""
    from builder.compiler.schedules.int8 import TOLERANCE
    from builder.tools.describe import describe

    m = json.loads((int8_bert / "model.json").read_text())
    q = m["weights"]["quantization"]
    # 2 layers x (Q, K, V, attention out, FFN in, FFN out); the word and position embeddings
    assert q["scheme"] == "int8" and q["dense_layers"] == 12 and q["embedding_tables"] >= 1 and q["int8_bytes"] > 0
    kernels = {v["name"]: v["schedule"]["int8"]["kernel"] for v in m["variants"]}
    assert kernels == {"avx2": "avx2", "avx512-vnni": "vnni"}
    ran = [v for v in m["variants"] if "unvalidated" not in v["validation"]]
    assert ran and all(v["validation"]["accuracy"]["samples"] == 64 for v in ran)
    # random weights: reported, not judged
    assert all(not v["validation"]["accuracy"]["meaningful"] for v in ran)
    text = describe(int8_bert)
    assert "int8 kernel avx2" in text and "accuracy gate: cosine" in text and "int8       " in text
    sentences = ["The quick brown fox.", "Lambda bundles without PyTorch."]
    tensors = reference.tokenize(int8_bert / "tokenizer.json", sentences)
    rc, (answer,) = run_zip(int8_bert / "lambda.zip", [{"tensors": tensors}])
    ref = reference.bert_mean_embeddings(tiny_bert_dir, tensors)
    got = np.array(answer["tensors"]["sentence_embedding"])
    assert rc == 0 and np.abs(got - ref).max() <= TOLERANCE * np.abs(ref).max()
    cos = (got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    assert cos.min() > 0.999


@pytest.mark.slow
@pytest.mark.emulated_arm64
@pytest.mark.skipif(shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-g++") is None,
                    reason="needs qemu-user and g++-aarch64-linux-gnu")
def test_arm64_int8_answers_like_the_x86_64_int8_build(tiny_bert_dir, int8_bert, tmp_path):
    """arm64's sdot kernel (signed bytes) under qemu: validated and gated at build, and its
    answers within the int8 tolerance of x86_64's int8 build (unsigned bytes, and 7-bit
    activations where the host runs the avx2 variant)."""
    from conftest import _build

    import runtime
    from builder.compiler.schedules.int8 import TOLERANCE
    from builder.compiler.targets import TARGETS
    from builder.progress import Progress
    from builder.validate.emulated import run_emulated

    arm = _build(tiny_bert_dir, tmp_path / "arm", targets=("arm64",), quantize="int8", weights="fp16", formats=())
    m = json.loads((arm / "model.json").read_text())
    (v,) = m["variants"]
    assert v["name"] == "neoverse-n1-dotprod" and v["schedule"]["int8"]["kernel"] == "sdot"
    assert v["validation"]["how"].startswith("emulated")
    assert v["validation"]["accuracy"]["samples"] == 64
    tensors = {k: np.asarray(x) for k, x in
               reference.tokenize(int8_bert / "tokenizer.json", ["Graviton runs this in int8.", "Two texts."]).items()}
    (ours,) = run_emulated(arm, TARGETS["arm64"], [tensors], Progress(quiet=True))
    for name, value in runtime.load(int8_bert).run(tensors).items():
        want = np.asarray(value)
        assert np.abs(ours[name] - want).max() <= TOLERANCE * np.abs(want).max(), name
        cos = (ours[name] * want).sum(1) / np.linalg.norm(ours[name], axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() > 0.999, name


HELD_OUT = [  # not in builder/validate/accuracy_texts.txt
    "The lighthouse keeper wrote letters that were never sent.",
    "Our team shipped the feature two weeks ahead of schedule.",
    "Is there a vegan option on the lunch menu today?",
    "The river froze solid for the first time in forty years.",
    "Battery prices fell again, making electric cars cheaper to build.",
    "I would not recommend this hotel to anyone.",
    "The professor explained entropy with a deck of cards.",
    "Please confirm your attendance by Friday afternoon.",
    "A sudden gust of wind knocked over the market stalls.",
    "Neural networks can overfit when the training set is small.",
    "The archive holds letters from the eighteenth century.",
    "My order number is 4471 and it still has not shipped.",
]


@pytest.mark.slow
def test_minilm_int8(tmp_path):
    """all-MiniLM-L6-v2 int8: a Lambda zip under 30 MB whose embeddings keep cosine >= 0.99
    with sentence-transformers fp32 on sentences the gate did not see; the gate passed on
    it (a real checkpoint: meaningful); and the same build with weight scales off by 10x
    fails at build with the worst sentences, leaving no output."""
    from conftest import _build

    from builder.compiler.schedules import int8
    from builder.validate.accuracy import AccuracyError, texts

    assert not set(HELD_OUT) & set(texts())
    out = _build(tiny_models.minilm_dir(), tmp_path / "good", quantize="int8", weights="fp16", seq_len=128,
                 name="all-MiniLM-L6-v2")
    assert (out / "lambda.zip").stat().st_size <= 30 * 2**20
    m = json.loads((out / "model.json").read_text())
    for v in m["variants"]:
        gate = v["validation"].get("accuracy")
        if gate is not None:
            assert gate["meaningful"] and gate["passed"] and gate["min_cosine"] >= 0.99, v["name"]
    rc, (answer,) = run_zip(out / "lambda.zip", [{"inputs": HELD_OUT}])
    ref = reference.sentence_transformers_embeddings(tiny_models.minilm_dir(), HELD_OUT)
    got = np.array(answer)
    assert rc == 0
    assert ((got * ref).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)).min() >= 0.99

    real = int8.quantize_weight

    def broken(w):
        packed, scale, sums = real(w)
        return packed, scale * 10, sums

    mp = pytest.MonkeyPatch()
    mp.setattr(int8, "quantize_weight", broken)
    try:
        with pytest.raises(AccuracyError, match=r"too far from PyTorch fp32(.|\n)*\n  cosine -?\d\.\d+  \w"):
            _build(tiny_models.minilm_dir(), tmp_path / "broken", quantize="int8", weights="fp16", seq_len=16,
                   formats=(), name="all-MiniLM-L6-v2")
    finally:
        mp.undo()
    assert not (tmp_path / "broken" / "x86_64").exists()


@pytest.mark.slow
def test_bench_times_int8_next_to_other_builds_and_onnx_runtime_int8(int8_bert, tiny_bert_build, tiny_bert_dir,
                                                                     tiny_resnet_build, tmp_path):
    """bench on an int8 build: ONNX Runtime's quantize_dynamic model and another build of
    the same model (--also, each variant this CPU runs) in the same rounds; a build of
    another model is refused."""
    pytest.importorskip("onnxruntime")
    import subprocess
    import sys

    from conftest import ROOT
    from runtime import cpu

    args = [sys.executable, "-m", "builder.cli", "bench", str(int8_bert.parent), "--model-dir", str(tiny_bert_dir),
            "--runs", "2", "--cold-runs", "1", "--quiet"]
    proc = subprocess.run([*args, "--also", str(tiny_bert_build.parent), "--json", str(tmp_path / "b.json")],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "b.json").read_text())
    runs = [v for v in ("avx2", "avx512") if not cpu.missing(cpu.KINDS[v], cpu.features())]
    assert {"ONNX Runtime int8", *(f"edgebundle fp32 {v}" for v in runs)} <= set(r["warm"])
    assert r["sizes"]["ONNX Runtime int8"]["model_bytes"] < r["sizes"]["ONNX Runtime"]["model_bytes"]
    proc = subprocess.run([*args, "--also", str(tiny_resnet_build.parent)], cwd=ROOT, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 1 and "--also" in proc.stderr and "compare builds of one model" in proc.stderr


def test_the_bias_add_goes_into_the_int8_kernel_and_rows_are_quantized_once():
    """Linear layers (matmul + bias) on one input: one row quantization for the three, each
    product a q8_matmul with the bias in its epilogue, no separate add left; and the module
    answers as PyTorch does within quantization error."""
    import torch
    import tvm
    from tvm import relax
    from tvm.relax.frontend.torch import from_exported_program

    from builder.compiler.schedules.int8 import KINDS, quantize_dense

    class Three(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = (torch.nn.Linear(128, 64) for _ in range(3))

        def forward(self, x):
            return self.q(x) + self.k(x) * self.v(x)

    torch.manual_seed(0)
    model = Three().eval()
    x = torch.randn(2, 5, 128)
    mod = from_exported_program(torch.export.export(model, (x,)), keep_params_as_input=False)
    mod = tvm.transform.Sequential([relax.transform.FoldConstant(), quantize_dense(KINDS["avx2"]),
                                    relax.transform.DeadCodeElimination()])(mod)
    text = mod["main"].script()
    assert text.count("q8_rows_128") == 1 and text.count("q8_matmul_128x64_bias") == 3
    assert "R.add" in text and text.count("R.add") == 1  # q + k * v: the model's own add, not the biases
    from conftest import variant_target

    ex = tvm.compile(mod, target=tvm.target.Target(variant_target("avx2")))
    vm = relax.VirtualMachine(ex, tvm.cpu())
    got = vm["main"](tvm.runtime.tensor(x.numpy()))[0].numpy()  # main returns a 1-tuple
    want = model(x).detach().numpy()
    assert np.abs(got - want).max() <= 0.03 * np.abs(want).max()


@pytest.mark.slow
def test_int8_resnet_says_nothing_qualifies_and_its_gate_is_not_a_verdict(tiny_resnet_dir, tmp_path):
    """A ResNet has no dense layer the int8 kernels take (4 classes, not a multiple of 16)
    and no convs quantized: the build says so, runs as before, and its gate (on random
    pixels, no image set ships) reports top-1 agreement without judging."""
    import io

    from conftest import _build

    from builder.progress import Progress

    log = io.StringIO()
    out = _build(tiny_resnet_dir, tmp_path / "out", quantize="int8", formats=(), progress=Progress(quiet=True, stream=log))
    assert "--quantize int8: nothing in ResNetForImageClassification qualifies" in log.getvalue()
    m = json.loads((out / "model.json").read_text())
    assert m["weights"]["quantization"]["tensors"] == 0
    for v in m["variants"]:
        gate = v["validation"].get("accuracy")
        if gate is not None:
            assert gate["metric"] == "top-1 agreement" and not gate["meaningful"]
            assert "no input set of this kind ships" in gate["note"]
