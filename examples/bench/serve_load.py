"""Throughput and latency of the model server, batching on vs off, side by side in one run.

    python3 examples/bench/serve_load.py OUT/x86_64 [--clients 1,4,16] [--requests 300]
        [--window-ms 2] [--texts short,long] [--json results.json]

For each text set (short: <= 16 tokens, like the quickstart's sentences; long: 128-token
texts) and each client count, the server is started with batching (the model's max batch)
and without (--max-batch 1), and loaded by threads with keep-alive connections, each
sending task-mode requests of one text. Also the in-process latency of
`runtime.load(OUT/x86_64).predict(text)` for one client, so that the server's overhead per
request is the difference. The client runs in this process: on 2 cores it competes with
the server, as any co-located load generator would; both modes pay the same.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["A man is playing a guitar.", "The weather is lovely today.", "Where is the train station?",
         "She reads a book in the park.", "Servers answer requests quickly.", "Cats sleep most of the day."]
LONG_WORDS = ("edge devices answer requests from compiled models while the cloud scales out across "
              "regions and the cost of each inference stays predictable for teams that deploy often ").split()


def long_texts(n: int = 6) -> list[str]:
    # ~140 words: truncated by the tokenizer to the model's 128 tokens.
    return [" ".join(LONG_WORDS[(i + k) % len(LONG_WORDS)] for k in range(140)) for i in range(n)]


def start_server(model_dir: Path, extra: list[str]) -> tuple[subprocess.Popen, int, Path]:
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"serve-load-{os.getpid()}-{time.monotonic_ns()}.log"
    fh = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "runtime.serve", str(model_dir), "--port", "0", *extra],
                            cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    port = None
    while time.monotonic() < deadline:
        for line in log.read_text().splitlines():
            if '"event":"listening"' in line:
                port = json.loads(line)["port"]
            if '"event":"ready"' in line and port:
                return proc, port, log
        if proc.poll() is not None:
            raise RuntimeError(log.read_text())
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("the server did not become ready")


def load(port: int, texts: list[str], clients: int, requests: int) -> dict:
    latencies, errors = [], []
    lock = threading.Lock()
    per_client = max(1, requests // clients)

    def client(n: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        mine = []
        for i in range(per_client):
            body = json.dumps({"inputs": texts[(n + i) % len(texts)]})
            t0 = time.perf_counter()
            conn.request("POST", "/invocations", body=body, headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            mine.append(time.perf_counter() - t0)
            if resp.status != 200:
                errors.append(resp.status)
        conn.close()
        with lock:
            latencies.extend(mine)

    # Warm-up: every compiled length and the connection setup, outside the timing.
    load_once = [threading.Thread(target=client, args=(n,)) for n in range(min(clients, 4))]
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in load_once:
        t.start()
    for t in load_once:
        t.join()
    latencies.clear()
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    latencies.sort()
    return {"clients": clients, "requests": len(latencies), "errors": len(errors),
            "rps": round(len(latencies) / wall, 1),
            "p50_ms": round(latencies[len(latencies) // 2] * 1000, 2),
            "p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 2)}


def in_process(model_dir: Path, texts: list[str], runs: int = 200) -> float:
    sys.path.insert(0, str(ROOT))
    import runtime

    model = runtime.load(model_dir)
    for t in texts:
        model.predict(t)
    times = []
    for i in range(runs):
        t0 = time.perf_counter()
        model.predict(texts[i % len(texts)])
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("model_dir", type=Path)
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=320, help="timed requests per run")
    ap.add_argument("--window-ms", type=float, help="--batch-window-ms for the batching runs")
    ap.add_argument("--texts", default="short,long")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sets = {"short": SHORT, "long": long_texts()}
    results = {"cpu": os.cpu_count(), "rows": []}
    for name in args.texts.split(","):
        texts = sets[name]
        ms = in_process(args.model_dir, texts)
        results[f"in_process_p50_ms_{name}"] = round(ms, 2)
        print(f"{name}: in-process predict p50 {ms:.2f} ms", flush=True)
        for clients in map(int, args.clients.split(",")):
            for mode, extra in (("batching", [] if args.window_ms is None else ["--batch-window-ms",
                                                                                 str(args.window_ms)]),
                                ("off", ["--max-batch", "1"])):
                proc, port, log = start_server(args.model_dir, extra)
                try:
                    row = {"texts": name, "mode": mode, **load(port, texts, clients, args.requests)}
                finally:
                    proc.terminate()
                    proc.wait(30)
                    log.unlink(missing_ok=True)
                results["rows"].append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
