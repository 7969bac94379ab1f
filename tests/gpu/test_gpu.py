"""Runs the GPU check on the tiny models where an NVIDIA GPU is visible; skipped elsewhere."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.gpu
@pytest.mark.slow
def test_tiny_models_on_the_gpu():
    if shutil.which("nvidia-smi") is None:
        pytest.skip("no NVIDIA driver on this machine")
    proc = subprocess.run([sys.executable, str(Path(__file__).with_name("check.py")), "--tiny-only", "--runs", "5"],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
