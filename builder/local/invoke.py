"""`edgebundle invoke BUNDLE`: which kind of bundle the argument names (a lambda.zip, a Lambda
image's OCI archive, or an image reference the container engine knows), run locally the
way AWS Lambda runs it (builder/local/lambda_runtime.py)."""
from __future__ import annotations

from pathlib import Path

from builder.errors import InvokeError

NOT_A_BUNDLE = "pass OUT/<target>/lambda.zip, a Lambda image's OCI archive or its tag"


def read_events(paths) -> list[bytes]:
    events = []
    for path in paths:
        try:
            events.append(Path(path).read_bytes())
        except OSError as e:
            raise InvokeError(f"cannot read event file: {e.strerror}", where=str(path)) from None
    return events


def bundle_kind(text: str) -> tuple[str, Path | str]:
    """("zip", path), ("image", OCI archive path) or ("image", reference)."""
    path = Path(text)
    if path.is_dir():
        raise InvokeError("that is a directory", where=str(path), hint=NOT_A_BUNDLE)
    if path.is_file():
        return ("zip", path) if text.endswith(".zip") else ("image", path)
    if text.endswith((".zip", ".tar", ".json")) or not text.strip():
        raise InvokeError("no such bundle", where=str(path), hint=NOT_A_BUNDLE)
    return "image", text  # a reference: the engine says if it has no such image


def invoke_local(bundle: str | None, event_paths, layers=(), engine: str | None = None, progress=None) -> int:
    """Run each event through `bundle` in one warm sandbox; the exit status."""
    from builder.local.lambda_runtime import invoke_image, invoke_zip

    if not bundle:
        raise InvokeError("nothing to invoke", hint="pass a lambda.zip, an image, --function NAME[:ALIAS] or "
                                                    "--sagemaker-endpoint NAME")
    kind, what = bundle_kind(bundle)
    events = read_events(event_paths)
    if kind == "zip":
        return invoke_zip(what, events, layers=list(layers), progress=progress)
    if layers:
        raise InvokeError("--layer applies to zips: an image carries its own layers")
    return invoke_image(what, events, engine=engine, progress=progress)
