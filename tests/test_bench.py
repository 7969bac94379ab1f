"""`edgebundle bench` on a tiny build: the three engines agree with PyTorch and every
number the README table shows is produced (timings themselves are never asserted)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def test_bench_tiny_resnet(tiny_resnet_build, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tiny_resnet_build.parent
    proc = subprocess.run([sys.executable, "-m", "builder.cli", "bench", str(out), "--runs", "3", "--cold-runs", "1",
                           "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png"), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("edgebundle (TVM)", "PyTorch eager", "ONNX Runtime"):
        assert name in proc.stdout
    r = json.loads((tmp_path / "b.json").read_text())
    assert set(r["warm"]) == {"edgebundle (TVM)", "PyTorch eager", "ONNX Runtime"}
    assert all(v < 1e-4 for v in r["max_abs_diff_vs_torch"].values()), r["max_abs_diff_vs_torch"]
    assert all(st["runs"] == 3 and st["median_ms"] > 0 for st in r["warm"].values())
    for engine in ("edgebundle (TVM)", "ONNX Runtime"):
        assert r["cold_start"][engine]["median_s"] > 0 and r["cold_start"][engine]["peak_rss_mb"] > 0
        assert r["sizes"][engine]["runtime_bytes"] > 1e6
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_tiny_bert_times_short_requests(tiny_bert_build, tmp_path):
    pytest.importorskip("onnxruntime")
    proc = subprocess.run([sys.executable, "-m", "builder.cli", "bench", str(tiny_bert_build.parent), "--runs", "3",
                           "--cold-runs", "1", "--json", str(tmp_path / "b.json"), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads((tmp_path / "b.json").read_text())
    assert r["input_shapes"]["input_ids"] == [1, 32]
    assert all(v < 1e-4 for v in r["max_abs_diff_vs_torch"].values()), r["max_abs_diff_vs_torch"]
    assert set(r["warm_by_length"]) == {"16", "32"}
    assert all(ms > 0 for row in r["warm_by_length"].values() for ms in row.values())
    assert "at 16 tokens:" in proc.stdout
