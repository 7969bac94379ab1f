"""`edgebundle bench` on a tiny build: the three engines agree with PyTorch and every
number the README table shows is produced (timings themselves are never asserted), and
bench leaves no temporary directory behind."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _bench_env(tmp: Path) -> dict:
    """bench's environment with its own TMPDIR, to see what it leaves there."""
    tmp.mkdir()
    return {**os.environ, "TMPDIR": str(tmp)}


def _leftovers(tmp: Path) -> list[str]:
    return sorted(p.name for p in tmp.glob("edgebundle-bench*"))


def test_bench_cleans_up_after_an_error(tmp_path):
    """An error once the work directory exists (here the build bench starts for a model
    directory: an unsupported architecture) still removes it."""
    pytest.importorskip("onnxruntime")
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}))
    proc = subprocess.run([sys.executable, "-m", "builder.cli", "bench", str(model)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=_bench_env(tmp_path / "tmp"))
    assert proc.returncode == 1 and "GPT2LMHeadModel is not supported" in proc.stderr, proc.stderr[-3000:]
    assert _leftovers(tmp_path / "tmp") == []


def _openvino_rows(r: dict, stdout: str) -> set:
    """OpenVINO's rows where it is installed (its default precision, bf16 on CPUs with
    AVX512_BF16, and f32 forced, both timed and sized; f32 as exact as ONNX Runtime), else a
    note."""
    try:
        import openvino  # noqa: F401
    except ImportError:
        assert any("OpenVINO is not installed" in n for n in r["notes"]) and "OpenVINO is not installed" in stdout
        return set()
    rows = {name for name in r["warm"] if name.startswith("OpenVINO")}
    default = [name for name in rows if name.endswith("(default)")]
    assert "OpenVINO f32" in rows and len(default) == 1 and len(rows) == 2, rows
    assert all(name in stdout and r["sizes"][name]["runtime_bytes"] > 1e6 for name in rows)
    assert r["max_abs_diff_vs_torch"]["OpenVINO f32"] < 1e-4 and r["versions"]["openvino"]
    assert math.isfinite(r["max_abs_diff_vs_torch"][default[0]])  # bf16's error depends on the CPU
    return rows


@pytest.mark.slow
def test_bench_tiny_resnet(tiny_resnet_build, tiny_resnet_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tiny_resnet_build.parent
    # Builds do not record local paths: the PyTorch model is named with --model-dir.
    proc = subprocess.run([sys.executable, "-m", "builder.cli", "bench", str(out), "--model-dir", str(tiny_resnet_dir),
                           "--runs", "3", "--cold-runs", "1",
                           "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("edgebundle (TVM)", "PyTorch eager", "ONNX Runtime"):
        assert name in proc.stdout
    r = json.loads((tmp_path / "b.json").read_text())
    # the variant this CPU picks, plus each other variant it runs, timed in the same rounds
    from runtime import cpu

    others = {f"edgebundle {v}" for v in ("avx2", "avx512") if v != r["variant"]["picked"]
              and not cpu.missing(cpu.KINDS[v], cpu.features())}
    openvino = _openvino_rows(r, proc.stdout)
    assert set(r["warm"]) == {"edgebundle (TVM)", "PyTorch eager", "ONNX Runtime"} | others | openvino
    exact = {k: v for k, v in r["max_abs_diff_vs_torch"].items() if "(default)" not in k}
    assert all(v < 1e-4 for v in exact.values()), r["max_abs_diff_vs_torch"]
    assert all(st["runs"] == 3 and st["median_ms"] > 0 for st in r["warm"].values())
    for engine in ("edgebundle (TVM)", "ONNX Runtime"):
        assert r["cold_start"][engine]["median_s"] > 0 and r["cold_start"][engine]["peak_rss_mb"] > 0
        assert r["sizes"][engine]["runtime_bytes"] > 1e6
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_bench_tiny_bert_times_short_requests(tiny_bert_build, tiny_bert_dir, tmp_path):
    pytest.importorskip("onnxruntime")
    proc = subprocess.run([sys.executable, "-m", "builder.cli", "bench", str(tiny_bert_build.parent),
                           "--model-dir", str(tiny_bert_dir), "--runs", "3",
                           "--cold-runs", "1", "--json", str(tmp_path / "b.json"), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900, env=_bench_env(tmp_path / "tmp"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the ONNX export, the inputs and the two staged bundles went with bench's work directory
    assert _leftovers(tmp_path / "tmp") == []
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["input_shapes"]["input_ids"] == [1, 32]
    _openvino_rows(r, proc.stdout)
    exact = {k: v for k, v in r["max_abs_diff_vs_torch"].items() if "(default)" not in k}
    assert all(v < 1e-4 for v in exact.values()), r["max_abs_diff_vs_torch"]
    assert set(r["warm_by_length"]) == {"16", "32"}
    assert all(ms > 0 for row in r["warm_by_length"].values() for ms in row.values())
    assert "at 16 tokens:" in proc.stdout
