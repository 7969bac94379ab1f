"""AWS Lambda entry: the model loads in the init phase (module import), once per sandbox."""
from __future__ import annotations

import os
import sys
import time

from . import load
from .events import handle


def make_handler(model_dir: str):
    start = time.perf_counter()
    model = load(model_dir)
    print(f"edgebundle: loaded {model.manifest.model.name} ({model.task}) in "
          f"{(time.perf_counter() - start) * 1000:.0f} ms, TVM_NUM_THREADS={os.environ.get('TVM_NUM_THREADS')}",
          file=sys.stderr, flush=True)

    def handler(event, context):
        return handle(model, event)

    handler.model = model
    return handler
