"""`python -m runtime.run MODEL_DIR [EVENT ...]` (edge installs: `edgebundle-run`): answer
events from the command line, files or stdin, for scripts and cron jobs, in the formats of
every handler (task mode {"inputs": ...}, tensor mode {"tensors": ...}).

Each EVENT is a JSON document, `@FILE` (a file holding one), or `-` (stdin); none reads
stdin. Stdin holding several lines of JSON is one event per line. One JSON answer per
event on stdout; a bad event answers {"error": ...} there, is named on stderr, and makes
the exit status 1. The model loads once.
"""
from __future__ import annotations

import argparse
import sys
import traceback
from pathlib import Path

from .events import loads


def _events(given: list[str]) -> list[tuple[str, str | bytes]]:
    """(where, JSON text) for each event given."""
    out = []
    for arg in given or ["-"]:
        if arg == "-":
            # Bytes, as for @FILE: input that is not UTF-8 is a bad event, not a crash.
            text = sys.stdin.buffer.read()
            lines = [line for line in text.splitlines() if line.strip()]
            try:  # one document spread over lines, or one per line
                loads(text)
                out.append(("stdin", text))
            except ValueError:
                out += [(f"stdin line {i}", line) for i, line in enumerate(lines, 1)] or [("stdin", text)]
        elif arg.startswith("@"):
            try:
                # Bytes: a file that is not UTF-8 is a bad event (answered), not a crash.
                out.append((arg[1:], Path(arg[1:]).read_bytes()))
            except OSError as e:
                raise SystemExit(f"error: cannot read {arg[1:]}: {getattr(e, 'strerror', None) or e}") from None
        else:
            out.append(("argument", arg))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="edgebundle-run", description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir", type=Path, help="the model directory (model.json)")
    p.add_argument("events", nargs="*", metavar="EVENT", help="JSON, @FILE or - (stdin; the default)")
    args = p.parse_args(argv)
    from . import load
    from .errors import BadInput
    from .events import answer, dumps
    from .manifest import ManifestError

    events = _events(args.events)
    try:
        model = load(args.model_dir)
    except (ManifestError, OSError) as e:
        print(f"error: cannot load the model in {args.model_dir}: {e}", file=sys.stderr)
        return 2
    status = 0
    for where, text in events:
        try:
            result = answer(model, loads(text))
        except BadInput as e:  # JSON errors included
            print(f"error: {where}: bad input: {e}", file=sys.stderr)
            result, status = {"error": str(e)}, 1
        except Exception:  # a failure inside the model: the other events still get answers
            traceback.print_exc(file=sys.stderr)
            result, status = {"error": "internal error while running the model; see stderr"}, 1
        print(dumps(result), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
