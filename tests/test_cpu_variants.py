"""CPU variants: an x86_64 target carries an AVX2 and an AVX-512 library per length, sharing
model.weights; runtime/cpu.py picks one at load from the CPU's features."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest

import reference
from runtime import cpu
from runtime import manifest as mf

# /proc/cpuinfo flags of real CPUs (trimmed to what matters).
ZEN2 = "fpu sse sse2 avx avx2 fma f16c bmi1 bmi2 movbe sha_ni"
SKYLAKE_SP = ZEN2 + " avx512f avx512bw avx512dq avx512vl avx512cd"  # AVX-512 without VNNI
ZEN4 = SKYLAKE_SP + " avx512_vnni avx512_bf16 avx512vbmi"
SANDY_BRIDGE = "fpu sse sse2 sse4_2 avx"  # no AVX2: below what x86_64 Lambda hosts have


def _variant(name: str, validation: dict | None = None) -> mf.Variant:
    return mf.Variant(name, cpu.KINDS[name].features if name in cpu.KINDS else (), {"kind": "llvm"},
                      (mf.Library(f"model.{name}.so", None, ()),), None,
                      validation if validation is not None else {"max_abs_diff": {}})


BOTH = (_variant("avx2"), _variant("avx512"))


@pytest.mark.parametrize("flags, forced, picked", [
    (ZEN2, None, "avx2"),
    (SKYLAKE_SP, None, "avx512"),
    (ZEN4, None, "avx512"),
    (ZEN4, "avx2", "avx2"),
    (SKYLAKE_SP, "avx512", "avx512"),
])
def test_the_best_variant_the_cpu_runs_is_picked(flags, forced, picked):
    choice = cpu.choose(BOTH, have=cpu._cpuinfo_flags(f"processor : 0\nflags\t\t: {flags}\n"), forced=forced)
    assert choice.variant.name == picked
    if forced:
        assert "forced" in choice.reason
    elif picked == "avx2":
        assert "avx512: CPU lacks avx512f" in choice.reason
    else:
        assert "avx2: ranked lower" in choice.reason and "avx512f" in choice.reason


def test_forcing_a_variant_the_cpu_lacks_is_a_clear_error():
    with pytest.raises(cpu.VariantError, match=r"EDGEBUNDLE_CPU_VARIANT=avx512: this CPU lacks avx512f"):
        cpu.choose(BOTH, have=ZEN2.split(), forced="avx512")
    with pytest.raises(cpu.VariantError, match="has no such variant; it has avx2, avx512"):
        cpu.choose(BOTH, have=ZEN4.split(), forced="sse")


def test_the_environment_forces_a_variant(monkeypatch):
    monkeypatch.setenv(cpu.FORCE_ENV, "avx2")
    choice = cpu.choose(BOTH, have=ZEN4.split())
    assert choice.variant.name == "avx2" and choice.reason.startswith(f"forced by {cpu.FORCE_ENV}")


def test_a_cpu_below_every_variant_is_refused_with_what_it_lacks():
    with pytest.raises(cpu.VariantError, match="cannot run any variant") as e:
        cpu.choose(BOTH, have=SANDY_BRIDGE.split())
    assert "avx2 needs avx2, fma" in str(e.value)


def test_an_unknown_variant_is_refused_even_if_another_would_do():
    with pytest.raises(cpu.VariantError, match="variant 'avx1024' this runtime does not know"):
        cpu.choose((_variant("avx2"), _variant("avx1024")), have=ZEN4.split())


def test_unvalidated_variants_are_picked_only_when_forced():
    variants = (_variant("avx2"), _variant("avx512", {"unvalidated": "the build machine's CPU lacks avx512f"}))
    assert cpu.choose(variants, have=ZEN4.split()).variant.name == "avx2"
    forced = cpu.choose(variants, have=ZEN4.split(), forced="avx512")
    assert forced.variant.name == "avx512" and "not validated at build" in forced.reason
    with pytest.raises(cpu.VariantError, match="were not validated at build"):
        cpu.choose(variants[1:], have=ZEN4.split())


def test_a_snapstart_snapshot_holds_the_baseline(monkeypatch):
    # The snapshot may be restored on a host without AVX-512: AVX-512 code would die of SIGILL.
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start")
    choice = cpu.choose(BOTH, have=ZEN4.split())
    assert choice.variant.name == "avx2" and "SnapStart" in choice.reason
    monkeypatch.setenv("AWS_LAMBDA_INITIALIZATION_TYPE", "on-demand")
    assert cpu.choose(BOTH, have=ZEN4.split()).variant.name == "avx512"


def test_unreadable_cpu_features_fall_back_to_the_baseline(monkeypatch):
    monkeypatch.setattr(cpu, "_FEATURES", frozenset())  # /proc/cpuinfo could not be read
    choice = cpu.choose(BOTH)
    assert choice.variant.name == "avx2" and "CPU features unknown" in choice.reason


def test_features_come_from_this_machine():
    import platform

    have = cpu.features()
    if platform.machine() == "x86_64":
        assert {"sse2", "avx2"} <= have  # every machine this project builds on has AVX2
    assert cpu.features() is have  # read once


def test_schema_3_manifests_are_one_variant(tiny_bert_build):
    d = json.loads((tiny_bert_build / "model.json").read_text())
    baseline = d.pop("variants")[0]
    d.update(schema=3, libraries=baseline["libraries"], schedule=baseline["schedule"],
             validation=baseline["validation"])
    m = mf.Manifest.from_json(d)
    assert [v.name for v in m.variants] == ["avx2"] and m.validation == baseline["validation"]
    assert mf.Manifest.from_json(json.loads(m.dumps())).variants == m.variants


# -- built ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_an_x86_build_carries_both_variants_sharing_the_weights(tiny_bert_build):
    m = mf.read(tiny_bert_build)
    assert [v.name for v in m.variants] == ["avx2", "avx512"]
    avx2, avx512 = m.variants
    assert avx2.features == cpu.KINDS["avx2"].features and "avx512bw" in avx512.features
    assert avx2.tvm["mcpu"] == "haswell" and avx512.tvm["mcpu"] == "x86-64-v4"
    assert avx2.schedule["cpu_params"]["vector"] == 8 and avx512.schedule["cpu_params"]["vector"] == 16
    assert [lib.file for lib in avx512.libraries] == ["model-seq16.avx512.so", "model.avx512.so"]
    assert [lib.seq for lib in avx512.libraries] == [lib.seq for lib in avx2.libraries]
    # One copy of the weights: AVX-512 reads AVX2's packed panels.
    assert {i for lib in avx512.libraries for i in lib.weights} == {i for lib in avx2.libraries for i in lib.weights}
    assert m.weights.count == len({i for lib in avx2.libraries for i in lib.weights})
    assert avx2.validation["max_abs_diff"]["sentence_embedding"] < 1e-4
    if cpu.missing(cpu.KINDS["avx512"], cpu.features()):
        assert "lacks avx512f" in avx512.validation["unvalidated"]
    else:
        assert avx512.validation["max_abs_diff"]["sentence_embedding"] < 1e-4
    record = json.loads((tiny_bert_build.parent / "build.json").read_text())["targets"]["x86_64"]
    assert set(record["variants"]) == {"avx2", "avx512"} and all(
        v["code_bytes"] > 0 for v in record["variants"].values())


@pytest.mark.slow
def test_each_variant_answers_like_pytorch(tiny_bert_dir, tiny_bert_build, monkeypatch):
    import runtime

    tensors = reference.tokenize(tiny_bert_build / "tokenizer.json", ["Variants at load.", "AVX-512 or not"])
    ref = reference.bert_mean_embeddings(tiny_bert_dir, tensors)
    default = runtime.load(tiny_bert_build)
    expected = "avx2" if cpu.missing(cpu.KINDS["avx512"], cpu.features()) else "avx512"
    assert default.variant.name == expected
    monkeypatch.setenv(cpu.FORCE_ENV, "avx2")
    forced = runtime.load(tiny_bert_build)
    assert forced.variant.name == "avx2" and "forced" in forced.variant_reason
    for model in (default, forced):
        out = np.asarray(model.run(tensors)["sentence_embedding"])
        np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_a_lambda_invoke_says_which_variant_answered(tiny_bert_dir, tiny_bert_build):
    from builder.local.lambda_runtime import invoke_zip

    tensors = reference.tokenize(tiny_bert_build / "tokenizer.json", ["Which variant?"])
    out, err = io.StringIO(), io.StringIO()
    assert invoke_zip(tiny_bert_build / "lambda.zip", [json.dumps({"tensors": tensors}).encode()],
                      out=out, err=err) == 0, err.getvalue()[-2000:]
    expected = "avx2" if cpu.missing(cpu.KINDS["avx512"], cpu.features()) else "avx512"
    assert f"variant {expected} (" in err.getvalue()
    answer = json.loads(out.getvalue().splitlines()[0])
    np.testing.assert_allclose(np.array(answer["tensors"]["sentence_embedding"]),
                               reference.bert_mean_embeddings(tiny_bert_dir, tensors), atol=1e-4, rtol=0)


@pytest.mark.slow
def test_inspect_shows_the_variants_and_the_pick(tiny_bert_build):
    from builder.tools.describe import describe

    text = describe(tiny_bert_build)
    assert "variant    avx2: needs avx, avx2, fma" in text and "mcpu haswell" in text
    assert "variant    avx512: needs" in text and "mcpu x86-64-v4" in text and "16 lanes" in text
    assert "this CPU   runs avx" in text


@pytest.mark.slow
def test_an_explicit_cpu_is_one_variant(tiny_bert_dir, tmp_path):
    import runtime
    from builder.build import build
    from builder.options import BuildOptions
    from builder.progress import Progress

    build(str(tiny_bert_dir), tmp_path, BuildOptions(seq_len=32, seq_buckets=(32,), cpu=("haswell",)),
          progress=Progress(quiet=True))
    m = mf.read(tmp_path / "x86_64")
    assert [(v.name, v.tvm["mcpu"]) for v in m.variants] == [("cpu", "haswell")]
    assert sorted(p.name for p in (tmp_path / "x86_64").glob("*.so")) == ["model.so"]
    assert runtime.load(tmp_path / "x86_64").variant.name == "cpu"
