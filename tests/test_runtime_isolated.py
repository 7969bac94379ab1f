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
BLOCKED = ("torch", "tvm", "transformers", "jinja2", "boto3", "builder", "sentence_transformers")

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
model = runtime.load({target!r})
emb = handle(model, {{"inputs": ["hello world", "edge bundles"]}})
tensors = handle(model, {{"tensors": {tensors!r}}})["tensors"]
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
print(json.dumps({{"emb": emb, "tensors": tensors, "leaked": leaked}}))
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
def test_runtime_runs_without_build_side_packages(tiny_bert_build):
    tensors = {"input_ids": [[101] + [7592] * 30 + [102]], "attention_mask": [[1] * 32],
               "token_type_ids": [[0] * 32]}
    code = _PROBE.format(blocked=BLOCKED, target=str(tiny_bert_build), tensors=tensors)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "EDGEBUNDLE_LIBTVM_RUNTIME": _libtvm_runtime(),
                               "PYTHONPATH": str(ROOT)}, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["leaked"] == []
    assert len(result["emb"]) == 2 and len(result["emb"][0]) == 128
    # Same answer as the in-process runtime (which the build validated against PyTorch).
    import runtime

    ref = runtime.load(tiny_bert_build).run({k: np.array(v) for k, v in tensors.items()})
    np.testing.assert_allclose(result["tensors"]["sentence_embedding"], ref["sentence_embedding"], atol=1e-6)
