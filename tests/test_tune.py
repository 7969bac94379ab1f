"""`edgebundle tune` writes a database that `build --tuning-db` applies (and refuses for
another target)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math

import pytest

from builder.compiler.schedules.cpu import params_from_env
from builder.errors import EdgebundleError
from builder.options import BuildOptions
from builder.progress import Progress

pytestmark = pytest.mark.slow


def check_db(db: dict, db_path) -> list[dict]:
    """What tune wrote is what it returned, every measured candidate has a latency, and the
    chosen params are the fastest measured (tune's verdict follows from its own timings).
    Returns the measured params."""
    from builder.compiler.schedules.cpu import CpuParams

    assert json.loads(db_path.read_text()) == db
    cands = db["candidates"]
    fields = {f.name for f in dataclasses.fields(CpuParams)}
    assert all(set(c["params"]) == fields for c in cands), cands
    assert all(math.isfinite(c["median_ms"]) and c["median_ms"] > 0 for c in cands), cands
    tried = [c["params"] for c in cands]
    assert len({json.dumps(p, sort_keys=True) for p in tried}) == len(tried), "a candidate was measured twice"
    # the default is measured first and is the baseline
    assert tried[0] == dataclasses.asdict(params_from_env(db["variant"])) and db["default_ms"] == cands[0]["median_ms"]
    fastest = min(cands, key=lambda c: c["median_ms"])
    assert db["best_ms"] == fastest["median_ms"] and db["params"] == fastest["params"]
    assert db["gain"] == pytest.approx(db["default_ms"] / db["best_ms"], rel=1e-12)
    return tried


def test_tune_then_build_with_db(tiny_bert_dir, tmp_path):
    from builder.build import build
    from builder.tools.tune import DENSE_TILES, tune

    db_path = tmp_path / "db.json"
    db = tune(str(tiny_bert_dir), out=db_path, seq_len=32, runs=2, progress=Progress(quiet=True))
    tried = check_db(db, db_path)
    # the default and every dense tile (the default's among them or not); BERT has no convs,
    # so nothing else varies
    default = dataclasses.asdict(params_from_env("avx2"))
    assert {(p["mr"], p["nr"]) for p in tried} == {(default["mr"], default["nr"])} | set(DENSE_TILES)
    assert all({**p, "mr": 0, "nr": 0} == {**default, "mr": 0, "nr": 0} for p in tried), tried
    build(str(tiny_bert_dir), tmp_path / "out", BuildOptions(seq_len=32, tuning_db=db_path, weights="fp32"),
          progress=Progress(quiet=True))
    m = json.loads((tmp_path / "out" / "x86_64" / "model.json").read_text())
    # the database by name and content: its path is the build machine's, and bundles carry model.json
    assert m["variants"][0]["schedule"]["cpu_params"] == db["params"] and m["variants"][0]["schedule"]["tuning_db"] == {
        "file": "db.json", "sha256": hashlib.sha256(db_path.read_bytes()).hexdigest()}
    assert m["variants"][0]["validation"]["max_abs_diff"]["sentence_embedding"] < 1e-4
    with pytest.raises(EdgebundleError, match="tuning database was made for"):
        build(str(tiny_bert_dir), tmp_path / "out2",
              BuildOptions(seq_len=32, tuning_db=db_path, cpu=("skylake-avx512",)), progress=Progress(quiet=True))


def test_tune_searches_conv_choices(tiny_resnet_dir, tmp_path):
    """On a model with convs, tune also tries conv tiles and turning the Winograd and
    packed-conv rewrites off, and a build with the result validates."""
    from builder.build import build
    from builder.tools.tune import CONV_CHOICES, tune

    db_path = tmp_path / "db.json"
    db = tune(str(tiny_resnet_dir), out=db_path, runs=2, progress=Progress(quiet=True))
    tried = check_db(db, db_path)
    for choice in CONV_CHOICES:
        assert any(all(p[k] == v for k, v in choice.items()) for p in tried), choice
    build(str(tiny_resnet_dir), tmp_path / "out", BuildOptions(tuning_db=db_path), progress=Progress(quiet=True))
    m = json.loads((tmp_path / "out" / "x86_64" / "model.json").read_text())
    assert m["variants"][0]["schedule"]["cpu_params"] == db["params"]
