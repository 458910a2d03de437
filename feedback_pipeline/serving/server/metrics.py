"""The server's operational metrics, exported at /metrics in the Prometheus text format: latency,
requests, rows, fallbacks, errors by kind, the served versions and the write-back's drops. One
object, handed to the request path, the reloader and the write-back, so all count into one
registry."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

# 0.5 ms .. 1 s: a single row is answered in ~1 ms, a 1,000-row batch in tens of ms.
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
ERROR_KINDS = ("bad_request", "too_large", "predict", "reload", "write", "internal")


class Metrics:
    """Prometheus metrics in a registry owned by the app (tests and several apps per process
    never collide on the global one)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "feedback_serving_latency_seconds",
            "Time to answer /predict, parse to response",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter("feedback_serving_requests", "Scoring requests", registry=r)
        self.errors = Counter("feedback_serving_errors", "Errors by kind", ["kind"], registry=r)
        for kind in ERROR_KINDS:
            self.errors.labels(kind)  # every kind exported from the start, at 0
        self.rows = Counter("feedback_serving_rows", "Rows served", registry=r)
        self.fallbacks = Counter(
            "feedback_serving_fallbacks", "Rows served rule_confidence (fallback)", registry=r
        )
        self.reloads = Counter("feedback_serving_reloads", "Champion loads swapped in", registry=r)
        self.champion_version = Gauge(
            "feedback_serving_champion_version", "Served model version (NaN: none)", registry=r
        )
        self.policy_version = Gauge(
            "feedback_serving_policy_version", "Served policy version (NaN: none)", registry=r
        )
        self.champion_version.set(float("nan"))
        self.policy_version.set(float("nan"))
        self.dropped_rows = Counter(
            "feedback_serving_writeback_dropped_rows",
            "Served rows not written back: the write-back buffer was full (writes failing)",
            registry=r,
        )
        self.dropped_log_lines = Counter(
            "feedback_serving_request_log_dropped_lines",
            "Request-log lines not written: the buffer was full (writes failing)",
            registry=r,
        )
