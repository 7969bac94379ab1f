"""runtime/manifest.py: the one reader of model.json, on both sides; its schema is checked."""
from __future__ import annotations

import json
import shutil

import pytest

import runtime
from runtime import manifest


def _copy(tdir, tmp_path):
    dest = tmp_path / "t"
    shutil.copytree(tdir, dest)
    return dest


def _edit(tdir, change):
    path = tdir / "model.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


@pytest.mark.slow
def test_round_trip_is_exact(tiny_bert_build, tiny_resnet_build):
    for tdir in (tiny_bert_build, tiny_resnet_build):
        text = (tdir / "model.json").read_text()
        m = manifest.read(tdir)
        assert m.dumps() == text  # what the build wrote is what the reader sees, nothing dropped
        assert m.schema == manifest.SCHEMA and m.versions.edgebundle


@pytest.mark.slow
def test_other_schema_is_refused_with_who_wrote_it(tiny_bert_build, tmp_path):
    tdir = _copy(tiny_bert_build, tmp_path)

    def older(d):
        d["schema"] = 1
        d["versions"]["edgebundle"] = "0.1.0"

    _edit(tdir, older)
    with pytest.raises(runtime.ManifestError) as exc:
        runtime.load(tdir)
    msg = str(exc.value)
    assert "schema 1" in msg and "edgebundle 0.1.0" in msg and f"schema {manifest.SCHEMA}" in msg
    assert "Rebuild" in msg

    _edit(tdir, lambda d: d.update(schema=manifest.SCHEMA + 1))
    with pytest.raises(runtime.ManifestError, match="Upgrade edgebundle"):
        runtime.load(tdir)

    # The builder's tools read through the same module: inspect says the same, as an error.
    from builder.errors import EdgebundleError
    from builder.tools.describe import describe

    with pytest.raises(EdgebundleError, match="Upgrade edgebundle"):
        describe(tdir)


@pytest.mark.slow
def test_damaged_manifest_names_what_is_missing(tiny_bert_build, tmp_path):
    tdir = _copy(tiny_bert_build, tmp_path)
    _edit(tdir, lambda d: d.pop("inputs"))
    with pytest.raises(runtime.ManifestError, match="missing 'inputs'"):
        runtime.load(tdir)
    (tdir / "model.json").write_text("{not json")
    with pytest.raises(runtime.ManifestError, match="not readable JSON"):
        runtime.load(tdir)
    with pytest.raises(runtime.ManifestError, match="no such file"):
        runtime.load(tmp_path)


def test_tensor_json_round_trip():
    t = manifest.Tensor("input_ids", ("batch", "seq"), "int64", (0, 30522), pad=1, source="ids")
    assert manifest.Tensor.from_json(t.to_json()) == t
    assert t.seq_axis == 1 and manifest.Tensor("pixel_values", ("batch", 3, 8, 8), "float32").seq_axis is None
    assert "source" not in manifest.Tensor("logits", ("batch", 2), "float32").to_json()
