"""Prometheus metrics and the health/readiness/metrics HTTP endpoint of a service."""

from __future__ import annotations

import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Unknown `parameters.cluster` keys are named by messages: a label value only for a short
# identifier, and for the first MAX_UNKNOWN_KEY_LABELS distinct ones; the rest are "other".
UNKNOWN_KEY_LABEL = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
MAX_UNKNOWN_KEY_LABELS = 50
OTHER_KEY = "other"


class DispatcherMetrics:
    """One registry per dispatcher, so tests and replicas in one process don't collide."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter("zbatch_messages_received", "Step messages received", registry=r)
        self.submitted = Counter("zbatch_steps_submitted", "Steps submitted as jobs", registry=r)
        self.duplicates = Counter(
            "zbatch_steps_duplicate", "Redelivered steps not resubmitted", registry=r
        )
        self.retried = Counter("zbatch_submit_retries", "Submission attempts retried", registry=r)
        self.dead_lettered = Counter(
            "zbatch_messages_dead_lettered", "Messages dead-lettered", ["reason"], registry=r
        )
        self.latency = Histogram(
            "zbatch_submit_latency_seconds",
            "Receive-to-accepted latency",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.jobs = Gauge("zbatch_jobs", "Tracked jobs by state", ["state"], registry=r)
        self.broker_connected = Gauge(
            "zbatch_broker_connected", "1 while the broker is reachable", registry=r
        )
        self.cluster_available = Gauge(
            "zbatch_cluster_available",
            "1 while the cluster answers; 0 during an outage (steps held, none taken)",
            registry=r,
        )
        self.cluster_available.set(1)
        self.unknown_cluster_keys = Counter(
            "zbatch_unknown_cluster_keys",
            "Unknown parameters.cluster keys ignored (profile unknown_cluster_keys: warn)",
            ["key"],
            registry=r,
        )
        self._key_labels: set[str] = set()
        self._key_lock = threading.Lock()
        self.last_loop = time.monotonic()
        self.connected = False

    def count_unknown_cluster_key(self, key: str) -> None:
        """Count one ignored key (called from the submission workers)."""
        label = key if isinstance(key, str) and UNKNOWN_KEY_LABEL.fullmatch(key) else OTHER_KEY
        with self._key_lock:
            if label not in self._key_labels:
                if len(self._key_labels) >= MAX_UNKNOWN_KEY_LABELS:
                    label = OTHER_KEY
                self._key_labels.add(label)
        self.unknown_cluster_keys.labels(label).inc()

    def set_cluster_available(self, available: bool) -> None:
        self.cluster_available.set(1 if available else 0)

    def set_connected(self, connected: bool) -> None:
        self.connected = connected
        self.broker_connected.set(1 if connected else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class StatusServer:
    """/metrics, /healthz (the service loop is turning) and /readyz (the broker is reachable)."""

    def __init__(
        self, metrics: DispatcherMetrics, port: int, host: str = "127.0.0.1", stall_s: float = 60.0
    ) -> None:
        self.metrics = metrics
        self.stall_s = stall_s
        handler = self._handler()
        self.server = ThreadingHTTPServer((host, port), handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(
            target=self.server.serve_forever, daemon=True, name="zbatch-status"
        )

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, body = outer.answer(self.path)
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:  # noqa: ARG002
                return  # keep probes out of the service log

        return Handler

    def answer(self, path: str) -> tuple[int, bytes]:
        if path == "/metrics":
            return 200, self.metrics.render()
        if path == "/healthz":
            alive = time.monotonic() - self.metrics.last_loop < self.stall_s
            return (200, b"ok\n") if alive else (503, b"service loop stalled\n")
        if path == "/readyz":
            ready = self.metrics.connected
            return (200, b"ready\n") if ready else (503, b"broker not connected\n")
        return 404, b"not found\n"

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
