"""Prometheus metrics of the model server, in the text exposition format (version 0.0.4),
without a client library: a few counters, gauges and fixed-bucket histograms."""
from __future__ import annotations

import threading

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _labels(labels: dict) -> str:
    if not labels:
        return ""
    def escape(v) -> str:
        return str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return "{" + ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items())) + "}"


def _num(v: float) -> str:
    return repr(float(v)) if isinstance(v, float) else str(v)


class Histogram:
    def __init__(self, buckets):
        self.buckets = tuple(buckets)
        self.counts = [0] * len(self.buckets)
        self.total = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        for n, bound in enumerate(self.buckets):
            if value <= bound:
                self.counts[n] += 1
                break
        self.total += 1
        self.sum += value

    def lines(self, name: str, labels: dict) -> list[str]:
        out, running = [], 0
        for bound, count in zip(self.buckets, self.counts):
            running += count
            out.append(f"{name}_bucket{_labels({**labels, 'le': _num(bound)})} {running}")
        out.append(f"{name}_bucket{_labels({**labels, 'le': '+Inf'})} {self.total}")
        out.append(f"{name}_sum{_labels(labels)} {_num(self.sum)}")
        out.append(f"{name}_count{_labels(labels)} {self.total}")
        return out


class Metrics:
    """What the server counts. Fixed memory: label sets are bounded (endpoints are the
    server's routes, statuses are HTTP codes)."""

    def __init__(self, model: str, max_batch: int):
        self.model = model
        self._lock = threading.Lock()
        self.requests = {}  # (endpoint, status) -> count
        self.latency = {}  # endpoint -> Histogram
        self.batch_rows = Histogram([b for b in (1, 2, 4, 8, 16, 32, 64, 128) if b < max_batch] + [max_batch])
        self.batch_seconds = Histogram(LATENCY_BUCKETS)
        self.load_seconds = None
        self.ready = False
        self.queue_depth = lambda: 0
        self.in_flight = 0

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (endpoint, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            if endpoint not in self.latency:
                self.latency[endpoint] = Histogram(LATENCY_BUCKETS)
            self.latency[endpoint].observe(seconds)

    def observe_batch(self, rows: int, seconds: float) -> None:
        with self._lock:
            self.batch_rows.observe(rows)
            self.batch_seconds.observe(seconds)

    def render(self) -> str:
        m = {"model": self.model}
        with self._lock:
            lines = ["# HELP edgebundle_requests_total HTTP requests answered, by endpoint and status.",
                     "# TYPE edgebundle_requests_total counter"]
            lines += [f"edgebundle_requests_total{_labels({**m, 'endpoint': e, 'status': s})} {n}"
                      for (e, s), n in sorted(self.requests.items())]
            lines += ["# HELP edgebundle_request_duration_seconds Time from request to answer, by endpoint.",
                      "# TYPE edgebundle_request_duration_seconds histogram"]
            for endpoint, hist in sorted(self.latency.items()):
                lines += hist.lines("edgebundle_request_duration_seconds", {**m, "endpoint": endpoint})
            lines += ["# HELP edgebundle_batch_size Rows per model call (dynamic batching).",
                      "# TYPE edgebundle_batch_size histogram",
                      *self.batch_rows.lines("edgebundle_batch_size", m),
                      "# HELP edgebundle_batch_duration_seconds Time of one model call.",
                      "# TYPE edgebundle_batch_duration_seconds histogram",
                      *self.batch_seconds.lines("edgebundle_batch_duration_seconds", m),
                      "# HELP edgebundle_queue_depth Requests waiting for the model.",
                      "# TYPE edgebundle_queue_depth gauge",
                      f"edgebundle_queue_depth{_labels(m)} {self.queue_depth()}",
                      "# HELP edgebundle_requests_in_flight Requests received and not yet answered.",
                      "# TYPE edgebundle_requests_in_flight gauge",
                      f"edgebundle_requests_in_flight{_labels(m)} {self.in_flight}",
                      "# HELP edgebundle_model_ready 1 once the model is loaded and warmed.",
                      "# TYPE edgebundle_model_ready gauge",
                      f"edgebundle_model_ready{_labels(m)} {int(self.ready)}"]
            if self.load_seconds is not None:
                lines += ["# HELP edgebundle_model_load_seconds Time to load and warm the model.",
                          "# TYPE edgebundle_model_load_seconds gauge",
                          f"edgebundle_model_load_seconds{_labels(m)} {_num(self.load_seconds)}"]
        return "\n".join(lines) + "\n"
