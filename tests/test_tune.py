"""`edgebundle tune` writes a database that `build --tuning-db` applies (and refuses for
another target)."""
from __future__ import annotations

import json

import pytest

from builder.errors import EdgebundleError
from builder.progress import Progress

pytestmark = pytest.mark.slow


def test_tune_then_build_with_db(tiny_bert_dir, tmp_path):
    from builder.build import build
    from builder.tools.tune import tune

    db_path = tmp_path / "db.json"
    db = tune(str(tiny_bert_dir), out=db_path, seq_len=32, runs=2, progress=Progress(quiet=True))
    assert db_path.is_file() and db["best_ms"] <= db["default_ms"]
    assert len(db["candidates"]) >= 4  # the default and the dense tiles (no conv in BERT)
    build(str(tiny_bert_dir), targets=["x86_64"], formats=[], out=tmp_path / "out",
          options={"seq_len": 32, "tuning_db": db_path}, progress=Progress(quiet=True))
    m = json.loads((tmp_path / "out" / "x86_64" / "model.json").read_text())
    assert m["schedule"]["cpu_params"] == db["params"] and m["schedule"]["tuning_db"] == str(db_path)
    assert m["validation"]["max_abs_diff"]["sentence_embedding"] < 1e-4
    with pytest.raises(EdgebundleError, match="tuning database was made for"):
        build(str(tiny_bert_dir), targets=["x86_64"], formats=[], out=tmp_path / "out2",
              options={"seq_len": 32, "tuning_db": db_path, "cpu": "skylake-avx512"}, progress=Progress(quiet=True))


def test_tune_searches_conv_choices(tiny_resnet_dir, tmp_path):
    """On a model with convs, tune also tries conv tiles and turning the Winograd and
    packed-conv rewrites off, and a build with the result validates."""
    from builder.build import build
    from builder.tools.tune import CONV_CHOICES, tune

    db_path = tmp_path / "db.json"
    db = tune(str(tiny_resnet_dir), out=db_path, runs=2, progress=Progress(quiet=True))
    tried = [c["params"] for c in db["candidates"]]
    for choice in CONV_CHOICES:
        assert any(all(p[k] == v for k, v in choice.items()) for p in tried), choice
    assert db["best_ms"] <= db["default_ms"]
    build(str(tiny_resnet_dir), targets=["x86_64"], formats=[], out=tmp_path / "out",
          options={"tuning_db": db_path}, progress=Progress(quiet=True))
    m = json.loads((tmp_path / "out" / "x86_64" / "model.json").read_text())
    assert m["schedule"]["cpu_params"] == db["params"]
