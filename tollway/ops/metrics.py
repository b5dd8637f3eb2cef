"""Prometheus metrics for one Tollway process, correct across the workers of ``tollway serve``.

Every metric lives in a registry owned by the :class:`Metrics` object (no module-level state, so
tests can build several apps in one process). With several workers the CLI points
``PROMETHEUS_MULTIPROC_DIR`` at a fresh folder before the workers start: prometheus-client then
keeps each worker's values in memory-mapped files there, and a scrape answered by any worker
aggregates all of them (counters and histograms summed, gauges summed over live workers).

The hot path pays a dictionary lookup and an increment per observation: labelled children are
cached in :class:`_Family` instead of going through ``labels()`` each time.

Label values are bounded: routes are templates (ids replaced), models are labelled only once a
channel served them (a client cannot invent label values), channels are ids.
"""

from __future__ import annotations

import os
import re
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.exposition import CONTENT_TYPE_LATEST

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
OTHER = "other"
MAX_ROUTES = 200  # distinct route labels kept; later ones count as "other"
MAX_PATHS = 2_000  # paths whose label is remembered

# Relay latencies: from a fraction of a millisecond (cached errors) to long generations.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)

_ID_SEGMENT = re.compile(r"/(?:\d+|sk-[0-9A-Za-z-]+|[0-9a-f]{16,})(?=/|$)")

M = TypeVar("M", Counter, Gauge, Histogram)


class _Family(Generic[M]):
    """A labelled metric whose children are cached by their label tuple."""

    __slots__ = ("_children", "metric")

    def __init__(self, metric: M) -> None:
        self.metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *labels: str) -> M:
        child = self._children.get(labels)
        if child is None:
            child = self._children[labels] = self.metric.labels(*labels)
        return child


def multiprocess_dir() -> str | None:
    """The shared metrics folder of this node's workers, when ``tollway serve`` set one."""
    return os.environ.get(MULTIPROC_ENV) or None


class Metrics:
    """The process's collectors. ``render()`` answers a scrape (all workers when multi-process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.multiprocess = multiprocess_dir() is not None
        reg = self.registry
        self.http_requests = _Family(
            Counter(
                "tollway_http_requests_total",
                "HTTP requests answered, by route template, method and status.",
                ["route", "method", "status"],
                registry=reg,
            )
        )
        self.relay_requests = _Family(
            Counter(
                "tollway_relay_requests_total",
                "Relay requests that passed authentication, by route, status, model, channel and group "
                "(one per consume or error log row).",
                ["route", "status", "model", "channel", "group"],
                registry=reg,
            )
        )
        self.relay_duration = _Family(
            Histogram(
                "tollway_relay_duration_seconds",
                "Relay request duration until the answer ended (streams: the last chunk).",
                ["route", "stream"],
                buckets=LATENCY_BUCKETS,
                registry=reg,
            )
        )
        self.relay_ttfb = _Family(
            Histogram(
                "tollway_relay_ttfb_seconds",
                "Time from the request to the first byte of the upstream's answer.",
                ["route", "stream"],
                buckets=LATENCY_BUCKETS,
                registry=reg,
            )
        )
        self.upstream_errors = _Family(
            Counter(
                "tollway_upstream_errors_total",
                "Failed upstream attempts, by channel and kind (timeout, connection, status_<code>, "
                "invalid_body, stream).",
                ["channel", "kind"],
                registry=reg,
            )
        )
        self.retries = _Family(
            Counter(
                "tollway_relay_retries_total",
                "Upstream attempts after the first of a request, by route.",
                ["route"],
                registry=reg,
            )
        )
        self.channel_status_changes = _Family(
            Counter(
                "tollway_channel_status_changes_total",
                "Automatic channel status changes, by channel and new status (disabled, enabled).",
                ["channel", "status"],
                registry=reg,
            )
        )
        self.quota_spent = _Family(
            Counter(
                "tollway_quota_spent_total",
                "Quota charged for relayed requests (500 000 = 1 USD by default), by model and group.",
                ["model", "group"],
                registry=reg,
            )
        )
        self.tokens = _Family(
            Counter(
                "tollway_tokens_total",
                "Tokens of charged requests, by model and kind (prompt, completion).",
                ["model", "kind"],
                registry=reg,
            )
        )
        self.active_requests = Gauge(
            "tollway_active_requests",
            "HTTP requests in flight (streams count until their last byte).",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.active_streams = Gauge(
            "tollway_active_streams",
            "Relay streams in flight.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.log_queue_depth = Gauge(
            "tollway_log_queue_depth",
            "Log rows waiting for the batch writer.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.log_batch_seconds = Histogram(
            "tollway_log_batch_seconds",
            "Duration of one log batch transaction (rows and charges).",
            buckets=BATCH_BUCKETS,
            registry=reg,
        )
        self.log_rows_written = Counter(
            "tollway_log_rows_written_total", "Log rows committed by the batch writer.", registry=reg
        )
        self.log_batch_failures = Counter(
            "tollway_log_batch_failures_total",
            "Log batches that failed and were retried.",
            registry=reg,
        )
        self.rollup_flushes = Counter(
            "tollway_rollup_flushes_total", "Flushes of the hourly quota_data rollup.", registry=reg
        )
        self.rollup_rows = Counter(
            "tollway_rollup_rows_total", "quota_data rows upserted by rollup flushes.", registry=reg
        )
        self.db_connections = _Family(
            Gauge(
                "tollway_db_pool_connections",
                "Database pool connections, by database (main, logs) and state (in_use, idle).",
                ["database", "state"],
                registry=reg,
                multiprocess_mode="livesum",
            )
        )
        self._routes: dict[str, str] = {}  # path → label, for the paths seen first
        self._labels: set[str] = set()

    # ----- labels ----------------------------------------------------------------------------

    def route_label(self, path: str, status: int) -> str:
        """The path as a template (``/api/token/7`` → ``/api/token/:id``); unknown paths (404) and
        templates past :data:`MAX_ROUTES` are ``other``, so label values stay bounded."""
        if status == 404:
            return OTHER
        label = self._routes.get(path)
        if label is not None:
            return label
        label = _ID_SEGMENT.sub("/:id", path)
        if label not in self._labels:
            if len(self._labels) >= MAX_ROUTES:
                return OTHER
            self._labels.add(label)
        if len(self._routes) < MAX_PATHS:
            self._routes[path] = label
        return label

    # ----- scrape ----------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        if self.multiprocess:
            registry = CollectorRegistry()
            prometheus_multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

    def process_exited(self) -> None:
        """Drop this worker's live gauges from the shared folder (it is going away)."""
        if self.multiprocess:
            prometheus_multiprocess.mark_process_dead(os.getpid())  # type: ignore[no-untyped-call]
