"""The command line: instant help, typed errors without tracebacks, model resolution."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from builder.errors import ModelSourceError
from builder.model.source import resolve_model

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"torch", "tvm", "transformers", "boto3", "tokenizers", "jinja2", "numpy"}


def edgebundle(*args, env=None):
    return subprocess.run([sys.executable, "-m", "builder.cli", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, env=env, timeout=600)


def test_help_imports_nothing_heavy():
    code = ("import sys; from builder.cli import _parser; _parser().format_help(); "
            f"print(sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    helptext = edgebundle("build", "--help").stdout
    for word in ("--target", "x86_64", "--format", "lambda", "--seq-len", "--python", "--quiet"):
        assert word in helptext


def _model_dir(tmp_path, config: dict) -> Path:
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(config))
    return d


def test_unsupported_architecture_lists_supported_ones(tmp_path):
    d = _model_dir(tmp_path, {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    proc = edgebundle("build", d, "--out", tmp_path / "out")
    assert proc.returncode == 1
    assert "GPT2LMHeadModel is not supported" in proc.stderr
    assert "BertForSequenceClassification" in proc.stderr and "ResNetForImageClassification" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback(tmp_path):
    d = _model_dir(tmp_path, {"architectures": ["GPT2LMHeadModel"]})
    proc = edgebundle("--debug", "build", d, "--out", tmp_path / "out")
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_missing_model_and_bad_options(tmp_path):
    proc = edgebundle("build", tmp_path / "nope", "--out", tmp_path / "out")
    assert proc.returncode == 1 and "no such model directory" in proc.stderr
    proc = edgebundle("build", tmp_path, "--out", tmp_path / "out")
    assert proc.returncode == 1 and "no config.json" in proc.stderr
    proc = edgebundle("build", tmp_path, "--out", tmp_path / "o", "--target", "sparc")
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    proc = edgebundle("invoke", tmp_path / "missing.zip", "--event", tmp_path / "e.json")
    assert proc.returncode == 1 and "no such bundle" in proc.stderr
    proc = edgebundle("inspect", tmp_path)
    assert proc.returncode == 1 and "no model.json" in proc.stderr


def test_hub_id_not_cached_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match="neither a local directory nor in the Hugging Face cache"):
        resolve_model("someone/not-downloaded")


def test_hub_id_resolves_through_the_local_cache(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    snap = hub / "models--acme--tiny" / "snapshots" / "0123abcd"
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (hub / "models--acme--tiny" / "refs").mkdir()
    (hub / "models--acme--tiny" / "refs" / "main").write_text("0123abcd")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model("acme/tiny") == snap


@pytest.mark.slow
def test_task_and_seq_len_checks(tiny_bert_dir, tmp_path):
    proc = edgebundle("build", tiny_bert_dir, "--out", tmp_path / "o", "--task", "text-classification")
    assert proc.returncode == 1 and "classification head" in proc.stderr
    proc = edgebundle("build", tiny_bert_dir, "--out", tmp_path / "o", "--task", "image-classification")
    assert proc.returncode == 1 and "not supported by the bert family" in proc.stderr
    proc = edgebundle("build", tiny_bert_dir, "--out", tmp_path / "o", "--seq-len", "1000")
    assert proc.returncode == 1 and "outside 1..512" in proc.stderr


@pytest.mark.slow
def test_inspect(tiny_bert_cls_build):
    proc = edgebundle("inspect", tiny_bert_cls_build)
    assert proc.returncode == 0, proc.stderr
    for text in ("text-classification", "labels     3: negative, neutral, positive", "validated vs PyTorch", "variant    avx2: needs",
                 "lambda.zip", "python3.13 x86_64", "deployable", "tvm 0.27.0.post1"):
        assert text in proc.stdout, text
    assert json.loads(edgebundle("inspect", tiny_bert_cls_build, "--json").stdout)["model"]["family"] == "bert"


def test_unexpected_exception_is_one_readable_error(monkeypatch, capsys):
    """A bug of ours (or a library's) is still a short message saying where and what to do;
    --debug gives the traceback."""
    from builder import cli

    def boom(args):
        raise ModuleNotFoundError("No module named 'builder.missing'")

    monkeypatch.setattr(cli, "cmd_inspect", boom)
    assert cli.main(["inspect", "somewhere"]) == 70
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 3
    assert "error: unexpected ModuleNotFoundError: No module named 'builder.missing'" in err
    assert "test_cli.py" in err and "--debug" in err and "report it" in err
    with pytest.raises(ModuleNotFoundError):
        cli.main(["--debug", "inspect", "somewhere"])


def test_version():
    proc = edgebundle("--version")
    from builder.versions import EDGEBUNDLE_VERSION

    assert proc.returncode == 0 and proc.stdout.strip() == f"edgebundle {EDGEBUNDLE_VERSION}"


def test_manifest_errors_are_the_users_to_fix(monkeypatch, capsys):
    """A model.json of another edgebundle version is not a bug: a plain error, exit 1."""
    from builder import cli
    from runtime.manifest import ManifestError

    def old(args):
        raise ManifestError("OUT/x86_64/model.json has manifest schema 1, written by edgebundle 0.1.0")

    monkeypatch.setattr(cli, "cmd_inspect", old)
    assert cli.main(["inspect", "OUT/x86_64"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: OUT/x86_64/model.json has manifest schema 1") and "unexpected" not in err


@pytest.mark.parametrize("command, quiet", [
    (["build", "m", "--out", "o"], True), (["invoke", "b.zip", "--event", "e.json"], True),
    (["deploy", "b", "--function-name", "f"], True), (["undeploy", "--function", "f"], True),
    (["image", "build", "ctx"], True), (["bench", "m"], True), (["tune", "m", "--out", "db.json"], True),
    (["serve", "d"], False), (["inspect", "d"], False)])
def test_quiet_and_debug_after_the_subcommand(command, quiet, capsys):
    """--debug (hidden) after any subcommand; --quiet where a subcommand prints progress."""
    from builder.cli import _parser

    assert _parser().parse_args(command).debug is False
    assert _parser().parse_args([*command, "--debug"]).debug is True
    if quiet:
        assert _parser().parse_args([*command, "--quiet"]).quiet is True
    else:
        with pytest.raises(SystemExit):
            _parser().parse_args([*command, "--quiet"])
        assert "unrecognized arguments: --quiet" in capsys.readouterr().err


def test_deploy_options_from_the_command_line():
    """Each option's field from the flag of its name; the defaults are the dataclasses'."""
    from builder.cli import _parser
    from builder.options import DeployOptions, EndpointOptions, UndeployOptions

    args = _parser().parse_args(["deploy", "b", "--function-name", "f", "--memory", "2048", "--timeout", "60",
                                 "--no-snapstart", "--public-function-url", "--dry-run"])
    assert DeployOptions.from_args(args, environment=(("AB", "1"),)) == DeployOptions(
        "f", memory_mb=2048, timeout_s=60, snapstart=False, function_url="NONE", dry_run=True,
        environment=(("AB", "1"),))
    args = _parser().parse_args(["deploy", "b", "--sagemaker-endpoint", "e", "--autoscale", "1:3", "--keep", "0"])
    assert EndpointOptions.from_args(args, environment=()) == EndpointOptions("e", autoscale=(1, 3), keep=0)
    args = _parser().parse_args(["undeploy", "--sagemaker-endpoint", "e"])
    assert UndeployOptions.from_args(args) == UndeployOptions(endpoint_name="e")


@pytest.mark.parametrize("flags, refused", [
    (["--sagemaker-endpoint", "e", "--alias", "blue", "--memory", "256"], "--alias, --memory apply to Lambda "
                                                                          "functions (--function-name) only"),
    (["--sagemaker-endpoint", "e", "--s3-prefix", "x/"], "--s3-prefix applies to Lambda functions"),
    (["--function-name", "f", "--keep", "2", "--no-autoscale"], "--no-autoscale, --keep apply to SageMaker "
                                                                "endpoints (--sagemaker-endpoint) only"),
    (["--function-name", "bad name"], "function name 'bad name'"),
    (["--function-name", "f", "--alias", "1"], "alias '1'"),
    (["--function-name", "f", "--env", "AWS_REGION=x"], "reserved by Lambda"),
])
def test_deploy_flags_refused_before_anything_is_read(tmp_path, flags, refused, capsys):
    """Flags of the other path, and options Lambda refuses: one error line, before the bundle
    is opened (tmp_path is none)."""
    from builder.cli import main

    assert main(["deploy", str(tmp_path), *flags]) == 1
    err = capsys.readouterr().err
    assert refused in err and "Traceback" not in err


def test_deploy_flags_at_their_defaults_are_not_refused(tmp_path, capsys):
    from builder.cli import main
    from builder.options import DeployOptions

    assert main(["deploy", str(tmp_path), "--sagemaker-endpoint", "e", "--alias", DeployOptions.alias,
                 "--s3-prefix", DeployOptions.s3_prefix]) == 1
    err = capsys.readouterr().err
    assert "appl" not in err and "error: no serving image here" in err


def test_invoke_bundle_kinds(tmp_path):
    """What `invoke BUNDLE` makes of its argument."""
    from builder.errors import InvokeError
    from builder.local.invoke import bundle_kind

    (tmp_path / "lambda.zip").write_bytes(b"")
    (tmp_path / "lambda-image.oci.tar").write_bytes(b"")
    assert bundle_kind(str(tmp_path / "lambda.zip")) == ("zip", tmp_path / "lambda.zip")
    assert bundle_kind(str(tmp_path / "lambda-image.oci.tar")) == ("image", tmp_path / "lambda-image.oci.tar")
    assert bundle_kind("localhost/edgebundle/bert:x86_64-0123") == ("image", "localhost/edgebundle/bert:x86_64-0123")
    for missing in (str(tmp_path / "gone.zip"), str(tmp_path / "gone.tar"), " "):
        with pytest.raises(InvokeError, match="no such bundle"):
            bundle_kind(missing)
    with pytest.raises(InvokeError, match="that is a directory"):
        bundle_kind(str(tmp_path))
