"""How much memory and time a Lambda function of a model gets, by one documented rule
(README, "Deploy"); `--memory` and `--timeout` override it.

Memory: the larger of
  - 1769 MB, where Lambda gives a function one whole vCPU (below it the CPU share shrinks
    with memory and every millisecond of inference gets slower), and
  - the weights and compiled code (mapped at load; every page becomes resident once the
    model has run) plus 256 MB for Python, tokenizers and a full batch's activations
    (measured peak RSS at batch 32 x 128 tokens: all-MiniLM-L6-v2 185 MiB with 86 MiB of
    weights, BERT-base 505 MiB with 414 MiB),
rounded up to 64 MB and capped at Lambda's 10,240 MB (a model that needs more is refused
by deploy: it belongs in a container).

Threads: TVM_NUM_THREADS = the vCPUs that memory buys, rounded (1 per 1769 MB, at most 6):
more threads than the CPU share only contend with each other.

Timeout: 3 x (the build machine's full-batch latency at the longest length, scaled from
the build's threads to the function's vCPUs) + 10 s for a cold start, at least 30 s, at
most Lambda's 900 s. A build that could not time the model (cross-compiled or emulated)
gets 60 s.
"""
from __future__ import annotations

import dataclasses
import math

MB = 1024 * 1024
VCPU_MB = 1769  # Lambda: one full vCPU at 1,769 MB
MAX_MEMORY_MB = 10240
MIN_MEMORY_MB = 128
MAX_VCPUS = 6
MAX_TIMEOUT_S = 900
MIN_TIMEOUT_S = 30
UNTIMED_TIMEOUT_S = 60
COLD_START_S = 10  # Lambda's init phase is capped near 10 s


@dataclasses.dataclass(frozen=True)
class Sizing:
    memory_mb: int
    timeout_s: int
    threads: int
    why: str  # the rule's inputs, for the plan


def vcpus(memory_mb: int) -> int:
    return max(1, min(MAX_VCPUS, round(memory_mb / VCPU_MB)))


def size_function(manifest, latency: dict | None = None, memory_mb: int | None = None,
                  timeout_s: int | None = None) -> Sizing:
    """Memory, timeout and threads for `manifest`'s model. `latency`: OUT/<target>/timing.json
    ({"full_batch_ms", "threads"}), when the build could time the model; None gives the
    untimed timeout."""
    payload = (manifest.weights.bytes if manifest.weights else 0) + sum(
        int(manifest.files.get(lib.file, {}).get("size", 0)) for lib in manifest.libraries)
    need = payload / MB + 256
    why = [f"weights + code {payload / MB:.0f} MiB"]
    if memory_mb is None and need > MAX_MEMORY_MB:
        from builder.errors import DeployError

        raise DeployError(f"the model needs about {need:.0f} MB, more than Lambda's {MAX_MEMORY_MB} MB",
                          hint="serve it from a container (--format serve-image) instead")
    if memory_mb is None:
        memory_mb = min(MAX_MEMORY_MB, 64 * math.ceil(max(VCPU_MB, need) / 64))
    else:
        why.append("memory given")
    threads = vcpus(memory_mb)
    if timeout_s is None:
        full = (latency or {}).get("full_batch_ms")
        if full:
            scaled = full / 1000 * max(1, int(latency.get("threads") or 1)) / threads
            timeout_s = int(min(MAX_TIMEOUT_S, max(MIN_TIMEOUT_S, math.ceil(3 * scaled + COLD_START_S))))
            why.append(f"full batch {full:.0f} ms on {latency.get('threads')} build threads")
        else:
            timeout_s = UNTIMED_TIMEOUT_S
            why.append("latency not measured at build")
    else:
        why.append("timeout given")
    return Sizing(memory_mb, timeout_s, threads, "; ".join(why))


def check_memory(memory_mb: int) -> None:
    from builder.errors import DeployError

    if not MIN_MEMORY_MB <= memory_mb <= MAX_MEMORY_MB:
        raise DeployError(f"--memory {memory_mb}: Lambda allows {MIN_MEMORY_MB} to {MAX_MEMORY_MB} MB",
                          hint="pass a memory size in MB within that range")


def check_timeout(timeout_s: int) -> None:
    from builder.errors import DeployError

    if not 1 <= timeout_s <= MAX_TIMEOUT_S:
        raise DeployError(f"--timeout {timeout_s}: Lambda allows 1 to {MAX_TIMEOUT_S} s",
                          hint="pass a timeout in seconds within that range")


def server_memory(manifest) -> int:
    """Bytes the model server needs resident (a Kubernetes request, a SageMaker instance):
    the mapped weights and code count in full once warm, plus 25% for a max batch's
    activations and 256 MiB for Python, the tokenizer and the server."""
    files = sum(rec["size"] for rec in manifest.files.values())
    return int(files * 1.25 + 256 * MB)
