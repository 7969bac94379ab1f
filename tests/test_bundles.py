"""build -> lambda.zip -> invoke, the way Lambda runs it (python3.13 sandbox, awslambdaric)."""
from __future__ import annotations

import base64
import io
import json
import shutil
import zipfile

import numpy as np
import pytest

import reference
from builder import elf
from builder.errors import BundleError
from builder.local.lambda_runtime import invoke_zip
from builder.options import BuildOptions
from builder.progress import Progress
from builder.compiler.targets import TARGETS

pytestmark = pytest.mark.slow


def run_zip(zip_path, events: list) -> tuple[int, list]:
    out, err = io.StringIO(), io.StringIO()
    rc = invoke_zip(zip_path, [json.dumps(e).encode() for e in events], out=out, err=err)
    answers = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    assert len(answers) == len(events), err.getvalue()[-3000:]
    return rc, answers


def http(body: str, b64: bool = False) -> dict:
    if b64:
        body = base64.b64encode(body.encode()).decode()
    return {"version": "2.0", "rawPath": "/", "requestContext": {"http": {"method": "POST"}},
            "body": body, "isBase64Encoded": b64}


def test_zip_layout_and_manifest(tiny_bert_build):
    with zipfile.ZipFile(tiny_bert_build / "lambda.zip") as zf:
        names = set(zf.namelist())
        info = json.loads(zf.read("lambda.json"))
    for required in ("handler.py", "runtime/__init__.py", "runtime/events.py", "model.so", "model.json",
                     "tokenizer.json", "libtvm_runtime.so", "libtvm_ffi.so",
                     "tokenizers/__init__.py"):
        assert required in names, required
    assert not any(n.startswith(("torch/", "tvm/", "transformers/", "builder/")) for n in names)
    # cp313 extension modules: taken from the Lambda platform's wheels, not the 3.11 host.
    assert "tokenizers/tokenizers.abi3.so" in names
    # No numpy (runtime/arrays.py) and no tvm_ffi Python package (runtime/_ffi.py).
    assert not any(n.startswith(("numpy/", "numpy.libs/", "tvm_ffi/", "typing_extensions")) for n in names)
    assert info["python"] == "3.13" and info["architecture"] == "x86_64" and info["deployable"] is True
    assert info["glibc_required"] == "2.27"


def test_tiny_bert_zip_matches_pytorch(tiny_bert_dir, tiny_bert_build):
    sentences = ["The quick brown fox.", "Lambda bundles without PyTorch."]
    tensors = reference.tokenize(tiny_bert_build / "tokenizer.json", sentences)
    rc, (tensor_answer, task_answer, bad, http_ok, http_bad, after) = run_zip(
        tiny_bert_build / "lambda.zip",
        [{"tensors": tensors}, {"inputs": sentences}, {"inputs": 7},
         http(json.dumps({"inputs": "hi"}), b64=True), http("{broken"), {"inputs": "still warm"}])
    ref = reference.bert_mean_embeddings(tiny_bert_dir, tensors)
    np.testing.assert_allclose(np.array(tensor_answer["tensors"]["sentence_embedding"]), ref, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.array(task_answer), ref, atol=1e-4, rtol=0)
    assert bad["errorType"] == "BadInput" and "string" in bad["errorMessage"]
    assert http_ok["statusCode"] == 200 and len(json.loads(http_ok["body"])) == 128
    assert http_bad["statusCode"] == 400 and "not valid JSON" in json.loads(http_bad["body"])["error"]
    assert len(after) == 128
    assert rc == 1  # one event (the direct bad input) failed


def test_zip_logs_one_emf_line_per_request(tiny_bert_build):
    out, err = io.StringIO(), io.StringIO()
    rc = invoke_zip(tiny_bert_build / "lambda.zip",
                    [json.dumps(e).encode() for e in ({"inputs": "one"}, {"inputs": 7}, http("{broken"))],
                    out=out, err=err)
    lines = [json.loads(x) for x in err.getvalue().splitlines() if x.startswith('{"_aws"')]
    assert rc == 1 and len(lines) == 3, err.getvalue()[-2000:]
    assert [x["ColdStart"] for x in lines] == [1, 0, 0]
    assert [x["outcome"] for x in lines] == ["ok", "bad_input", "bad_input"]
    assert all(x["Latency"] > 0 and x["requestId"] and x["_aws"]["CloudWatchMetrics"][0]["Namespace"] == "edgebundle"
               for x in lines)


def test_tiny_bert_classifier_zip(tiny_bert_cls_dir, tiny_bert_cls_build):
    text = "What a wonderful day."
    tensors = reference.tokenize(tiny_bert_cls_build / "tokenizer.json", [text])
    rc, (labels, logits) = run_zip(tiny_bert_cls_build / "lambda.zip",
                                   [{"inputs": text}, {"tensors": tensors}])
    ref = reference.bert_logits(tiny_bert_cls_dir, tensors)
    assert rc == 0
    np.testing.assert_allclose(np.array(logits["tensors"]["logits"]), ref, atol=1e-4, rtol=0)
    assert labels[0]["label"] == ["negative", "neutral", "positive"][int(np.argmax(ref[0]))]
    assert sorted(a["label"] for a in labels) == ["negative", "neutral", "positive"]


def test_tiny_resnet_zip(tiny_resnet_dir, tiny_resnet_build):
    import runtime

    image = reference.png_base64(3, size=(97, 71))
    pixels = runtime.load(tiny_resnet_build).encoder([image])["pixel_values"]
    rc, (labels, logits, bad_http, bad_direct) = run_zip(
        tiny_resnet_build / "lambda.zip",
        [{"inputs": image, "parameters": {"top_k": 2}}, {"tensors": {"pixel_values": pixels.tolist()}},
         http(json.dumps({"inputs": base64.b64encode(b"not an image").decode()})),
         {"inputs": "%%%"}])
    ref = reference.resnet_logits(tiny_resnet_dir, pixels)
    np.testing.assert_allclose(np.array(logits["tensors"]["logits"]), ref, atol=1e-4, rtol=0)
    assert len(labels) == 2 and labels[0]["label"] == ["cat", "dog", "bird", "fish"][int(np.argmax(ref[0]))]
    assert bad_http["statusCode"] == 400 and "decodable image" in bad_http["body"]
    assert bad_direct["errorType"] == "BadInput"
    assert rc == 1


def test_zips_are_deterministic(tiny_resnet_build, tmp_path):
    from builder.bundle.formats.lambda_zip import build as build_lambda

    first = (tiny_resnet_build / "lambda.zip").read_bytes()
    copy = tmp_path / "x86_64"
    shutil.copytree(tiny_resnet_build, copy)
    (copy / "lambda.zip").unlink()
    build_lambda(copy, TARGETS["x86_64"], BuildOptions(), Progress(quiet=True))
    assert (copy / "lambda.zip").read_bytes() == first


def test_unzipped_size_limit_says_what_is_big_and_what_to_do(tiny_resnet_build, tmp_path, monkeypatch):
    from builder.bundle.formats import lambda_zip

    copy = tmp_path / "x86_64"
    shutil.copytree(tiny_resnet_build, copy)
    (copy / "lambda.zip").unlink()
    weights_mib = (copy / "model.weights").stat().st_size / 2**20
    # Below what the weights need: the weights are named as the problem.
    monkeypatch.setattr(lambda_zip, "UNZIPPED_LIMIT", int(weights_mib * 2**20 * 0.5))
    with pytest.raises(BundleError) as exc:
        lambda_zip.build(copy, TARGETS["x86_64"], BuildOptions(), Progress(quiet=True))
    msg = str(exc.value)
    assert f"weights {weights_mib:.0f} MiB" in msg and "compiled code" in msg and "runtime and packages" in msg
    assert "the weights alone exceed" in msg and "smaller checkpoint" in msg
    assert "--format image" not in msg  # no such format in this version
    assert not (copy / "lambda.zip").exists() and not list(copy.glob("*.partial"))  # nothing half-written
    # Room for the weights but not for the rest: the advice is not about the weights alone.
    monkeypatch.setattr(lambda_zip, "UNZIPPED_LIMIT", int(weights_mib * 2**20 * 1.01))
    with pytest.raises(BundleError) as exc:
        lambda_zip.build(copy, TARGETS["x86_64"], BuildOptions(), Progress(quiet=True))
    assert "the weights alone" not in str(exc.value) and "smaller checkpoint" in str(exc.value)
    assert "fp16 weights" not in str(exc.value)  # halving the weights would not make it fit
    # Room once the weights are halved: fp16 storage comes first.
    monkeypatch.setattr(lambda_zip, "UNZIPPED_LIMIT", 2**40)
    size = lambda_zip.build(copy, TARGETS["x86_64"], BuildOptions(), Progress(quiet=True))["unzipped_size"]
    (copy / "lambda.zip").unlink()
    monkeypatch.setattr(lambda_zip, "UNZIPPED_LIMIT", int(size - weights_mib * 2**20 / 4))
    with pytest.raises(BundleError) as exc:
        lambda_zip.build(copy, TARGETS["x86_64"], BuildOptions(), Progress(quiet=True))
    assert str(exc.value).split("what to do: ")[1].startswith("fp16 weights (the default; drop --weights fp32) halve")


def test_elf_audit_rejects_foreign_and_too_new_libraries(tiny_bert_build, tmp_path):
    stage = tmp_path / "stage"
    stage.mkdir()
    so = stage / "model.so"
    shutil.copy(tiny_bert_build / "model.so", so)
    needed = elf.vstr(elf.read_elf(so).glibc)  # 2.14 with fast-math exp, 2.27 with libm's expf
    assert elf.audit_tree(stage, machine=62, max_glibc="2.34", what="t") == {"model.so": needed}
    with pytest.raises(BundleError, match=f"glibc 2.5.*model.so needs GLIBC {needed}"):
        elf.audit_tree(stage, machine=62, max_glibc="2.5", what="t")
    data = bytearray(so.read_bytes())
    data[18:20] = (183).to_bytes(2, "little")  # e_machine = EM_AARCH64
    (stage / "slipped.so").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="slipped.so is aarch64"):
        elf.audit_tree(stage, machine=62, max_glibc="2.34", what="t")


def test_python311_bundle_is_local_test_only(tiny_resnet_dir, tmp_path, capsys):
    from builder.build import build

    build(str(tiny_resnet_dir), tmp_path, BuildOptions(formats=("lambda",), python="3.11"), progress=Progress(quiet=True))
    assert "local tests only" in capsys.readouterr().err
    zip_path = tmp_path / "x86_64" / "lambda.zip"
    with zipfile.ZipFile(zip_path) as zf:
        info = json.loads(zf.read("lambda.json"))
        assert any("cpython-311" in n for n in zf.namelist())
    assert info["deployable"] is False and "2.26" in info["not_deployable_reason"]
    rc, (answer,) = run_zip(zip_path, [{"inputs": reference.png_base64()}])
    assert rc == 0 and len(answer) == 4


def test_shape_funcs_compile_in_one_order(tmp_path):
    """TVM 0.27's VMShapeLower orders a shape_func's stores by iterating a hash map keyed by
    object addresses: without our sorting pass the same model gave different model.so bytes
    from run to run. Checked in fresh processes, where addresses differ."""
    import os
    import subprocess
    import sys

    code = """
import re
from tvm import relax
from tvm.script import ir as I, relax as R, tirx as T
from builder.compiler.library import sort_shape_funcs_pass

@I.ir_module
class M:
    @R.function
    def main(x: R.Tensor(("n", 32), "float32")):
        n = T.int64()
        return (R.shape([n * 32]), R.shape([n * 2]), R.shape([4 * n * 128]), R.shape([n * 5]))

mod = sort_shape_funcs_pass()(relax.transform.VMShapeLower()(M))
print(re.findall(r"H\\[T.int64\\((\\d+)\\)\\] =", mod["shape_func"].script()))
"""
    script = tmp_path / "shape_func_order.py"  # TVMScript reads its own source: a file, not -c
    script.write_text(code)
    orders = {subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True,
                             env={**os.environ, "PYTHONHASHSEED": str(seed)}).stdout.strip()
              for seed in range(4)}
    assert len(orders) == 1
    slots = [int(s) for s in json.loads(orders.pop().replace("'", '"'))]
    assert len(slots) == 4 and slots == sorted(slots)
