"""runtime/ is a leaf: it imports and runs with torch, tvm, transformers, jinja2, boto3
and builder unimportable."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
# numpy and the tvm_ffi Python package too: bundles ship neither (libtvm_ffi.so via ctypes).
BLOCKED = ("torch", "tvm", "transformers", "jinja2", "boto3", "builder", "sentence_transformers", "numpy",
           "tvm_ffi")

_PROBE = """
import importlib.abc, json, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError("blocked for this test: " + name)
sys.meta_path.insert(0, Block())
import runtime
from runtime.events import handle
answers = [handle(runtime.load(target), event) for target, event in json.loads(sys.argv[1])]
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({{"answers": answers, "leaked": leaked}}))
"""


def _libtvm_runtime() -> str:
    spec = importlib.util.find_spec("tvm")
    return str(Path(spec.submodule_search_locations[0]) / "lib" / "libtvm_runtime.so")


def test_static_imports_stay_leaf():
    for path in (ROOT / "runtime").glob("*.py"):
        for line in path.read_text().splitlines():
            words = line.strip().split()
            if words[:1] in (["import"], ["from"]) and len(words) > 1:
                top = words[1].split(".")[0]
                assert top not in BLOCKED, f"{path.name}: {line.strip()}"


@pytest.mark.slow
def test_runtime_runs_without_build_side_packages(tiny_bert_build, tiny_resnet_build):
    import reference

    tensors = {"input_ids": [[101] + [7592] * 30 + [102]], "attention_mask": [[1] * 32],
               "token_type_ids": [[0] * 32]}
    image = reference.png_base64(3)
    calls = [(str(tiny_bert_build), {"inputs": ["hello world", "edge bundles"]}),
             (str(tiny_bert_build), {"tensors": tensors}),
             (str(tiny_resnet_build), {"inputs": image})]
    proc = subprocess.run([sys.executable, "-c", _PROBE.format(blocked=BLOCKED), json.dumps(calls)], cwd=ROOT,
                          capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "EDGEBUNDLE_LIBTVM_RUNTIME": _libtvm_runtime(),
                               "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["leaked"] == []
    emb, tensor_answer, labels = result["answers"]
    assert len(emb) == 2 and len(emb[0]) == 128
    # Same answers as the in-process runtime (which the build validated against PyTorch).
    import runtime

    ref = runtime.load(tiny_bert_build).run({k: np.array(v) for k, v in tensors.items()})
    np.testing.assert_allclose(tensor_answer["tensors"]["sentence_embedding"], np.asarray(ref["sentence_embedding"]),
                               atol=1e-6)
    assert labels == runtime.load(tiny_resnet_build).predict(image)
